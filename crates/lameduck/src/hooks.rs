//! Ordered shutdown hooks, each with its own timeout.
//!
//! Hooks run in three phases: [`HookPhase::BeforeDrain`] (at the start of the drain, for
//! example deregistering from a service registry), [`HookPhase::AfterDrain`] (once requests
//! are done: flush an outbox, close database pools) and [`HookPhase::Final`] (flush and
//! fsync logs, flush trace exporters). Within a phase, hooks run one after another in
//! reverse order of registration, like `defer`: what was set up last is torn down first.
//!
//! A hook that fails or times out is logged, does not stop the others, and makes the exit
//! code [`FORCED_SHUTDOWN`](crate::exit::FORCED_SHUTDOWN): something may be lost (a
//! database not closed, a log not on disk). A **best-effort** hook
//! ([`Hooks::add_best_effort`]) is one whose failure loses nothing, such as deregistering
//! from a service registry whose lease expires on its own: its failure or timeout is a
//! warning, is reported in the shutdown report, and leaves the exit code alone.
//!
//! Built in: `deregister` (with [`Server::with_registry`](crate::server::Server::with_registry)) is
//! best-effort. The orders service's `close-database`, `fsync-audit-log`, `finish-writes`
//! and `flush-logs`, and the demo's `flush-log-file` and `export-spans`, are not.
//!
//! ```
//! use std::time::Duration;
//! use lameduck::hooks::{HookPhase, Hooks};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut hooks = Hooks::new();
//! hooks.add(HookPhase::AfterDrain, "close-db", Duration::from_secs(5), || async {
//!     // pool.close().await;
//!     Ok(())
//! });
//! let outcomes = hooks.run_phase(HookPhase::AfterDrain).await;
//! assert_eq!(outcomes[0].name, "close-db");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How a shutdown hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookStatus {
    /// It returned `Ok`.
    Ok,
    /// It returned an error (the message).
    Failed(String),
    /// It did not finish within its timeout.
    TimedOut,
    /// It was not run because the shutdown was forced.
    Skipped,
}

/// One hook's outcome in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// The hook's name.
    pub name: String,
    /// The phase it ran in.
    pub phase: HookPhase,
    /// How it ended.
    pub status: HookStatus,
    /// How long it ran.
    pub duration: Duration,
    /// A best-effort hook: its failure does not make the shutdown unclean.
    pub best_effort: bool,
}

impl HookOutcome {
    /// `true` when it succeeded, or failed without making the shutdown unclean (a
    /// best-effort hook that ran; a skipped one counts against the shutdown all the same).
    pub fn is_clean(&self) -> bool {
        self.status == HookStatus::Ok || (self.best_effort && self.status != HookStatus::Skipped)
    }
}

/// A boxed error a hook may return.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

type HookFuture = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send>>;
type HookFn = Box<dyn FnOnce() -> HookFuture + Send>;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HookPhase {
    /// When draining starts, concurrently with the drain (deregister from registries).
    BeforeDrain,
    /// After every connection is done.
    AfterDrain,
    /// Last of all (flush logs and exporters).
    Final,
}

impl HookPhase {
    /// Lower-case name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::BeforeDrain => "before_drain",
            HookPhase::AfterDrain => "after_drain",
            HookPhase::Final => "final",
        }
    }
}

struct Hook {
    name: String,
    phase: HookPhase,
    timeout: Duration,
    best_effort: bool,
    run: HookFn,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("phase", &self.phase)
            .field("timeout", &self.timeout)
            .field("best_effort", &self.best_effort)
            .finish_non_exhaustive()
    }
}

/// The registry of shutdown hooks.
#[derive(Debug, Default)]
pub struct Hooks {
    hooks: Vec<Hook>,
}

impl Hooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `f` to run in `phase`, cut off after `timeout`. Its failure makes the
    /// shutdown unclean (exit code 3).
    pub fn add<F, Fut>(
        &mut self,
        phase: HookPhase,
        name: impl Into<String>,
        timeout: Duration,
        f: F,
    ) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.push(
            phase,
            name.into(),
            timeout,
            false,
            Box::new(move || Box::pin(f())),
        )
    }

    /// [`add`](Self::add) a best-effort hook: its failure or timeout is logged as a warning
    /// and reported, and leaves the exit code alone (nothing is lost when it fails).
    pub fn add_best_effort<F, Fut>(
        &mut self,
        phase: HookPhase,
        name: impl Into<String>,
        timeout: Duration,
        f: F,
    ) -> &mut Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.push(
            phase,
            name.into(),
            timeout,
            true,
            Box::new(move || Box::pin(f())),
        )
    }

    fn push(
        &mut self,
        phase: HookPhase,
        name: String,
        timeout: Duration,
        best_effort: bool,
        run: HookFn,
    ) -> &mut Self {
        self.hooks.push(Hook {
            name,
            phase,
            timeout,
            best_effort,
            run,
        });
        self
    }

    /// The sum of the timeouts of every hook in `phase`: the most that phase can take.
    pub fn budget(&self, phase: HookPhase) -> Duration {
        self.hooks
            .iter()
            .filter(|h| h.phase == phase)
            .map(|h| h.timeout)
            .sum()
    }

    /// Each registered hook's phase, name and timeout, in registration order.
    pub fn timeouts(&self) -> impl Iterator<Item = (HookPhase, &str, Duration)> {
        self.hooks
            .iter()
            .map(|h| (h.phase, h.name.as_str(), h.timeout))
    }

    /// `true` when no hook is registered.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Move the hooks of `phase` into a registry of their own (to run them in another
    /// task).
    pub fn split_phase(&mut self, phase: HookPhase) -> Hooks {
        Hooks {
            hooks: self.take_phase(phase),
        }
    }

    fn take_phase(&mut self, phase: HookPhase) -> Vec<Hook> {
        let (taken, kept) = std::mem::take(&mut self.hooks)
            .into_iter()
            .partition(|h| h.phase == phase);
        self.hooks = kept;
        taken
    }

    /// Run every hook of `phase`, last registered first, each with its timeout. The hooks
    /// run once: they are removed from the registry.
    pub async fn run_phase(&mut self, phase: HookPhase) -> Vec<HookOutcome> {
        let mut outcomes = Vec::new();
        for hook in self.take_phase(phase).into_iter().rev() {
            outcomes.push(run_one(hook).await);
        }
        outcomes
    }

    /// Mark every hook of `phase` as skipped (a forced shutdown) and remove it.
    pub fn skip_phase(&mut self, phase: HookPhase) -> Vec<HookOutcome> {
        self.take_phase(phase)
            .into_iter()
            .rev()
            .map(|h| HookOutcome {
                name: h.name,
                phase: h.phase,
                status: HookStatus::Skipped,
                duration: Duration::ZERO,
                best_effort: h.best_effort,
            })
            .collect()
    }
}

