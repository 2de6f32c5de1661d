//! Background tasks that the drain waits for, as it waits for requests.
//!
//! A queue consumer, a scheduler or an outbox relay registered with
//! [`Builder::task`](crate::server::Builder::task) starts when the server serves and gets a
//! [`TaskContext`]: its "stop soon" signal and the deadline, like a request. Each task says
//! when it is told to stop ([`StopWhen`]): when the drain starts, with the requests, or once
//! the requests are done (the default, for work that requests feed). The drain ends when
//! the connections and the tasks are done; a task still running at the deadline is
//! abandoned (aborted), named in the log and in the [`ShutdownReport`], and the exit code
//! is 3.
//!
//! A task that returns an error or panics while the server serves either restarts with
//! back-off ([`OnFailure::Restart`], the default: 100 ms doubling to 5 s, back to 100 ms
//! after a run of 10 s) or stops the process ([`OnFailure::StopProcess`]: the drain starts
//! and the exit code is 1). Returning `Ok` while serving means the task is done.
//!
//! ```
//! use std::time::Duration;
//! use lameduck::tasks::{Task, StopWhen};
//!
//! let relay = Task::new("outbox-relay", |ctx| async move {
//!     loop {
//!         tokio::select! {
//!             _ = ctx.stop_soon() => return Ok(()),
//!             _ = tokio::time::sleep(Duration::from_millis(100)) => {
//!                 // deliver what is pending; a delivery in progress finishes first
//!             }
//!         }
//!     }
//! })
//! .stop_when(StopWhen::AfterRequests);
//! # let _ = relay;
//! ```
//!
//! Compared with `tokio-graceful-shutdown`'s subsystems (a tree of tasks, each stopped by
//! its parent, errors propagating up to a top level that ends the program): lameduck's tasks
//! are flat and stop in two groups ordered around the requests, because what matters in a
//! server is whether the work still has producers (requests) when it is told to stop; they
//! share the requests' deadline instead of a timeout of their own, so one budget bounds the
//! whole stop; and restarting is a per-task policy, where there it is left to the caller.
//!
//! [`ShutdownReport`]: crate::lifecycle::ShutdownReport

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::lifecycle::{Shutdown, TaskOutcome, TaskStatus, Trigger};
use crate::sync::lock;

/// The error a task may return.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

type TaskFuture = Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;
type TaskFn = Arc<dyn Fn(TaskContext) -> TaskFuture + Send + Sync>;

/// The first wait before a failed task runs again; it doubles up to [`RESTART_BACKOFF_MAX`].
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait before a failed task runs again.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A run at least this long resets the back-off to [`RESTART_BACKOFF_MIN`].
pub const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// When a task is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StopWhen {
    /// When the drain starts, with the requests' "stop soon" (a poller of an external
    /// queue: stop taking new work).
    WithRequests,
    /// Once every connection is done (work that requests feed, such as an outbox relay:
    /// the last request's event is still delivered).
    #[default]
    AfterRequests,
}

/// What happens when a task returns an error or panics while the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnFailure {
    /// Run it again after a back-off (see the [module docs](self)).
    #[default]
    Restart,
    /// Start the drain; the process exits 1 once it is done.
    StopProcess,
}

/// A named background task: a function that makes the task's future, called again for
/// each restart.
#[derive(Clone)]
pub struct Task {
    name: Arc<str>,
    stop_when: StopWhen,
    on_failure: OnFailure,
    run: TaskFn,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("stop_when", &self.stop_when)
            .field("on_failure", &self.on_failure)
            .finish_non_exhaustive()
    }
}

impl Task {
    /// A task named `name` (in logs, metrics and the report) running `f(ctx)`; stopped
    /// after the requests, restarted on failure.
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        Task {
            name: name.into().into(),
            stop_when: StopWhen::default(),
            on_failure: OnFailure::default(),
            run: Arc::new(move |ctx| Box::pin(f(ctx))),
        }
    }

    /// When the task is told to stop (default [`StopWhen::AfterRequests`]).
    pub fn stop_when(mut self, when: StopWhen) -> Self {
        self.stop_when = when;
        self
    }

    /// What a failure does (default [`OnFailure::Restart`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What a running task knows: when to stop, and the deadline after which it is cut off.
#[derive(Debug, Clone)]
pub struct TaskContext {
    name: Arc<str>,
    stop: CancellationToken,
    shutdown: Shutdown,
}

