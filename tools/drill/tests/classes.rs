//! Each outcome class, produced by a purpose-built misbehaving server, is counted as that
//! class and nothing else.

use std::time::Duration;

use clap::Parser as _;
use lameduck_drill::{run, Args, Report};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{drill_with, read_head, OK};

async fn drill(url: &str, extra: &[&str]) -> Report {
    let mut argv = vec!["--duration", "10s"];
    for (flag, default) in [("--requests", "6"), ("--concurrency", "2")] {
        if !extra.contains(&flag) {
            argv.extend_from_slice(&[flag, default]);
        }
    }
    argv.extend_from_slice(extra);
    drill_with(url, &argv).await
}

/// A server running `on_conn` for every connection.
async fn server<F, Fut>(on_conn: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let on_conn = std::sync::Arc::new(on_conn);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(on_conn(s));
        }
    });
    format!("http://{addr}/x")
}

fn only(r: &Report, class: &str) {
    assert_eq!(
        r.outcomes.keys().collect::<Vec<_>>(),
        [class],
        "{:?}",
        r.outcomes
    );
    assert_eq!(r.outcomes[class], 6);
}

#[tokio::test]
async fn a_healthy_server_gives_only_ok() {
    let url = server(|mut s| async move {
        while read_head(&mut s).await {
            if s.write_all(OK).await.is_err() {
                return;
            }
        }
    })
    .await;
    let r = drill(&url, &[]).await;
    only(&r, "ok");
    assert_eq!(r.errors, 0);
}

#[tokio::test]
async fn a_closed_port_gives_refused() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let r = drill(&format!("http://{addr}/x"), &[]).await;
    only(&r, "refused");
}

#[tokio::test]
async fn a_reset_on_a_new_connection_gives_reset_fresh() {
    let url = server(|mut s| async move {
        if read_head(&mut s).await {
            let _ = s.set_zero_linger();
        }
    })
    .await;
    let r = drill(&url, &[]).await;
    only(&r, "reset_fresh");
}

#[tokio::test]
async fn a_reset_after_a_kept_alive_response_gives_reset_reused() {
    // Each connection answers its first request, keeps the connection, then resets on the
    // second; the workers' fresh connections after that are answered again.
    let url = server(|mut s| async move {
        if read_head(&mut s).await && s.write_all(OK).await.is_ok() && read_head(&mut s).await {
            let _ = s.set_zero_linger();
        }
    })
    .await;
    // One worker, so the sequence is fixed: ok, reset on reuse, ok on a new connection, ...
    let r = drill(&url, &["--requests", "4", "--concurrency", "1"]).await;
    assert_eq!(r.outcomes.get("ok"), Some(&2), "{:?}", r.outcomes);
    assert_eq!(r.outcomes.get("reset_reused"), Some(&2), "{:?}", r.outcomes);
}

#[tokio::test]
async fn a_server_that_stalls_gives_timeout() {
    let url = server(|mut s| async move {
        if read_head(&mut s).await {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let r = drill(&url, &["--timeout", "200ms"]).await;
    only(&r, "timeout");
}

#[tokio::test]
async fn a_503_is_counted_by_its_status() {
    let url = server(|mut s| async move {
        while read_head(&mut s).await {
            let res = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
            if s.write_all(res).await.is_err() {
                return;
            }
        }
    })
    .await;
    let r = drill(&url, &[]).await;
    only(&r, "status_503");
    assert_eq!(r.errors, 6);
}

#[tokio::test]
async fn workers_are_spread_over_several_urls() {
    let hits = std::sync::Arc::new([
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    ]);
    let mut urls = Vec::new();
    for i in 0..2 {
        let hits = hits.clone();
        urls.push(
            server(move |mut s| {
                let hits = hits.clone();
                async move {
                    while read_head(&mut s).await {
                        hits[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if s.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                }
            })
            .await,
        );
    }
    let argv = [
        "lameduck-drill",
        &urls[0],
        &urls[1],
        "--quiet",
        "--concurrency",
        "2",
        "--requests",
        "20",
    ];
    let r = run(Args::try_parse_from(argv).expect("flags"))
        .await
        .expect("drill");
    assert_eq!(r.outcomes.get("ok"), Some(&20));
    for h in hits.iter() {
        assert!(
            h.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "both URLs got traffic"
        );
    }
}

#[tokio::test]
async fn sigterm_ends_the_load_and_the_report_is_still_written() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let url = server(move |mut s| {
        let counter = counter.clone();
        async move {
            while read_head(&mut s).await {
                counter.fetch_add(1, Ordering::Relaxed);
                if s.write_all(OK).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let dir = std::env::temp_dir().join(format!("ld-drill-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let json = dir.join("report.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lameduck-drill"))
        .args([&url, "--quiet", "--duration", "1h", "--rate", "200"])
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn drill");
    // The load is running once the server has answered some requests.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served.load(Ordering::Relaxed) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drill sent nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = nix::unistd::Pid::from_raw(child.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the drill did not stop on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written")).expect("json");
    assert!(
        report["requests"].as_u64().expect("requests") >= 20,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
