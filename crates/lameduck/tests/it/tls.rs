//! The TLS handshake cap: at most `max_handshakes` at once; the others wait for a place
//! (within their own timeout) instead of being refused.

use std::time::Duration;

use lameduck::server::TlsConfig;
use lameduck_testkit::tls::TestCa;
use tokio::net::TcpStream;

use crate::{quick, run, SOON};

#[tokio::test]
async fn handshakes_beyond_the_cap_wait_for_a_place() {
    let ca = TestCa::new("cap");
    ca.install(1);
    let mut tls = TlsConfig::new(ca.cert(), ca.key());
    tls.max_handshakes = 1;
    tls.handshake_timeout = SOON;
    let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let (addr, trigger, task) = run(quick().tls(tls), app).await;
    // A silent client takes the only place.
    let silent = TcpStream::connect(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    trigger.drain();
    assert_eq!(task.await.expect("report").exit_code(), 0);
}
