//! `lameduck-orders` over HTTPS: the API behind TLS, the TLS settings' checks.

use lameduck_testkit::tls::{send, TestCa};
use lameduck_testkit::Exit;
use nix::sys::signal::Signal;

use crate::{json, order_json, wait_ready, Store, BIN, SOON};

#[tokio::test]
async fn the_api_is_served_over_https_and_the_drain_is_clean() {
    let ca = TestCa::new("orders");
    ca.install(1);
    let store = Store::sqlite("tls");
    let args = ca.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = store.start(&args);
    wait_ready(&s).await;
    let (mut conn, _) = ca.https_h1(s.http).await.expect("https");
    let (status, _, body) = send(
        &mut conn,
        http::Method::POST,
        "/orders",
        &[
            ("content-type", "application/json"),
            ("idempotency-key", "k1"),
        ],
        &order_json("c1"),
    )
    .await
    .expect("create");
    assert_eq!(status, 201);
    let id = json(&body)["id"].as_str().expect("id").to_string();
    let (status, _, body) = send(
        &mut conn,
        http::Method::GET,
        &format!("/orders/{id}"),
        &[],
        "",
    )
    .await
    .expect("get");
    assert_eq!(
        (status, json(&body)["id"].as_str()),
        (200, Some(id.as_str()))
    );
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[test]
fn a_certificate_without_its_key_is_a_configuration_error() {
    // As flags: a usage error (exit 2), as in every lameduck binary.
    let out = std::process::Command::new(BIN)
        .args(["--tls-cert", "/nonexistent.crt", "--print-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
    // In a configuration file: a start-up error (exit 1) naming both.
    let file = std::env::temp_dir().join(format!("ld-tls-half-{}.toml", std::process::id()));
    std::fs::write(&file, "tls_cert = \"/nonexistent.crt\"\n").expect("write");
    let out = std::process::Command::new(BIN)
        .args(["--config", &file.display().to_string(), "--print-config"])
        .output()
        .expect("run");
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_cert and tls_key go together"), "{err}");
}
