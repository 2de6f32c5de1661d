//! Operator drain on the admin listener: `POST /drain` takes the process out of rotation
//! without stopping it, `POST /undrain` puts it back, both behind a bearer token.

use lameduck_testkit::{get, post_operator, Spawned};

use crate::{admin_status, BIN, SOON};

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
    let s = Spawned::start_env(
        BIN,
        &["--log-format", "json"],
        &[("LAMEDUCK_ADMIN_TOKEN", "s3cret")],
    )
    .expect("start");
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
