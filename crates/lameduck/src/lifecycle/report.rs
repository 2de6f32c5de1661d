//! The shutdown report: what happened, how long each step took, what was abandoned.

use std::time::Duration;

use super::{log_ms, Phase};
use crate::exit;
use crate::hooks::{HookOutcome, HookStatus};

/// How long one phase lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseTiming {
    /// The phase that ended.
    pub phase: Phase,
    /// How long it lasted.
    pub duration: Duration,
}

/// A request that was still running when the server stopped waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedRequest {
    /// HTTP method.
    pub method: String,
    /// Request path (without the query string).
    pub path: String,
    /// How long it had been running.
    pub age: Duration,
    /// Its request id, if the request-context middleware gave it one.
    pub request_id: Option<String>,
}

/// How a task ended, in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskStatus {
    /// It returned after it was told to stop (or was waiting to restart then).
    Stopped,
    /// It returned `Ok` by itself while the server served: its work was done.
    Finished,
    /// It returned an error or panicked after it was told to stop (the message).
    Failed(String),
    /// It failed while serving with [`OnFailure::StopProcess`](crate::tasks::OnFailure::StopProcess) and so stopped the process.
    StoppedTheProcess(String),
    /// It was still running at the deadline (or on a forced stop) and was aborted.
    Abandoned,
}

impl TaskStatus {
    /// Lower-case name used in logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Stopped => "stopped",
            TaskStatus::Finished => "finished",
            TaskStatus::Failed(_) => "failed",
            TaskStatus::StoppedTheProcess(_) => "stopped_the_process",
            TaskStatus::Abandoned => "abandoned",
        }
    }

    /// `true` for an end that leaves nothing undone.
    pub fn is_clean(&self) -> bool {
        matches!(self, TaskStatus::Stopped | TaskStatus::Finished)
    }
}

/// One task's end in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    /// The task's name.
    pub name: String,
    /// How it ended.
    pub status: TaskStatus,
    /// How many times it was restarted after a failure.
    pub restarts: u64,
}

/// What the shutdown did, returned by [`Server::serve`](crate::server::Server::serve) and
/// logged as the last line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Why the shutdown started (`"signal"`, `"forced"`, `"trigger closed"`).
    pub reason: String,
    /// `true` when the server stopped waiting (deadline, second signal, SIGQUIT).
    pub forced: bool,
    /// Time from the start of the drain until connections were done or abandoned.
    pub drain: Duration,
    /// Every phase's duration, in order.
    pub phases: Vec<PhaseTiming>,
    /// Requests still running when the server stopped waiting.
    pub abandoned: Vec<AbandonedRequest>,
    /// Each hook, in the order they ran.
    pub hooks: Vec<HookOutcome>,
    /// Each background task, in the order they were registered.
    pub tasks: Vec<TaskOutcome>,
    /// Connections that were closed while still open at the deadline.
    pub connections_closed: usize,
}

impl ShutdownReport {
    /// `true` when everything finished, every hook succeeded (a best-effort hook's failure
    /// aside) and every task stopped.
    pub fn is_clean(&self) -> bool {
        !self.forced
            && self.abandoned.is_empty()
            && self.hooks.iter().all(crate::hooks::HookOutcome::is_clean)
            && self.tasks.iter().all(|t| t.status.is_clean())
    }

    /// The task whose failure stopped the process, if one did.
    pub fn failed_task(&self) -> Option<&TaskOutcome> {
        self.tasks
            .iter()
            .find(|t| matches!(t.status, TaskStatus::StoppedTheProcess(_)))
    }

    /// The process exit code this shutdown deserves: [`exit::RUNTIME_ERROR`] when a task's
    /// failure stopped the process, else [`exit::OK`] or [`exit::FORCED_SHUTDOWN`].
    pub fn exit_code(&self) -> u8 {
        if self.failed_task().is_some() {
            exit::RUNTIME_ERROR
        } else if self.is_clean() {
            exit::OK
        } else {
            exit::FORCED_SHUTDOWN
        }
    }

    /// Log the report: one line per abandoned request and failed hook, then a summary line.
    pub fn log(&self) {
        for r in &self.abandoned {
            tracing::warn!(
                method = %r.method,
                path = %r.path,
                age_ms = log_ms(r.age),
                request_id = r.request_id.as_deref().unwrap_or("-"),
                "request abandoned"
            );
        }
        for h in &self.hooks {
            let status = match &h.status {
                HookStatus::Ok => "ok".to_string(),
                HookStatus::Failed(e) => format!("failed: {e}"),
                HookStatus::TimedOut => "timed out".to_string(),
                HookStatus::Skipped => "skipped".to_string(),
            };
            tracing::info!(
                hook = %h.name,
                hook_phase = h.phase.as_str(),
                status = %status,
                best_effort = h.best_effort,
                duration_ms = log_ms(h.duration),
                "hook finished"
            );
        }
        for t in &self.tasks {
            let status = match &t.status {
                TaskStatus::Failed(e) | TaskStatus::StoppedTheProcess(e) => {
                    format!("{}: {e}", t.status.as_str())
                }
                s => s.as_str().to_string(),
            };
            tracing::info!(task = %t.name, status = %status, restarts = t.restarts, "task finished");
        }
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|p| format!("{}={:.1}ms", p.phase, p.duration.as_secs_f64() * 1e3))
            .collect();
        tracing::info!(
            reason = %self.reason,
            forced = self.forced,
            drain_ms = log_ms(self.drain),
            abandoned = self.abandoned.len(),
            connections_closed = self.connections_closed,
            hooks = self.hooks.len(),
            tasks = self.tasks.len(),
            phases = %phases.join(" "),
            exit_code = self.exit_code(),
            "shutdown report"
        );
    }
}
