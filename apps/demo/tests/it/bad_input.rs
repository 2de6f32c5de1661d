//! Bad input gets its documented answer and never crashes the process.

use std::process::Command;
use std::time::{Duration, Instant};

use lameduck_testkit::{connect_h1, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{start, BIN, SOON};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run binary")
}

/// Run the demo with `args`, expecting it to stop by itself (at start-up); killed after
/// [`SOON`] if it serves instead, so that a start it should have refused fails the test
/// instead of hanging it.
fn run_bounded(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run binary");
    let deadline = Instant::now() + SOON;
    while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

#[test]
fn invalid_flags_and_durations_exit_2_with_the_clap_message() {
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = run(&["--shutdown-timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("soon"));
    let out = run(&["--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_port_in_use_exits_1_with_one_line_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(&["--listen", &addr, "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&addr), "names the address: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_work_parameters_get_400_with_a_reason() {
    let s = start(&[]);
    for q in ["/work?ms=abc", "/work?ms=600001", "/work?ms=-1", "/work"] {
        let res = get(s.http, q).await.expect("response");
        assert_eq!(res.status(), 400, "{q}");
        assert!(
            std::str::from_utf8(res.body()).unwrap().contains("ms"),
            "{q}: reason names ms"
        );
    }
    assert_eq!(get(s.http, "/work?ms=0").await.expect("ok").status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_yields_500_and_the_next_request_succeeds() {
    let s = start(&[]);
    let mut c = connect_h1(s.http).await.expect("connect");
    let res = c.get("/panic").await.expect("a response, not a reset");
    assert_eq!(res.status(), 500);
    let res = c.get("/ping").await.expect("same connection still works");
    assert_eq!(res.status(), 200);
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let s = start(&[]);
    let big = "a".repeat(100 * 1024);
    let req = format!("GET /ping HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\nconnection: close\r\n\r\n");
    let res = raw(s.http, req.as_bytes()).await;
    assert!(
        res.starts_with("HTTP/1.1 431"),
        "{}",
        &res[..res.len().min(200)]
    );
    assert_eq!(
        get(s.http, "/ping").await.expect("still serving").status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413() {
    let s = start(&["--body-limit", "1024"]);
    let req = "POST /ping HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\nconnection: close\r\n\r\n";
    let res = raw(s.http, req.as_bytes()).await;
    assert!(res.starts_with("HTTP/1.1 413"), "{res}");
    assert!(
        res.contains(r#"{"error":{"code":"payload_too_large""#),
        "{res}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_too_slowly_is_cut_off() {
    let s = start(&["--header-read-timeout", "300ms"]);
    let mut c = TcpStream::connect(s.http).await.expect("connect");
    let t0 = Instant::now();
    c.write_all(b"GET /ping HTTP/1.1\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    // Trickle a header byte every 50 ms; the server must cut us off.
    let cut = loop {
        assert!(t0.elapsed() < SOON, "never cut off");
        match tokio::time::timeout(Duration::from_millis(50), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break t0.elapsed(),
            Ok(Ok(_)) => panic!("got a response to an incomplete head"),
            Err(_) => {
                if c.write_all(b"x").await.is_err() {
                    break t0.elapsed();
                }
            }
        }
    };
    assert!(
        cut >= Duration::from_millis(250),
        "cut after {cut:?}, before the timeout"
    );
    assert_eq!(
        get(s.http, "/ping").await.expect("still serving").status(),
        200
    );
}

#[test]
fn version_prints_the_version_and_the_build_id_of_the_file() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let id = lameduck_testkit::exe::build_id(std::path::Path::new(BIN)).expect("build id");
    assert_eq!(
        text.trim(),
        format!(
            "lameduck-demo {} (build id {id})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn a_pid_file_naming_a_directory_exits_1_with_one_line() {
    let dir = std::env::temp_dir();
    let out = run_bounded(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--pid-file",
        dir.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("is a directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_with_a_line_break_inside_exits_1_and_a_trailing_one_is_trimmed() {
    let dir = std::env::temp_dir().join(format!("ld-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = |name: &str, token: &str| {
        let path = dir.join(name);
        std::fs::write(&path, token).expect("token file");
        path.display().to_string()
    };
    for (name, token) in [
        ("lf", "abc\ndef\n"),
        ("cr", "abc\rdef"),
        ("crlf", "abc\r\ndef"),
    ] {
        let path = file(name, token);
        let out = run_bounded(&[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &path,
        ]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(err.contains("line break"), "{name}: {err}");
    }
    let path = file("trailing", "s3cret\n");
    let s = start(&["--admin-token-file", &path]);
    crate::wait_ready(&s).await;
    assert_eq!(
        lameduck_testkit::post_operator(s.admin, "/drain", Some("s3cret")).await,
        200,
        "the token without its newline"
    );
    let _ = std::fs::remove_dir_all(dir);
}
