//! The shutdown state file ([`Builder::state_file`](crate::server::Builder::state_file)): how the previous process ended.
//!
//! A counter of forced shutdowns cannot be scraped once the process is gone, so each
//! process records its outcome in a small file and the next one exports it as
//! `lameduck_previous_shutdown{outcome}` (see [`Metrics`](crate::metrics::Metrics)). A
//! process also records that it is running; a process that starts (not by an upgrade) and
//! finds that record from a process that never wrote its outcome knows it was killed or
//! crashed (SIGKILL, the OOM killer, an abort) and records `killed` for it.
//!
//! The file is plain `key=value` lines, written whole to a temporary file and renamed over
//! the old one; read-modify-write cycles hold an advisory lock on `PATH.lock`, since in an
//! upgrade the old process records its outcome while the new one runs.
//!
//! ```text
//! # lameduck shutdown state: written by each process, read by the next
//! running_pid=4242
//! running_since=1764669000
//! previous_pid=4100
//! previous_outcome=forced
//! previous_abandoned=2
//! previous_at=1764668990
//! ```

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::ShutdownReport;

/// How a process ended, as the state file records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// Every request finished and every hook succeeded (exit code 0).
    Clean,
    /// The drain was cut short: the deadline passed, a second signal or SIGQUIT; requests
    /// may have been abandoned (exit code 3).
    Forced,
    /// Every request finished but a hook failed, timed out or was skipped (exit code 3).
    HookFailed,
    /// A background task failed: it stopped the process (exit code 1) or failed while
    /// stopping (exit code 3).
    TaskFailed,
    /// The process never recorded how it ended: killed (SIGKILL, the OOM killer) or
    /// crashed.
    Killed,
}

impl ShutdownOutcome {
    /// Every outcome, in the order the metric lists them.
    pub const ALL: [ShutdownOutcome; 5] = [
        ShutdownOutcome::Clean,
        ShutdownOutcome::Forced,
        ShutdownOutcome::HookFailed,
        ShutdownOutcome::TaskFailed,
        ShutdownOutcome::Killed,
    ];

    /// The label value: `clean`, `forced`, `hook_failed`, `task_failed`, `killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownOutcome::Clean => "clean",
            ShutdownOutcome::Forced => "forced",
            ShutdownOutcome::HookFailed => "hook_failed",
            ShutdownOutcome::TaskFailed => "task_failed",
            ShutdownOutcome::Killed => "killed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcome a shutdown report describes.
    pub fn of(report: &ShutdownReport) -> Self {
        use super::TaskStatus;
        let tasks = |f: fn(&TaskStatus) -> bool| report.tasks.iter().any(|t| f(&t.status));
        if report.forced || !report.abandoned.is_empty() || tasks(|s| *s == TaskStatus::Abandoned) {
            ShutdownOutcome::Forced
        } else if tasks(|s| matches!(s, TaskStatus::Failed(_) | TaskStatus::StoppedTheProcess(_))) {
            ShutdownOutcome::TaskFailed
        } else if report.is_clean() {
            ShutdownOutcome::Clean
        } else {
            ShutdownOutcome::HookFailed
        }
    }
}

/// How the previous process ended, read from the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousShutdown {
    /// Its pid.
    pub pid: u32,
    /// How it ended.
    pub outcome: ShutdownOutcome,
    /// Requests it abandoned (0 when it was killed: unknown).
    pub abandoned: u64,
    /// When it ended (Unix seconds; for `killed`, when the next process noticed).
    pub at: u64,
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// The process serving now, and since when (Unix seconds).
    running: Option<(u32, u64)>,
    previous: Option<PreviousShutdown>,
}

impl State {
    /// Parse the file; `None` when it is not a state file (it is then rewritten).
    fn parse(text: &str) -> Option<State> {
        let mut v = std::collections::HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, val) = line.split_once('=')?;
            v.insert(k.trim(), val.trim());
        }
        let num = |k: &str| v.get(k).map(|s| s.parse::<u64>().ok());
        let running = match (num("running_pid"), num("running_since")) {
            (Some(Some(pid)), Some(Some(since))) => Some((u32::try_from(pid).ok()?, since)),
            (None, None) => None,
            _ => return None,
        };
        let previous = match v.get("previous_outcome") {
            None => None,
            Some(o) => Some(PreviousShutdown {
                pid: u32::try_from(num("previous_pid")??).ok()?,
                outcome: ShutdownOutcome::parse(o)?,
                abandoned: num("previous_abandoned")??,
                at: num("previous_at")??,
            }),
        };
        Some(State { running, previous })
    }

    fn render(&self) -> String {
        let mut s =
            String::from("# lameduck shutdown state: written by each process, read by the next\n");
        if let Some((pid, since)) = self.running {
            let _ = writeln!(s, "running_pid={pid}\nrunning_since={since}");
        }
        if let Some(p) = &self.previous {
            let _ = writeln!(
                s,
                "previous_pid={}\nprevious_outcome={}\nprevious_abandoned={}\nprevious_at={}",
                p.pid,
                p.outcome.as_str(),
                p.abandoned,
                p.at
            );
        }
        s
    }
}

/// Read how the previous process ended, for the metrics: `None` without a file or a record,
/// or when the record is this process's own.
pub fn read_previous(path: &Path) -> Option<PreviousShutdown> {
    let text = std::fs::read_to_string(path).ok()?;
    State::parse(&text)?
        .previous
        .filter(|p| p.pid != std::process::id())
}

