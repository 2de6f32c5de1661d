//! Forced exits: a second SIGTERM or SIGINT, or SIGQUIT.

use lameduck_testkit::Exit;
use std::time::{Duration, Instant};

use lameduck_testkit::get;
use nix::sys::signal::Signal;

use crate::{start, wait_draining, wait_in_flight, SOON};

async fn forced_by(first: Signal, second: Option<Signal>) {
    let mut s = start(&["--shutdown-timeout", "60s"]);
    let addr = s.http;
    let stuck = tokio::spawn(async move { get(addr, "/work?ms=60000").await });
    wait_in_flight(&s, 1).await;
    s.signal(first);
    if let Some(second) = second {
        wait_draining(&s).await;
        s.signal(second);
    }
    let t0 = Instant::now();
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(3));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "forced exit took {:?}",
        t0.elapsed()
    );
    assert!(stuck.await.expect("task").is_err());
    assert!(s.logs().iter().any(|l| l.contains("request abandoned")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_forces_an_immediate_exit_3() {
    forced_by(Signal::SIGTERM, Some(Signal::SIGTERM)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_then_sigint_forces_an_immediate_exit_3() {
    forced_by(Signal::SIGINT, Some(Signal::SIGINT)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_forces_an_immediate_exit_3() {
    forced_by(Signal::SIGQUIT, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_exits_0_on_sigint() {
    let mut s = start(&[]);
    s.signal(Signal::SIGINT);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    assert!(s
        .logs()
        .iter()
        .any(|l| l.contains("shutdown report") && l.contains("\"exit_code\":0")));
}