impl TaskContext {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Completes when the task should finish what it is doing and return.
    pub fn stop_soon(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// `true` once the task has been told to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// A child of the stop token, for APIs that take a [`CancellationToken`].
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// The instant after which the task is aborted; `None` while serving.
    pub fn deadline(&self) -> Option<Instant> {
        self.shutdown.deadline()
    }

    /// The lifecycle watcher (phase, the requests' "stop soon").
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

/// A task's live state, shared with the metrics.
#[derive(Debug)]
pub(crate) struct TaskState {
    pub(crate) name: Arc<str>,
    pub(crate) running: AtomicBool,
    pub(crate) restarts: AtomicU64,
    status: Mutex<Option<TaskStatus>>,
}

/// The tasks' states, as the metrics read them.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskStates(pub(crate) Arc<[Arc<TaskState>]>);

/// The running tasks, as the server starts and stops them.
#[derive(Debug)]
pub(crate) struct TaskSet {
    states: TaskStates,
    after_requests: CancellationToken,
    with_requests: CancellationToken,
    tracker: TaskTracker,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl TaskSet {
    /// Make the states for `tasks` (before they start, so the metrics can hold them).
    pub(crate) fn states(tasks: &[Task]) -> TaskStates {
        TaskStates(
            tasks
                .iter()
                .map(|t| {
                    Arc::new(TaskState {
                        name: t.name.clone(),
                        running: AtomicBool::new(false),
                        restarts: AtomicU64::new(0),
                        status: Mutex::new(None),
                    })
                })
                .collect(),
        )
    }

    /// Start every task. `trigger` starts the drain for a task that stops the process.
    pub(crate) fn start(
        tasks: Vec<Task>,
        states: TaskStates,
        shutdown: &Shutdown,
        trigger: &Trigger,
    ) -> TaskSet {
        let after_requests = CancellationToken::new();
        let with_requests = shutdown.stop_soon_token();
        let tracker = TaskTracker::new();
        let handles = tasks
            .into_iter()
            .zip(states.0.iter().cloned())
            .map(|(task, state)| {
                let stop = match task.stop_when {
                    StopWhen::WithRequests => with_requests.child_token(),
                    StopWhen::AfterRequests => after_requests.child_token(),
                };
                let ctx = TaskContext {
                    name: task.name.clone(),
                    stop,
                    shutdown: shutdown.clone(),
                };
                tracing::info!(task = %task.name, stop_when = ?task.stop_when, "task started");
                tracker.spawn(supervise(task, ctx, state, trigger.clone()))
            })
            .collect();
        tracker.close();
        TaskSet {
            states,
            after_requests,
            with_requests,
            tracker,
            handles,
        }
    }

    /// Tell the tasks that stop after the requests to stop.
    pub(crate) fn stop_after_requests(&self) {
        self.after_requests.cancel();
    }

    /// Completes when every task has ended.
    pub(crate) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// How many tasks are still running.
    pub(crate) fn running(&self) -> usize {
        self.states
            .0
            .iter()
            .filter(|s| lock(&s.status).is_none())
            .count()
    }

    /// End every task: tell them all to stop, abort those still running (abandoned, logged)
    /// and return each one's outcome.
    pub(crate) async fn finish(self) -> Vec<TaskOutcome> {
        self.with_requests.cancel();
        self.after_requests.cancel();
        for h in &self.handles {
            h.abort();
        }
        for h in self.handles {
            let _ = h.await;
        }
        self.states
            .0
            .iter()
            .map(|s| {
                let status = lock(&s.status).clone().unwrap_or(TaskStatus::Abandoned);
                if status == TaskStatus::Abandoned {
                    s.running.store(false, Ordering::Relaxed);
                    tracing::warn!(task = %s.name, "task abandoned: still running when the server stopped waiting");
                }
                TaskOutcome {
                    name: s.name.to_string(),
                    status,
                    restarts: s.restarts.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

/// Run `task` until it ends, restarting it after failures as its policy says; record how
/// it ended in `state`.
async fn supervise(task: Task, ctx: TaskContext, state: Arc<TaskState>, trigger: Trigger) {
    let status = run_until_end(&task, &ctx, &state, &trigger).await;
    state.running.store(false, Ordering::Relaxed);
    match &status {
        TaskStatus::Failed(e) => {
            tracing::error!(task = %task.name, error = %e, "task failed while stopping")
        }
        s => tracing::info!(task = %task.name, status = s.as_str(), "task ended"),
    }
    *lock(&state.status) = Some(status);
}

async fn run_until_end(
    task: &Task,
    ctx: &TaskContext,
    state: &TaskState,
    trigger: &Trigger,
) -> TaskStatus {
    let mut backoff = RESTART_BACKOFF_MIN;
    loop {
        state.running.store(true, Ordering::Relaxed);
        let started = Instant::now();
        // A task of its own, so that a panic ends that run only; aborted with the
        // supervisor when the task is abandoned.
        let run = AbortOnDropHandle::new(tokio::spawn((task.run)(ctx.clone())));
        let error = match run.await {
            Ok(Ok(())) if ctx.is_stopping() => return TaskStatus::Stopped,
            Ok(Ok(())) => return TaskStatus::Finished,
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => format!(
                "panicked: {}",
                crate::error::panic_message(&*e.into_panic())
            ),
            Err(e) => e.to_string(),
        };
        state.running.store(false, Ordering::Relaxed);
        if ctx.is_stopping() {
            return TaskStatus::Failed(error);
        }
        match task.on_failure {
            OnFailure::StopProcess => {
                tracing::error!(task = %task.name, error = %error, "task failed; stopping the process");
                trigger.drain();
                return TaskStatus::StoppedTheProcess(error);
            }
            OnFailure::Restart => {
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = RESTART_BACKOFF_MIN;
                }
                state.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    task = %task.name,
                    error = %error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "task failed; restarting"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctx.stop_soon() => return TaskStatus::Stopped,
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;

    fn set(tasks: Vec<Task>, lifecycle: &Lifecycle) -> TaskSet {
        let states = TaskSet::states(&tasks);
        TaskSet::start(tasks, states, &lifecycle.shutdown(), &lifecycle.trigger())
    }

    #[tokio::test]
    async fn tasks_stop_in_their_group_and_report_how_they_ended() {
        let lifecycle = Lifecycle::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        let tasks = vec![
            Task::new("poller", move |ctx| {
                let tx = tx.clone();
                async move {
                    ctx.stop_soon().await;
                    let _ = tx.send("poller");
                    Ok(())
                }
            })
            .stop_when(StopWhen::WithRequests),
            Task::new("relay", move |ctx| {
                let tx = tx2.clone();
                async move {
                    ctx.stop_soon().await;
                    let _ = tx.send("relay");
                    Ok(())
                }
            }),
            Task::new("one-shot", |_| async { Ok(()) }),
        ];
        let set = set(tasks, &lifecycle);
        lifecycle.begin_drain(Duration::from_secs(5));
        assert_eq!(rx.recv().await, Some("poller"));
        // The relay waits for the requests.
        assert!(rx.try_recv().is_err());
        assert_eq!(set.running(), 1);
        set.stop_after_requests();
        assert_eq!(rx.recv().await, Some("relay"));
        set.wait().await;
        let outcomes = set.finish().await;
        let statuses: Vec<_> = outcomes
            .iter()
            .map(|o| (o.name.as_str(), o.status.clone()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("poller", TaskStatus::Stopped),
                ("relay", TaskStatus::Stopped),
                ("one-shot", TaskStatus::Finished)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_restarts_with_back_off_until_told_to_stop() {
        let lifecycle = Lifecycle::new();
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let task = Task::new("flaky", move |_| {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                    panic!("boom");
                }
                Err("refused".into())
            }
        });
        let set = set(vec![task], &lifecycle);
        // 100 + 200 + 400 + 800 ms of back-off: five runs in 1.6 s.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(runs.load(Ordering::Relaxed), 5);
        set.stop_after_requests();
        set.wait().await;
        let outcomes = set.finish().await;
        assert_eq!(outcomes[0].status, TaskStatus::Stopped);
        assert_eq!(outcomes[0].restarts, 5);
    }

    #[tokio::test]
    async fn a_task_that_stops_the_process_starts_the_drain() {
        let mut lifecycle = Lifecycle::new();
        let task = Task::new("critical", |_| async {
            Err::<(), _>("lost the queue".into())
        })
        .on_failure(OnFailure::StopProcess);
        let set = set(vec![task], &lifecycle);
        assert_eq!(
            lifecycle.next_signal().await,
            crate::lifecycle::Signal::Graceful
        );
        set.wait().await;
        let outcomes = set.finish().await;
        assert_eq!(
            outcomes[0].status,
            TaskStatus::StoppedTheProcess("lost the queue".into())
        );
    }

    #[tokio::test]
    async fn a_task_that_ignores_stop_soon_is_abandoned() {
        let lifecycle = Lifecycle::new();
        let task = Task::new("stubborn", |_| std::future::pending());
        let set = set(vec![task], &lifecycle);
        set.stop_after_requests();
        let waited = tokio::time::timeout(Duration::from_millis(50), set.wait()).await;
        assert!(waited.is_err(), "it never ends by itself");
        let outcomes = set.finish().await;
        assert_eq!(outcomes[0].status, TaskStatus::Abandoned);
    }
}
