//! Probes cannot be starved: a thousand connections that hold the admin listener's places
//! without asking anything (half silent, half sending a request head one byte a second),
//! each reopened as soon as it is cut, while a prober asks `/livez` and `/readyz` four
//! times a second, each on a new connection with a 1 s timeout.
//!
//! The suite runs it for 15 s; `scripts/probe-attack` runs it for 60 s (set
//! `LAMEDUCK_PROBE_ATTACK_SECS`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::start;

/// Connections the attack holds open.
const ATTACKERS: usize = 1000;
/// Most connections one attacker opens (a bound on the loop besides its time).
const MAX_RECONNECTS: u64 = 200_000;

/// How long the attack runs.
fn attack_secs() -> u64 {
    crate::env_secs("LAMEDUCK_PROBE_ATTACK_SECS", 15)
}

/// Probes allowed to fail: 3 of 240 (one in 80), at least one.
fn allowed_failures(probes: u64) -> u64 {
    probes.div_ceil(80)
}

#[test]
fn the_bar_is_237_of_240_and_59_of_60() {
    assert_eq!(240 - allowed_failures(240), 237);
    assert_eq!(60 - allowed_failures(60), 59);
}

/// One attacker: connect, then stay silent (or send a request head one byte a second)
/// until the server cuts the connection; reconnect at once; until `until`.
async fn attacker(addr: SocketAddr, slow: bool, until: Instant, opened: Arc<AtomicU64>) {
    const HEAD: &[u8] = b"GET /livez HTTP/1.1\r\nhost: admin\r\nx-padding: ";
    for _ in 0..MAX_RECONNECTS {
        if Instant::now() >= until {
            return;
        }
        let left = until.saturating_duration_since(Instant::now());
        let Ok(Ok(mut c)) = tokio::time::timeout(left, TcpStream::connect(addr)).await else {
            // Refused or timed out: try again shortly (not a busy loop).
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut byte = 0;
        let mut buf = [0u8; 512];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let tick = if slow {
                Duration::from_secs(1).min(left)
            } else {
                left
            };
            match tokio::time::timeout(tick, c.read(&mut buf)).await {
                // Cut (FIN or reset): reconnect.
                Ok(Ok(0)) | Ok(Err(_)) => break,
                // Answered something (a 408): it is cut next.
                Ok(Ok(_)) => {}
                Err(_) if slow => {
                    let b = HEAD.get(byte).copied().unwrap_or(b'x');
                    byte += 1;
                    if c.write_all(&[b]).await.is_err() {
                        break;
                    }
                }
                Err(_) => {}
            }
        }
    }
}

/// `GET path` on a new connection, answered 200 within `within`.
async fn probe(addr: SocketAddr, path: &str, within: Duration) -> Result<(), String> {
    let ask = async {
        let res = lameduck_testkit::get(addr, path)
            .await
            .map_err(|e| e.to_string())?;
        if res.status() == 200 {
            Ok(())
        } else {
            Err(format!("answered {}", res.status()))
        }
    };
    tokio::time::timeout(within, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_a_thousand_connections_hold_the_admin_listener() {
    let s = start(&[]);
    let secs = attack_secs();
    let probes = secs * 4;
    let start_at = Instant::now();
    // The attack runs a little longer than the probes, so every probe meets it.
    let until = start_at + Duration::from_secs(secs) + Duration::from_secs(2);
    let opened = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| tokio::spawn(attacker(s.admin, i % 2 == 1, until, opened.clone())))
        .collect();
    // Let the attack take every place first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for n in 0..probes {
        tick.tick().await;
        let path = if n % 2 == 0 { "/livez" } else { "/readyz" };
        let t = Instant::now();
        match probe(s.admin, path, Duration::from_secs(1)).await {
            Ok(()) => slowest = slowest.max(t.elapsed()),
            Err(e) => failures.push(format!("probe {n} {path}: {e}")),
        }
    }
    for a in attackers {
        a.await.expect("attacker");
    }
    let opened = opened.load(Ordering::Relaxed);
    let answered = probes - failures.len() as u64;
    eprintln!(
        "{answered} of {probes} probes answered 200 within 1 s (slowest {slowest:?}) under \
         {ATTACKERS} attacking connections ({opened} opened in {:?})",
        start_at.elapsed()
    );
    assert!(
        opened > ATTACKERS as u64,
        "the attack never got cut and reconnected: it did not hold the places"
    );
    assert!(
        failures.len() as u64 <= allowed_failures(probes),
        "{answered} of {probes} answered: {failures:#?}"
    );
}
