//! SIGTERM drains: in-flight requests finish, the listener closes after the drain delay,
//! readiness flips at once, the deadline abandons what is left.

use lameduck_testkit::Exit;
use std::time::{Duration, Instant};

use lameduck_testkit::{connect_h1, connect_h2, get};
use nix::sys::signal::Signal;

use crate::{admin_status, start, wait_draining, wait_in_flight, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_50_requests_in_flight_completes_all_and_exits_0_promptly() {
    let mut s = start(&[]);
    let addr = s.http;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let res = get(addr, "/work?ms=2000").await;
                (res, Instant::now())
            })
        })
        .collect();
    wait_in_flight(&s, 50).await;
    s.signal(Signal::SIGTERM);
    let mut last = None::<Instant>;
    for t in tasks {
        let (res, at) = t.await.expect("task");
        let res = res.expect("every in-flight request gets its response");
        assert_eq!(res.status(), 200);
        assert_eq!(&res.body()[..], b"done");
        assert_eq!(res.headers()["connection"], "close");
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    let exit_after_last = last.expect("responses").elapsed();
    assert!(
        exit_after_last < Duration::from_secs(1),
        "exit took {exit_after_last:?} after the last response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_at_the_signal_and_new_connects_are_served_during_the_delay_then_refused() {
    let mut s = start(&["--drain-delay", "1s"]);
    crate::wait_ready(&s).await;
    // Keep the process alive past the delay.
    let addr = s.http;
    let long = tokio::spawn(async move { get(addr, "/work?ms=3000").await });
    wait_in_flight(&s, 1).await;
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    wait_draining(&s).await;
    assert_eq!(
        admin_status(&s, "/livez").await,
        200,
        "livez stays up while draining"
    );
    let during = get(s.http, "/ping")
        .await
        .expect("served during the drain delay");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "checked within the delay"
    );
    assert_eq!(during.status(), 200);
    assert_eq!(during.headers()["connection"], "close");
    let refused = lameduck_testkit::poll_until(SOON, || async {
        match get(addr, "/ping").await {
            Err(e) if e.is_refused() => Some(t0.elapsed()),
            _ => None,
        }
    })
    .await
    .expect("new connects are refused after the delay");
    assert!(
        refused >= Duration::from_millis(900),
        "refused after {refused:?}, before the delay ended"
    );
    assert_eq!(admin_status(&s, "/livez").await, 200);
    let res = long
        .await
        .expect("task")
        .expect("the long request finishes");
    assert_eq!(res.status(), 200);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_the_shutdown_timeout_exits_3_and_logs_each_abandoned_request() {
    let mut s = start(&["--shutdown-timeout", "300ms"]);
    let mut c = connect_h1(s.http).await.expect("connect");
    let stuck = tokio::spawn(async move {
        c.get_with("/work?ms=60000", &[("x-request-id", "stuck-1")])
            .await
    });
    wait_in_flight(&s, 1).await;
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(3));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "forced exit took {:?}",
        t0.elapsed()
    );
    let line = s
        .wait_for_log(&["request abandoned", "/work", "stuck-1"], SOON)
        .await
        .expect("the abandoned request is logged with path and request id");
    assert!(line.contains("\"method\":\"GET\""), "{line}");
    assert!(line.contains("age_ms"), "{line}");
    assert!(
        stuck.await.expect("task").is_err(),
        "the stuck request was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_complete_after_goaway() {
    let mut s = start(&[]);
    let h2 = connect_h2(s.http).await.expect("h2 connect");
    let streams: Vec<_> = (0..10)
        .map(|_| {
            let mut h2 = h2.clone();
            tokio::spawn(async move { h2.get("/work?ms=1000").await })
        })
        .collect();
    wait_in_flight(&s, 10).await;
    s.signal(Signal::SIGTERM);
    for t in streams {
        let res = t
            .await
            .expect("task")
            .expect("stream completes after GOAWAY");
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        assert!(res.headers().get("connection").is_none());
    }
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}
