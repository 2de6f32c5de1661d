//! The TLS handshake cap: at most `max_handshakes` at once; the others wait for a place
//! (within their own timeout) instead of being refused.

use lameduck::lifecycle::Lifecycle;
use lameduck::server::TlsConfig;
use lameduck_testkit::poll_until;
use lameduck_testkit::tls::TestCa;
use tokio::net::TcpStream;

use crate::{quick, SOON};

/// The handshake places in use and the connections waiting, from the admin `/metrics`.
async fn places(admin: std::net::SocketAddr) -> (i64, i64) {
    let res = lameduck_testkit::get(admin, "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(res.body()).into_owned();
    let read = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    (
        read("lameduck_tls_handshakes_in_progress"),
        read("lameduck_tls_handshakes_waiting"),
    )
}

#[tokio::test]
async fn handshakes_beyond_the_cap_wait_for_a_place() {
    let ca = TestCa::new("cap");
    ca.install(1);
    let mut tls = TlsConfig::new(ca.cert(), ca.key());
    tls.max_handshakes = 1;
    tls.handshake_timeout = SOON;
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let server = quick()
        .tls(tls)
        .admin("127.0.0.1:0".parse().expect("addr"))
        .bind("127.0.0.1:0".parse().expect("addr"), Lifecycle::new())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let admin = server.admin_addr().expect("admin").expect("admin addr");
    let trigger = server.trigger();
    let task = tokio::spawn(server.serve_router(app));
    // A silent client takes the only place.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let taken = poll_until(SOON, || async {
        (places(admin).await == (1, 0)).then_some(())
    });
    assert!(taken.await.is_some(), "the silent client holds the place");
    let waiting = tokio::spawn({
        let ca_dir = ca.dir().to_owned();
        let connector = ca.connector(&[b"http/1.1"]);
        async move {
            let _keep = ca_dir;
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name =
                tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await.map(drop)
        }
    });
    let queued = poll_until(SOON, || async {
        (places(admin).await == (1, 1)).then_some(())
    });
    assert!(
        queued.await.is_some(),
        "the second handshake waits for a place"
    );
    assert!(
        !waiting.is_finished(),
        "the second handshake did not wait for a place"
    );
    drop(silent);
    let done = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the place was freed")
        .expect("task");
    assert!(done.is_ok(), "{done:?}");
    let back = poll_until(SOON, || async {
        (places(admin).await == (0, 0)).then_some(())
    });
    assert!(back.await.is_some(), "places given back");
    trigger.drain();
    assert_eq!(task.await.expect("report").exit_code(), 0);
}