/// This process serves: record it, after recording `killed` for a previous process that
/// never recorded its end. `upgraded` is true when this process took over from a running
/// one, which records its own end.
pub(crate) fn record_start(path: &Path, upgraded: bool) -> std::io::Result<()> {
    let pid = std::process::id();
    update(path, |state| {
        if let (false, Some((old, _))) = (upgraded, state.running) {
            // A non-upgrade start with the old process still alive means two processes
            // share the file: say so rather than call the other one dead.
            if old != pid && alive(old) {
                tracing::warn!(
                    path = %path.display(),
                    other_pid = old,
                    "the shutdown state file names another running process; is it shared?"
                );
            } else {
                tracing::warn!(
                    previous_pid = old,
                    "the previous process ended without recording its shutdown (killed or crashed)"
                );
                state.previous = Some(PreviousShutdown {
                    pid: old,
                    outcome: ShutdownOutcome::Killed,
                    abandoned: 0,
                    at: now(),
                });
            }
        }
        if let Some(p) = &state.previous {
            tracing::info!(
                previous_pid = p.pid,
                outcome = p.outcome.as_str(),
                abandoned = p.abandoned,
                "previous shutdown"
            );
        }
        state.running = Some((pid, now()));
    })
}

/// This process has shut down: record how, and that it no longer runs (unless a process
/// that took over has recorded itself since).
pub(crate) fn record_end(path: &Path, report: &ShutdownReport) -> std::io::Result<()> {
    let pid = std::process::id();
    update(path, |state| {
        state.previous = Some(PreviousShutdown {
            pid,
            outcome: ShutdownOutcome::of(report),
            abandoned: report.abandoned.len() as u64,
            at: now(),
        });
        if state.running.is_some_and(|(p, _)| p == pid) {
            state.running = None;
        }
    })
}

/// Read, change and write the file under the lock.
fn update(path: &Path, change: impl FnOnce(&mut State)) -> std::io::Result<()> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sibling(path, ".lock"))?;
    // Held until dropped, at the end of this function.
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    let mut state = match std::fs::read_to_string(path) {
        Ok(text) => State::parse(&text).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "the shutdown state file is not one; rewriting it");
            State::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(e),
    };
    change(&mut state);
    let tmp = sibling(path, &format!(".{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(state.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // EPERM: it exists, under another user.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::AbandonedRequest;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lameduck-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn previous(path: &Path) -> Option<PreviousShutdown> {
        State::parse(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .previous
    }

    #[test]
    fn the_outcome_follows_the_report() {
        let mut r = ShutdownReport::default();
        assert_eq!(ShutdownOutcome::of(&r), ShutdownOutcome::Clean);
        r.hooks.push(crate::hooks::HookOutcome {
            name: "close".into(),
            phase: crate::hooks::HookPhase::AfterDrain,
            status: crate::hooks::HookStatus::TimedOut,
            duration: std::time::Duration::from_secs(1),
            best_effort: true,
        });
        assert_eq!(
            ShutdownOutcome::of(&r),
            ShutdownOutcome::Clean,
            "a best-effort hook's failure loses nothing"
        );
        r.hooks[0].best_effort = false;
        assert_eq!(ShutdownOutcome::of(&r), ShutdownOutcome::HookFailed);
        r.abandoned.push(AbandonedRequest {
            method: "GET".into(),
            path: "/slow".into(),
            age: std::time::Duration::from_secs(3),
            request_id: None,
        });
        assert_eq!(ShutdownOutcome::of(&r), ShutdownOutcome::Forced);
    }

    #[test]
    fn a_clean_end_is_recorded_and_not_shown_to_the_same_process() {
        let d = dir("clean");
        let path = d.join("state");
        record_start(&path, false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("running_pid={}\n", std::process::id())),
            "{text}"
        );
        assert_eq!(previous(&path), None);
        record_end(&path, &ShutdownReport::default()).unwrap();
        let p = previous(&path).expect("recorded");
        assert_eq!(
            (p.pid, p.outcome, p.abandoned),
            (std::process::id(), ShutdownOutcome::Clean, 0)
        );
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains("running_pid"));
        // The metrics show another process's end only.
        assert_eq!(read_previous(&path), None);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_process_that_never_recorded_its_end_was_killed() {
        let d = dir("killed");
        let path = d.join("state");
        // A dead pid: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&path, format!("running_pid={dead}\nrunning_since=1\n")).unwrap();
        record_start(&path, false).unwrap();
        let p = read_previous(&path).expect("killed recorded");
        assert_eq!((p.pid, p.outcome), (dead, ShutdownOutcome::Killed));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn an_upgrade_leaves_the_old_process_to_record_its_own_end() {
        let d = dir("upgrade");
        let path = d.join("state");
        // The old process: our parent-like stand-in is a live pid (1 always exists).
        std::fs::write(
            &path,
            "running_pid=1\nrunning_since=1\nprevious_pid=7\nprevious_outcome=forced\nprevious_abandoned=2\nprevious_at=5\n",
        )
        .unwrap();
        record_start(&path, true).unwrap();
        let p = read_previous(&path).expect("kept");
        assert_eq!(
            (p.pid, p.outcome, p.abandoned, p.at),
            (7, ShutdownOutcome::Forced, 2, 5)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("running_pid={}\n", std::process::id())),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_live_process_named_by_the_file_is_not_called_killed() {
        let d = dir("shared");
        let path = d.join("state");
        std::fs::write(&path, "running_pid=1\nrunning_since=1\n").unwrap();
        record_start(&path, false).unwrap();
        assert_eq!(read_previous(&path), None);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_file_that_is_not_a_state_file_is_rewritten() {
        let d = dir("garbage");
        let path = d.join("state");
        for bad in [
            "hello",
            "running_pid=x\nrunning_since=1\n",
            "previous_outcome=maybe\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(read_previous(&path), None, "{bad}");
            record_start(&path, false).unwrap();
            assert!(State::parse(&std::fs::read_to_string(&path).unwrap()).is_some());
        }
        let _ = std::fs::remove_dir_all(d);
    }
}
