//! Operator drain on the admin listener: `POST /drain` takes the process out of rotation
//! without stopping it, `POST /undrain` puts it back, both behind a bearer token.

use lameduck_testkit::{get, post_operator, Spawned};

use crate::{admin_status, BIN, SOON};

/// The demo with JSON logs and the admin token `token`.
fn with_token(token: &str) -> Spawned {
    Spawned::start_env(
        BIN,
        &["--log-format", "json"],
        &[("LAMEDUCK_ADMIN_TOKEN", token)],
    )
    .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_drain_routes_do_not_exist() {
    let s = Spawned::start_env(BIN, &[], &[("LAMEDUCK_ADMIN_TOKEN", "")])
        .err()
        .map(|e| e.to_string());
    assert!(s.is_some(), "an empty token is refused at start-up");
    let s = crate::start(&[]);
    crate::wait_ready(&s).await;
    assert_eq!(
        post_operator(s.admin, "/drain", Some("anything")).await,
        404
    );
    assert_eq!(admin_status(&s, "/readyz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_drains_and_undrains_with_the_right_token() {
    let s = with_token("s3cret");
    assert_eq!(post_operator(s.admin, "/drain", None).await, 401);
    assert_eq!(post_operator(s.admin, "/drain", Some("wrong")).await, 401);
    s.wait_for_log(&["wrong or missing bearer token"], SOON)
        .await
        .expect("a refused request is logged");
    assert_eq!(
        admin_status(&s, "/readyz").await,
        200,
        "a refusal changes nothing"
    );
    assert_eq!(post_operator(s.admin, "/drain", Some("s3cret")).await, 200);
    assert_eq!(admin_status(&s, "/readyz").await, 503);
    let res = get(s.http, "/ping").await.expect("still serving");
    assert_eq!(res.status(), 200);
    assert_eq!(admin_status(&s, "/livez").await, 200);
    assert_eq!(
        post_operator(s.admin, "/undrain", Some("s3cret")).await,
        200
    );
    assert_eq!(admin_status(&s, "/readyz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_tokens_is_one_warn_line_with_the_count_and_the_client() {
    let s = with_token("s3cret-token");
    let mut c = lameduck_testkit::connect_h1(s.admin).await.expect("admin");
    let t0 = std::time::Instant::now();
    for i in 0..2000 {
        let auth = format!("Bearer wrong-{i}");
        let res = c
            .send(
                http::Method::POST,
                "/drain",
                &[("authorization", auth.as_str())],
                bytes::Bytes::new(),
            )
            .await
            .expect("POST /drain");
        assert_eq!(res.status(), 401);
    }
    let took = t0.elapsed();
    let line = s
        .wait_for_log(&["admin requests refused"], SOON)
        .await
        .expect("logged");
    assert!(line.contains("\"refused\":1"), "{line}");
    assert!(line.contains("\"last_client\":\"127.0.0.1:"), "{line}");
    let lines = s
        .logs()
        .iter()
        .filter(|l| l.contains("admin requests refused"))
        .count();
    // 2,000 refusals within 10 s: the first is logged, the others wait for the next line.
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert_eq!(lines, 1, "one line for 2,000 refusals in {took:?}");
}
