//! An upgrade whose new process cannot start (its configuration broke meanwhile) rolls back:
//! the old process keeps serving without a failed request, and a later upgrade with a good
//! configuration goes through.

use lameduck_testkit::Exit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lameduck_testkit::{connect_h1, poll_until, ClientError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Store, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_at_start_up_rolls_back_and_the_old_one_keeps_serving() {
    let store = Store::sqlite("rollback");
    let config = store.dir.join("orders.toml");
    std::fs::write(&config, "drain_delay = \"0s\"\n").expect("config");
    let mut s = store.start(&["--config", config.to_str().unwrap(), "--log-format", "json"]);
    crate::wait_ready(&s).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = s.http;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(30);
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    if conn.is_none() {
                        conn = connect_h1(addr).await.ok();
                    }
                    let Some(h) = conn.as_mut() else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    match h.get("/orders?limit=1").await {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.headers().get("connection").is_some_and(|v| v == "close") {
                                conn = None;
                            }
                        }
                        Err(ClientError::NotSent(_)) => conn = None,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    let progressed = |n: usize| {
        let ok = ok.clone();
        async move {
            poll_until(SOON, || async {
                (ok.load(Ordering::Relaxed) >= n).then_some(())
            })
            .await
        }
    };
    assert!(progressed(50).await.is_some());

    // Break the configuration, then ask for an upgrade: the new process exits 1.
    std::fs::write(&config, "drain_delay = \"soon\"\n").expect("config");
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let line = s
        .wait_for_log(&["upgrade failed; rolled back"], SOON)
        .await
        .expect("the failed upgrade is logged");
    assert!(line.contains("exited before it was ready"), "{line}");
    let shown = lameduck_testkit::get(s.admin, "/upgrade")
        .await
        .expect("admin /upgrade");
    let shown = String::from_utf8_lossy(shown.body()).into_owned();
    assert!(
        shown.starts_with("rolled back: ") && shown.contains("exited before it was ready"),
        "{shown}"
    );
    assert!(!s.has_exited(), "the old process keeps serving");
    let before = ok.load(Ordering::Relaxed);
    assert!(
        progressed(before + 50).await.is_some(),
        "still serving after the rollback"
    );

    // Repair it: the next upgrade goes through.
    std::fs::write(&config, "drain_delay = \"0s\"\n").expect("config");
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let ready = s
        .wait_for_log(&["the new process is ready"], SOON)
        .await
        .expect("the second upgrade completes");
    let new_pid = serde_json::from_str::<serde_json::Value>(&ready).expect("json")["new_pid"]
        .as_u64()
        .expect("new_pid") as i32;
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process drains and exits 0"
    );
    let before = ok.load(Ordering::Relaxed);
    assert!(
        progressed(before + 50).await.is_some(),
        "the new process serves"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    let _ = kill(Pid::from_raw(new_pid), Signal::SIGTERM);
    let report = s
        .wait_for_log(&["shutdown report", "\"reason\":\"signal\""], SOON)
        .await
        .expect("the new process drains on SIGTERM");
    assert!(report.contains("\"exit_code\":0"), "{report}");
}
