//! What the drill's test files share: running the drill, and the pieces of hand-made
//! HTTP/1.1 servers.

#![allow(dead_code)] // each test file uses its own part

use clap::Parser as _;
use lameduck_drill::{run, Args, Report};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A 200 answer with a two-byte body.
pub(crate) const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Run the drill (quiet) against `url` with `extra` flags.
pub(crate) async fn drill_with(url: &str, extra: &[&str]) -> Report {
    let mut argv = vec!["lameduck-drill", url, "--quiet"];
    argv.extend_from_slice(extra);
    run(Args::try_parse_from(argv).expect("flags"))
        .await
        .expect("drill")
}

/// Read one request head (up to the blank line); `false` when the connection ends first.
pub(crate) async fn read_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    true
}
