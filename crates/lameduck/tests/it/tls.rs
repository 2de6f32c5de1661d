//! The TLS handshake cap: at most `max_handshakes` at once, counted from a complete
//! ClientHello; the others wait for a place (within their own timeout) instead of being
//! refused. Connections that send nothing, or part of a ClientHello, take no place; one
//! that sends nothing is cut at the first-byte timeout.

use lameduck::lifecycle::Lifecycle;
use lameduck::server::TlsConfig;
use lameduck_testkit::poll_until;
use lameduck_testkit::tls::TestCa;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

/// A TLS server with `tls`'s limits and an admin listener: its address, its admin address,
/// the trigger and the serving task.
async fn serve(
    tls: TlsConfig,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    lameduck::lifecycle::Trigger,
    tokio::task::JoinHandle<lameduck::lifecycle::ShutdownReport>,
) {
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
    (addr, admin, trigger, tokio::spawn(server.serve(app)))
}

/// A whole TLS handshake to `addr`, as a task.
fn handshake(
    ca: &TestCa,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let connector = ca.connector(&[b"http/1.1"]);
    tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.map(drop)
    })
}

#[tokio::test]
async fn handshakes_beyond_the_cap_wait_for_a_place() {
    let ca = TestCa::new("cap");
    ca.install(1);
    let mut tls = TlsConfig::new(ca.cert(), ca.key());
    tls.max_handshakes = 1;
    tls.handshake_timeout = SOON;
    let (addr, admin, trigger, task) = serve(tls).await;
    // A client that sends a whole ClientHello and stalls takes the only place.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(&ca.client_hello())
        .await
        .expect("ClientHello");
    let taken = poll_until(SOON, || async {
        (places(admin).await == (1, 0)).then_some(())
    });
    assert!(
        taken.await.is_some(),
        "the stalled handshake holds the place"
    );
    let waiting = handshake(&ca, addr);
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
    drop(stalled);
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

#[tokio::test]
async fn silent_and_half_finished_hellos_take_no_place_and_the_silent_are_cut() {
    let ca = TestCa::new("first-byte");
    ca.install(1);
    let mut tls = TlsConfig::new(ca.cert(), ca.key());
    tls.max_handshakes = 1;
    tls.handshake_timeout = SOON;
    tls.first_byte_timeout = std::time::Duration::from_millis(300);
    let (addr, admin, trigger, task) = serve(tls).await;
    let hello = ca.client_hello();
    let mut silent = Vec::new();
    let mut half = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(&hello[..hello.len() / 2]).await.expect("half");
        half.push(c);
    }
    // With the only place free, a real handshake goes through at once.
    let done = tokio::time::timeout(SOON, handshake(&ca, addr))
        .await
        .expect("not delayed")
        .expect("task");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(places(admin).await, (0, 0), "the idle ones hold nothing");
    // The silent ones are cut at the first-byte timeout; the half hellos are still open.
    let t0 = std::time::Instant::now();
    for mut c in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(SOON, c.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was not cut: {read:?}"
        );
    }
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    let mut buf = [0u8; 16];
    let still = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        half[0].read(&mut buf),
    )
    .await;
    assert!(
        still.is_err(),
        "a half ClientHello is cut at the handshake timeout, not the first byte's: {still:?}"
    );
    trigger.drain();
    assert_eq!(task.await.expect("report").exit_code(), 0);
}

#[test]
fn limits_out_of_range_are_refused_naming_the_setting() {
    let ca = TestCa::new("limits");
    for (change, name) in [
        (
            (|t: &mut TlsConfig| t.max_handshakes = 0) as fn(&mut TlsConfig),
            "max_handshakes",
        ),
        (
            |t| t.first_byte_timeout = std::time::Duration::ZERO,
            "first_byte_timeout",
        ),
        (
            |t| t.handshake_timeout = std::time::Duration::ZERO,
            "handshake_timeout",
        ),
    ] {
        let mut tls = TlsConfig::new(ca.cert(), ca.key());
        change(&mut tls);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let err = rt
            .block_on(
                quick()
                    .tls(tls)
                    .bind("127.0.0.1:0".parse().expect("addr"), Lifecycle::new()),
            )
            .expect_err("refused");
        let chain = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            chain.as_deref().is_some_and(|m| m.contains(name)),
            "{err}: {chain:?}"
        );
    }
}
