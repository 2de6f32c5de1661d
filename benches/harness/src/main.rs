//! `ld-bench`: measures each server side by side, interleaved, repeated.
//!
//! ```text
//! ld-bench [--runs N] [--wrk-secs S] NAME=COMMAND... [NAME=COMMAND...]
//! ```
//! Each COMMAND must print `listening http=ADDR` and serve `/ping` and `/work?ms=N`.
//! Measurements (all traffic to 127.0.0.1, every loop bounded):
//! - `idle_exit`: SIGTERM to process exit, idle server;
//! - `after_last`: process exit minus the last in-flight response (16 x /work?ms=300);
//! - `ka_race`: failed requests of 64 idle pooled keep-alive connections reused 50 ms after
//!   SIGTERM;
//! - `rps`, `p50`, `p99`: wrk -t1 -c64 on core 1, server pinned to core 0.
//!
//! Prints one markdown table row per server with min/median/max of each measurement.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lameduck_testkit::connect_h1;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const POOL: usize = 64;
const IN_FLIGHT: usize = 16;

struct Server {
    child: Child,
    http: SocketAddr,
    exited: mpsc::Receiver<Instant>,
}

fn spawn(cmd: &str, pin_core: Option<usize>) -> Server {
    let mut words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    if let Some(core) = pin_core {
        words.splice(0..0, ["taskset".to_string(), "-c".into(), core.to_string()]);
    }
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(addr) = line.strip_prefix("listening http=") {
                let addr = addr.split_whitespace().next().unwrap_or("").parse::<SocketAddr>();
                let _ = tx.send(addr.ok());
                break;
            }
        }
        for _ in lines {}
    });
    let http = rx
        .recv_timeout(Duration::from_secs(20))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{cmd}: no listening line"));
    // A thread blocked in wait() timestamps the exit exactly.
    let pid = child.id();
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        let _ = etx.send(Instant::now());
    });
    Server { child, http, exited: erx }
}

impl Server {
    fn term(&self) -> Instant {
        let t = Instant::now();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        t
    }

    fn wait_exit(&self) -> Instant {
        self.exited.recv_timeout(Duration::from_secs(60)).expect("server exits within 60 s")
    }
}

/// Idle means no connection for over a second: lameduck lets the accept queue settle for
/// 20 ms before closing a listener that accepted within the last second.
async fn idle_exit(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let mut c = connect_h1(s.http).await.expect("connect");
    c.get("/ping").await.expect("ping");
    drop(c);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = s.term();
    ms(s.wait_exit() - t0)
}

async fn after_last(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let addr = s.http;
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = connect_h1(addr).await.expect("connect");
                c.get("/work?ms=300").await.expect("in-flight request completes");
                Instant::now()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.term();
    let mut last = Instant::now() - Duration::from_secs(3600);
    for t in tasks {
        last = last.max(t.await.expect("task"));
    }
    let exit = s.wait_exit();
    ms(exit.saturating_duration_since(last))
}

async fn ka_race(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let mut pool = Vec::new();
    for _ in 0..POOL {
        let mut c = connect_h1(s.http).await.expect("connect");
        c.get("/ping").await.expect("warm");
        pool.push(c);
    }
    s.term();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let tasks: Vec<_> = pool.into_iter().map(|mut c| tokio::spawn(async move { c.get("/ping").await.is_err() })).collect();
    let mut failed = 0;
    for t in tasks {
        failed += usize::from(t.await.expect("task"));
    }
    s.wait_exit();
    failed as f64
}

fn wrk(cmd: &str, secs: u64) -> (f64, f64, f64) {
    let s = spawn(cmd, Some(0));
    let url = format!("http://{}/ping", s.http);
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c64", &format!("-d{secs}s"), "--latency", &url])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    s.term();
    s.wait_exit();
    let rps = field(&text, "Requests/sec:").unwrap_or(f64::NAN);
    (rps, latency(&text, "50%"), latency(&text, "99%"))
}

fn field(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.trim().strip_prefix(key)).and_then(|v| v.trim().parse().ok())
}

/// wrk prints latency percentiles as `50%  123.00us` (or ms / s).
fn latency(text: &str, pct: &str) -> f64 {
    let Some(v) = text.lines().find_map(|l| l.trim().strip_prefix(pct)) else { return f64::NAN };
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    let fmt = |x: f64| if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") };
    format!("{} / {} / {}", fmt(v[0]), fmt(med), fmt(v[v.len() - 1]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut runs = 5usize;
    let mut wrk_secs = 5u64;
    let mut servers: Vec<(String, String)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--wrk-secs" => wrk_secs = args.next().and_then(|v| v.parse().ok()).expect("--wrk-secs S"),
            spec => {
                let (name, cmd) = spec.split_once('=').expect("NAME=COMMAND");
                servers.push((name.into(), cmd.into()));
            }
        }
    }
    let n = servers.len();
    let mut res: Vec<[Vec<f64>; 6]> = (0..n).map(|_| Default::default()).collect();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        // Interleave: every server once per run, so drift hits all alike.
        for (i, (name, cmd)) in servers.iter().enumerate() {
            eprintln!("  {name}");
            res[i][0].push(idle_exit(cmd).await);
            res[i][1].push(after_last(cmd).await);
            res[i][2].push(ka_race(cmd).await);
            let (rps, p50, p99) = wrk(cmd, wrk_secs);
            res[i][3].push(rps);
            res[i][4].push(p50);
            res[i][5].push(p99);
        }
    }
    println!("| server | SIGTERM to exit, idle (ms) | exit after last response (ms) | keep-alive race: failed of {POOL} | /ping req/s | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, _)) in servers.iter().enumerate() {
        let r = &mut res[i];
        let cols: Vec<String> = r.iter_mut().map(|v| stats(v)).collect();
        println!("| {name} | {} |", cols.join(" | "));
    }
    let medians: Vec<f64> = res.iter().map(|r| r[3][r[3].len() / 2]).collect();
    if let Some(base) = medians.first().copied() {
        println!();
        for (i, (name, _)) in servers.iter().enumerate() {
            println!("- {name}: median /ping throughput {:.2} of {}", medians[i] / base, servers[0].0);
        }
    }
}