async fn run_one(hook: Hook) -> HookOutcome {
    tracing::info!(hook = %hook.name, hook_phase = hook.phase.as_str(), "hook started");
    let started = tokio::time::Instant::now();
    // The hook runs in its own task so that a panic inside it is reported as a failure.
    let task = tokio::spawn((hook.run)());
    let abort = task.abort_handle();
    let status = match tokio::time::timeout(hook.timeout, task).await {
        Ok(Ok(Ok(()))) => HookStatus::Ok,
        Ok(Ok(Err(e))) => HookStatus::Failed(e.to_string()),
        Ok(Err(join)) => HookStatus::Failed(format!("hook panicked: {join}")),
        Err(_) => {
            abort.abort();
            HookStatus::TimedOut
        }
    };
    if status != HookStatus::Ok && hook.best_effort {
        tracing::warn!(hook = %hook.name, status = ?status, "best-effort hook did not succeed: nothing is lost, the exit code stays as it is");
    } else if status != HookStatus::Ok {
        tracing::warn!(hook = %hook.name, status = ?status, "hook did not succeed");
    }
    HookOutcome {
        name: hook.name,
        phase: hook.phase,
        status,
        duration: started.elapsed(),
        best_effort: hook.best_effort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn recorder(
        order: &Arc<Mutex<Vec<&'static str>>>,
        name: &'static str,
    ) -> impl FnOnce() -> std::future::Ready<Result<(), HookError>> {
        let order = order.clone();
        move || {
            order.lock().unwrap().push(name);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn hooks_run_lifo_within_a_phase() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = Hooks::new();
        let t = Duration::from_secs(1);
        hooks.add(HookPhase::AfterDrain, "a", t, recorder(&order, "a"));
        hooks.add(HookPhase::Final, "f", t, recorder(&order, "f"));
        hooks.add(HookPhase::AfterDrain, "b", t, recorder(&order, "b"));
        let out = hooks.run_phase(HookPhase::AfterDrain).await;
        assert_eq!(*order.lock().unwrap(), ["b", "a"]);
        assert!(out.iter().all(|o| o.status == HookStatus::Ok));
        assert_eq!(hooks.budget(HookPhase::Final), t);
        assert!(
            hooks.run_phase(HookPhase::AfterDrain).await.is_empty(),
            "hooks run once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_hook_times_out_and_the_next_still_runs() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut hooks = Hooks::new();
        hooks.add(
            HookPhase::Final,
            "after",
            Duration::from_secs(1),
            recorder(&order, "after"),
        );
        hooks.add(
            HookPhase::Final,
            "slow",
            Duration::from_millis(100),
            || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            },
        );
        let out = hooks.run_phase(HookPhase::Final).await;
        assert_eq!(out[0].status, HookStatus::TimedOut);
        assert_eq!(out[0].duration, Duration::from_millis(100));
        assert_eq!(out[1].status, HookStatus::Ok);
        assert_eq!(*order.lock().unwrap(), ["after"]);
    }

    #[tokio::test]
    async fn a_failing_best_effort_hook_is_reported_but_clean() {
        let mut hooks = Hooks::new();
        let t = Duration::from_secs(1);
        hooks.add_best_effort(HookPhase::BeforeDrain, "deregister", t, || async {
            Err("etcd unreachable".into())
        });
        hooks.add(HookPhase::BeforeDrain, "required", t, || async {
            Err("lost".into())
        });
        let out = hooks.run_phase(HookPhase::BeforeDrain).await;
        assert_eq!(out[1].name, "deregister");
        assert!(out[1].best_effort && out[1].is_clean());
        assert_eq!(out[1].status, HookStatus::Failed("etcd unreachable".into()));
        assert!(!out[0].best_effort && !out[0].is_clean());
    }

    #[tokio::test]
    async fn failing_and_panicking_hooks_are_reported() {
        let mut hooks = Hooks::new();
        let t = Duration::from_secs(1);
        hooks.add(HookPhase::Final, "panics", t, || async { panic!("boom") });
        hooks.add(HookPhase::Final, "fails", t, || async {
            Err("disk full".into())
        });
        let out = hooks.run_phase(HookPhase::Final).await;
        assert_eq!(out[0].status, HookStatus::Failed("disk full".into()));
        assert!(matches!(&out[1].status, HookStatus::Failed(m) if m.contains("panicked")));
    }
}
