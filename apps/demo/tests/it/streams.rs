//! `/events` ends with its final event on SIGTERM instead of being cut.

use lameduck_testkit::Exit;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{start, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_end_with_a_final_event_on_sigterm() {
    let mut s = start(&[]);
    let mut stream = TcpStream::connect(s.http).await.expect("connect");
    stream
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until two ticks have arrived (bounded by the read timeout).
    while !String::from_utf8_lossy(&seen).contains("tick 1") {
        let n = tokio::time::timeout(SOON, stream.read(&mut buf))
            .await
            .expect("ticks")
            .expect("read");
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    s.signal(Signal::SIGTERM);
    // Read to EOF: the body must end cleanly (chunked terminator) after the final event.
    loop {
        let n = tokio::time::timeout(SOON, stream.read(&mut buf))
            .await
            .expect("end of stream")
            .expect("no reset");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("event: shutdown"),
        "final event missing:\n{text}"
    );
    assert!(
        text.ends_with("0\r\n\r\n"),
        "body not terminated cleanly:\n{text}"
    );
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}
