//! Operator drain on the admin listener: `POST /drain` takes the process out of rotation
//! without stopping it, `POST /undrain` puts it back, both behind a bearer token.

use lameduck_testkit::{get, Spawned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{admin_status, BIN, SOON};

/// `POST path` on the admin listener with `token`; the status code.
async fn post(s: &Spawned, path: &str, token: Option<&str>) -> u16 {
    let mut c = TcpStream::connect(s.admin).await.expect("connect");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_drain_routes_do_not_exist() {
    let s = Spawned::start_env(BIN, &[], &[("LAMEDUCK_ADMIN_TOKEN", "")])
        .err()
        .map(|e| e.to_string());
    assert!(s.is_some(), "an empty token is refused at start-up");
    let s = crate::start(&[]);
    crate::wait_ready(&s).await;
    assert_eq!(post(&s, "/drain", Some("anything")).await, 404);
    assert_eq!(admin_status(&s, "/readyz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_drains_and_undrains_with_the_right_token() {
    let s = Spawned::start_env(
        BIN,
        &["--log-format", "json"],
        &[("LAMEDUCK_ADMIN_TOKEN", "s3cret")],
    )
    .expect("start");
    assert_eq!(post(&s, "/drain", None).await, 401);
    assert_eq!(post(&s, "/drain", Some("wrong")).await, 401);
    s.wait_for_log(&["wrong or missing bearer token"], SOON)
        .await
        .expect("a refused request is logged");
    assert_eq!(
        admin_status(&s, "/readyz").await,
        200,
        "a refusal changes nothing"
    );
    assert_eq!(post(&s, "/drain", Some("s3cret")).await, 200);
    assert_eq!(admin_status(&s, "/readyz").await, 503);
    let res = get(s.http, "/ping").await.expect("still serving");
    assert_eq!(res.status(), 200);
    assert_eq!(admin_status(&s, "/livez").await, 200);
    assert_eq!(post(&s, "/undrain", Some("s3cret")).await, 200);
    assert_eq!(admin_status(&s, "/readyz").await, 200);
}
