//! The open-loop drill against the real demo: at 2,000 requests a second it sends on
//! schedule and measures latency from the schedule; against a stopped server it says that
//! it could not offer the load instead of reporting a clean run. A test binary of its own,
//! so that no other test loads the machine meanwhile.

use clap::Parser as _;
use lameduck_drill::{Args, Report};
use lameduck_testkit::Spawned;
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck-demo");

async fn drill(url: &str, extra: &[&str]) -> Report {
    let mut argv = vec!["lameduck-drill", url, "--quiet"];
    argv.extend_from_slice(extra);
    lameduck_drill::run(Args::try_parse_from(argv).expect("flags"))
        .await
        .expect("drill")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_2000_a_second_the_requests_go_on_schedule_and_latency_counts_from_it() {
    let s = Spawned::start(BIN, &[]).expect("start the demo");
    let url = format!("http://{}/work?ms=50", s.http);
    let r = drill(&url, &["--rate", "2000", "--duration", "5s"]).await;
    eprintln!("{}", lameduck_drill::summary(&r));
    assert_eq!(r.offered, 10_000, "scheduled");
    assert!(
        (9_900..=10_100).contains(&r.requests),
        "sent {} of 10,000",
        r.requests
    );
    assert_eq!(r.errors, 0, "{:?}", r.outcomes);
    assert!(!r.client_saturated);
    assert!(r.send_lag_ms["p99"] <= 20.0, "send lag {:?}", r.send_lag_ms);
    assert!(
        r.achieved_rate >= 1_900.0,
        "achieved {:.0}/s",
        r.achieved_rate
    );
    let p50 = r.latency_ms["p50"];
    assert!((50.0..=100.0).contains(&p50), "p50 {p50} ms");
    assert_eq!(r.verdict, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_saturates_the_client_and_nothing_is_established() {
    let s = Spawned::start(BIN, &[]).expect("start the demo");
    s.signal(Signal::SIGSTOP);
    let url = format!("http://{}/ping", s.http);
    let r = drill(
        &url,
        &[
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--max-connections",
            "64",
            "--timeout",
            "1s",
        ],
    )
    .await;
    s.signal(Signal::SIGCONT);
    eprintln!("{}", lameduck_drill::summary(&r));
    assert!(r.client_saturated, "{r:?}");
    assert!(
        r.requests < r.offered,
        "sent {} of {}",
        r.requests,
        r.offered
    );
    assert!(r.unsent > 0);
    assert_eq!(r.verdict, "not established");
    // Latency from the schedule grows as requests wait longer for a connection.
    let waits: Vec<f64> = r.timeline.iter().filter_map(|s| s.p50_any_ms).collect();
    assert!(waits.len() >= 2, "{:?}", r.timeline);
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "each slot waited longer than the one before: {waits:?}"
    );
    assert!(
        waits[0] >= 1_000.0,
        "the first requests waited out their timeout"
    );
}
