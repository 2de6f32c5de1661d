//! Background tasks in a real process, with real signals (`--background-task`).

use lameduck_testkit::Exit;
use std::time::{Duration, Instant};

use lameduck_testkit::{get, poll_until};
use nix::sys::signal::Signal;

use crate::{start, SOON};

#[tokio::test]
async fn a_task_that_honours_the_stop_ends_with_the_drain_and_exit_0() {
    let mut s = start(&["--background-task", "ticker"]);
    s.wait_for_log(&["task started", "ticker"], SOON)
        .await
        .expect("started");
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let line = s
        .wait_for_log(&["task finished", "ticker"], SOON)
        .await
        .expect("in the report");
    assert!(line.contains("stopped"), "{line}");
}

#[tokio::test]
async fn a_task_that_ignores_the_stop_is_abandoned_at_the_deadline_named_and_exit_3() {
    let mut s = start(&[
        "--background-task",
        "stubborn",
        "--shutdown-timeout",
        "300ms",
    ]);
    s.wait_for_log(&["task started", "stubborn"], SOON)
        .await
        .expect("started");
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(3));
    s.wait_for_log(&["task abandoned", "stubborn"], SOON)
        .await
        .expect("named in the log");
    let report = s
        .wait_for_log(&["shutdown report"], SOON)
        .await
        .expect("report");
    assert!(report.contains("deadline passed"), "{report}");
}

#[tokio::test]
async fn a_panicking_task_is_restarted_and_counted() {
    let mut s = start(&["--background-task", "panicking"]);
    let restarted = poll_until(SOON, || async {
        let m = get(s.admin, "/metrics").await.ok()?;
        let text = String::from_utf8_lossy(m.body()).into_owned();
        let n: f64 = text
            .lines()
            .find(|l| l.starts_with("lameduck_task_restarts_total{task=\"panicking\"}"))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (n >= 2.0).then_some(())
    })
    .await;
    assert!(restarted.is_some(), "restarted at least twice");
    s.wait_for_log(&["task failed; restarting", "panicked"], SOON)
        .await
        .expect("logged");
    s.signal(Signal::SIGTERM);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "a task waiting to restart stops cleanly"
    );
}

#[tokio::test]
async fn a_failing_task_with_the_stop_policy_stops_the_process_with_exit_1() {
    let mut s = start(&["--background-task", "fatal"]);
    // No signal: the task's failure drains the process.
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(1));
    let line = s
        .wait_for_log(&["task failed; stopping the process", "fatal"], SOON)
        .await
        .expect("named in the log");
    assert!(line.contains("as asked"), "{line}");
    let report = s
        .wait_for_log(&["shutdown report"], SOON)
        .await
        .expect("report");
    assert!(report.contains("task fatal failed"), "{report}");
}
