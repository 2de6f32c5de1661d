//! Faults applied while the load runs: a signal to the target process (its pid given, or
//! read from a file at each fault so that it follows restarts), a shell command, or both, at
//! `at`, then every `every`, `repeat` times.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::task::JoinHandle;

/// The longest a fault's shell command may run.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the target's pid comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidSource {
    /// This pid.
    Pid(i32),
    /// Read from this file at each fault.
    File(PathBuf),
}

/// The faults of a drill.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The signal to send, if any.
    pub signal: Option<Signal>,
    /// Whom to send it to (set whenever `signal` is).
    pub pid: Option<PidSource>,
    /// A shell command to run after the signal, if any.
    pub exec: Option<String>,
    /// The first fault, after the start.
    pub at: Duration,
    /// Between faults.
    pub every: Duration,
    /// How many.
    pub repeat: u32,
}

/// A fault that was applied.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Milliseconds since the start.
    pub t_ms: u64,
    /// What was done.
    pub what: String,
    /// `ok` or the error.
    pub result: String,
}

/// Apply `plan`'s faults on schedule from `start` until `end`; the task returns what was
/// done. Each fault is also printed on stderr as it happens.
pub(crate) fn schedule(
    plan: FaultPlan,
    start: Instant,
    end: Instant,
) -> JoinHandle<Vec<FaultEvent>> {
    tokio::spawn(async move {
        let mut events = Vec::new();
        for k in 0..plan.repeat {
            let at = start + plan.at + plan.every * k;
            if at >= end {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            if Instant::now() >= end {
                // Earlier faults ran long; the load is over.
                break;
            }
            let t_ms = start.elapsed().as_millis() as u64;
            let (what, result) = apply(&plan).await;
            eprintln!("fault at {t_ms} ms: {what}: {result}");
            events.push(FaultEvent { t_ms, what, result });
        }
        events
    })
}

/// Apply one fault: what was done, and `ok` or why it failed.
async fn apply(plan: &FaultPlan) -> (String, String) {
    let mut what = Vec::new();
    let mut result = Ok(());
    if let (Some(signal), Some(pid)) = (plan.signal, &plan.pid) {
        match send_signal(signal, pid) {
            Ok(w) => what.push(w),
            Err(e) => result = Err(e),
        }
    }
    if let (Some(cmd), Ok(())) = (&plan.exec, &result) {
        what.push(format!("exec {cmd:?}"));
        result = run_command(cmd).await;
    }
    let result = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    (what.join(", "), result)
}

fn send_signal(signal: Signal, pid: &PidSource) -> anyhow::Result<String> {
    let pid = match pid {
        PidSource::Pid(pid) => *pid,
        PidSource::File(file) => read_pid(file)?,
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("kill {pid}"))?;
    Ok(format!("{} to {pid}", signal.as_str()))
}

fn read_pid(file: &std::path::Path) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", file.display()))
}

async fn run_command(cmd: &str) -> anyhow::Result<()> {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(EXEC_TIMEOUT, run).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(anyhow::anyhow!("command exited with {st}")),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("command ran over {EXEC_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pid_file_that_holds_no_pid_is_the_faults_result_not_a_crash() {
        let dir = std::env::temp_dir().join(format!("drill-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pid");
        std::fs::write(&file, "not a pid").expect("write");
        let plan = FaultPlan {
            signal: Some(Signal::SIGHUP),
            pid: Some(PidSource::File(file)),
            exec: Some("true".into()),
            at: Duration::ZERO,
            every: Duration::ZERO,
            repeat: 1,
        };
        let (what, result) = apply(&plan).await;
        assert!(result.contains("does not hold a pid"), "{what}: {result}");
        let ok = FaultPlan {
            signal: None,
            pid: None,
            ..plan
        };
        assert_eq!(
            apply(&ok).await,
            ("exec \"true\"".to_string(), "ok".to_string())
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
