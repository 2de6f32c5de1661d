//! The exit-code table every lameduck binary uses.
//!
//! Scripts, supervisors and tests rely on these numbers; they never change meaning.
//!
//! ```
//! use std::process::ExitCode;
//! use lameduck::lifecycle::ShutdownReport;
//!
//! fn exit_code(report: &ShutdownReport) -> ExitCode {
//!     // FORCED_SHUTDOWN when something was abandoned or a required hook failed, else OK.
//!     ExitCode::from(report.exit_code())
//! }
//! assert_eq!(ShutdownReport::default().exit_code(), lameduck::exit::OK);
//! # let _ = exit_code;
//! ```
//!
//! | code | constant | meaning |
//! |---|---|---|
//! | 0 | [`OK`] | clean shutdown: every request finished and every hook succeeded |
//! | 1 | [`RUNTIME_ERROR`] | start-up or run-time error (bind failure, bad config), one line on stderr; or a background task with [`OnFailure::StopProcess`](crate::tasks::OnFailure::StopProcess) failed |
//! | 2 | [`USAGE`] | usage error (bad flags or values), clap's message on stderr |
//! | 3 | [`FORCED_SHUTDOWN`] | forced or incomplete shutdown: deadline passed, a hook failed or timed out (a best-effort hook's failure does not count: see [`hooks`](crate::hooks)), second signal |

/// Clean shutdown.
pub const OK: u8 = 0;
/// Start-up or run-time error, reported as one line on stderr.
pub const RUNTIME_ERROR: u8 = 1;
/// Usage error: invalid flags or values.
pub const USAGE: u8 = 2;
/// Forced or incomplete shutdown.
pub const FORCED_SHUTDOWN: u8 = 3;
