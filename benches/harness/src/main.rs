//! `ld-bench`: measures each server side by side, interleaved, repeated.
//!
//! ```text
//! ld-bench [--runs N] [--wrk-secs S] [--pairs N] NAME=COMMAND... [+NAME=COMMAND...]
//! ```
//! Each COMMAND must print `listening http=ADDR` and serve `/ping` and `/work?ms=N`. A spec
//! starting with `+` is measured for throughput and latency only (the logging variants).
//! `{log}` in a command is replaced by a fresh file path, removed after each run.
//! Measurements (all traffic to 127.0.0.1, every loop bounded):
//! - `idle_exit`: SIGTERM to process exit, idle server;
//! - `after_last`: process exit minus the last in-flight response (16 x /work?ms=300);
//! - `ka_race`: failed requests of 64 idle pooled keep-alive connections reused 50 ms after
//!   SIGTERM;
//! - `idle_exit_1000`: SIGTERM to exit with 1,000 idle keep-alive connections open;
//! - `rss`: resident memory idle, and with 10,000 idle keep-alive connections (each after
//!   one request);
//! - `rps`, `p50`, `p99`: wrk -t1 -c64 on core 1, server pinned to core 0;
//! - with `--pairs N`: lameduck-demo and its full-observability variant measured for
//!   throughput back to back, N pairs, alternating which goes first; each pair gives one
//!   cost (1 - full / demo), so drift on a shared machine between distant runs does not
//!   enter the comparison.
//!
//! Prints markdown tables with min/median/max of each measurement, then the targets of
//! docs/benchmarks.md, each with the measured value and whether it is met.

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
const IDLE_CONNS: usize = 1_000;
const RSS_CONNS: usize = 10_000;
/// Connections opened at once while filling up to RSS_CONNS (the listen backlog is 1024).
const CONNECT_BATCH: usize = 500;

struct Server {
    child: Child,
    http: SocketAddr,
    exited: mpsc::Receiver<Instant>,
}

fn spawn(cmd: &str, pin_core: Option<usize>) -> Server {
    let log = log_path();
    let _ = std::fs::remove_file(&log);
    let cmd = cmd.replace("{log}", &log.to_string_lossy());
    let cmd = cmd.as_str();
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
                let addr = addr
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .parse::<SocketAddr>();
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
    Server {
        child,
        http,
        exited: erx,
    }
}

fn log_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ld-bench-{}.log", std::process::id()))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_file(log_path());
    }
}

impl Server {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Resident set size in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    fn term(&self) -> Instant {
        let t = Instant::now();
        let _ = kill(self.pid(), Signal::SIGTERM);
        t
    }

    fn wait_exit(&self) -> Instant {
        self.exited
            .recv_timeout(Duration::from_secs(60))
            .expect("server exits within 60 s")
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
                c.get("/work?ms=300")
                    .await
                    .expect("in-flight request completes");
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
    let tasks: Vec<_> = pool
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.get("/ping").await.is_err() }))
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += usize::from(t.await.expect("task"));
    }
    s.wait_exit();
    failed as f64
}

/// `n` keep-alive connections, each idle after one request.
async fn idle_pool(addr: SocketAddr, n: usize) -> Vec<lameduck_testkit::H1> {
    let mut pool = Vec::with_capacity(n);
    while pool.len() < n {
        let batch = CONNECT_BATCH.min(n - pool.len());
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(async move {
                    // Setting up the pool is not what is measured: a connection the
                    // loaded loopback drops (seen once in thousands of runs) is retried.
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let mut c = match connect_h1(addr).await {
                            Ok(c) => c,
                            Err(e) if attempt < 3 => {
                                eprintln!("    idle pool: connect failed ({e:?}), retrying");
                                continue;
                            }
                            Err(e) => panic!("connect: {e:?}"),
                        };
                        match c.get("/ping").await {
                            Ok(_) => return c,
                            Err(e) if attempt < 3 => {
                                eprintln!("    idle pool: first request failed ({e:?}), retrying")
                            }
                            Err(e) => panic!("one request: {e:?}"),
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            pool.push(t.await.expect("task"));
        }
    }
    pool
}

async fn idle_exit_1000(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let pool = idle_pool(s.http, IDLE_CONNS).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = s.term();
    let exit = s.wait_exit();
    drop(pool);
    ms(exit - t0)
}

/// RSS idle, and with RSS_CONNS idle keep-alive connections, in MiB.
async fn rss(cmd: &str) -> (f64, f64) {
    let s = spawn(cmd, None);
    let mut c = connect_h1(s.http).await.expect("connect");
    c.get("/ping").await.expect("ping");
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = s.rss_mib();
    let pool = idle_pool(s.http, RSS_CONNS).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = s.rss_mib();
    s.term();
    s.wait_exit();
    drop(pool);
    (idle, loaded)
}

fn wrk(cmd: &str, secs: u64) -> (f64, f64, f64) {
    let s = spawn(cmd, Some(0));
    let url = format!("http://{}/ping", s.http);
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c64",
            &format!("-d{secs}s"),
            "--latency",
            &url,
        ])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    s.term();
    s.wait_exit();
    let rps = field(&text, "Requests/sec:").unwrap_or(f64::NAN);
    (rps, latency(&text, "50%"), latency(&text, "99%"))
}

fn field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// wrk prints latency percentiles as `50%  123.00us` (or ms / s).
fn latency(text: &str, pct: &str) -> f64 {
    let Some(v) = text.lines().find_map(|l| l.trim().strip_prefix(pct)) else {
        return f64::NAN;
    };
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
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    format!("{} / {} / {}", fmt(v[0]), fmt(med), fmt(v[v.len() - 1]))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    const USAGE: &str = "usage: ld-bench [--runs N] [--wrk-secs S] [--pairs N] [--only rss] NAME=COMMAND... \
        (a +NAME=COMMAND server gets the throughput measurement only; {log} in a command is a temporary file)";
    let usage = |problem: &str| -> ! {
        eprintln!("ld-bench: {problem}\n{USAGE}");
        std::process::exit(2)
    };
    let mut runs = 5usize;
    let mut wrk_secs = 5u64;
    let mut rss_only = false;
    let mut pairs = 0usize;
    let mut servers: Vec<(String, String, bool)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            "--runs" => {
                runs = match args.next().and_then(|v| v.parse().ok()) {
                    Some(n) if n > 0 => n,
                    _ => usage("--runs needs a positive number"),
                }
            }
            "--wrk-secs" => {
                wrk_secs = match args.next().and_then(|v| v.parse().ok()) {
                    Some(n) if n > 0 => n,
                    _ => usage("--wrk-secs needs a positive number of seconds"),
                }
            }
            "--pairs" => {
                pairs = match args.next().and_then(|v| v.parse().ok()) {
                    Some(n) => n,
                    None => usage("--pairs needs a number (0: none)"),
                }
            }
            "--only" => match args.next().as_deref() {
                Some("rss") => rss_only = true,
                _ => usage("--only takes: rss"),
            },
            spec => {
                let (full, spec) = match spec.strip_prefix('+') {
                    Some(rest) => (false, rest),
                    None => (true, spec),
                };
                let Some((name, cmd)) = spec.split_once('=') else {
                    usage(&format!("{spec:?} is not NAME=COMMAND"))
                };
                servers.push((name.into(), cmd.into(), full));
            }
        }
    }
    if servers.is_empty() {
        usage("no server given");
    }
    raise_fd_limit();
    if rss_only {
        println!("| server | RSS idle (MiB) | RSS, {RSS_CONNS} idle keep-alive (MiB) | per connection (KiB) |");
        println!("|---|---|---|---|");
        for (name, cmd, _) in &servers {
            let (mut idle, mut loaded) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let (i, l) = rss(cmd).await;
                idle.push(i);
                loaded.push(l);
            }
            let per_conn = (median(&mut loaded) - median(&mut idle)) * 1024.0 / RSS_CONNS as f64;
            println!(
                "| {name} | {} | {} | {per_conn:.1} |",
                stats(&mut idle),
                stats(&mut loaded)
            );
        }
        return;
    }
    let n = servers.len();
    // idle exit, after last, ka race, exit with 1000 idle, rss idle, rss 10k, rps, p50, p99
    let mut res: Vec<[Vec<f64>; 9]> = (0..n).map(|_| Default::default()).collect();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        // Interleave: every server once per run, so drift hits all alike.
        for (i, (name, cmd, full)) in servers.iter().enumerate() {
            eprintln!("  {name}");
            if *full {
                res[i][0].push(idle_exit(cmd).await);
                res[i][1].push(after_last(cmd).await);
                res[i][2].push(ka_race(cmd).await);
                res[i][3].push(idle_exit_1000(cmd).await);
                let (idle, loaded) = rss(cmd).await;
                res[i][4].push(idle);
                res[i][5].push(loaded);
            }
            let (rps, p50, p99) = wrk(cmd, wrk_secs);
            res[i][6].push(rps);
            res[i][7].push(p50);
            res[i][8].push(p99);
        }
    }
    let med: Vec<[f64; 9]> = res
        .iter_mut()
        .map(|r| std::array::from_fn(|k| median(&mut r[k])))
        .collect();
    println!("### Shutdown and memory\n");
    println!("| server | SIGTERM to exit, idle (ms) | exit after last response (ms) | keep-alive race: failed of {POOL} | SIGTERM to exit, {IDLE_CONNS} idle keep-alive (ms) | RSS idle (MiB) | RSS, {RSS_CONNS} idle keep-alive (MiB) | per connection (KiB) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, _, full)) in servers.iter().enumerate() {
        if !full {
            continue;
        }
        let r = &mut res[i];
        let cols: Vec<String> = r[..6].iter_mut().map(|v| stats(v)).collect();
        let per_conn = (med[i][5] - med[i][4]) * 1024.0 / RSS_CONNS as f64;
        println!("| {name} | {} | {per_conn:.1} |", cols.join(" | "));
    }
    println!("\n### /ping throughput and latency\n");
    println!("| server | req/s | of bare hyper (medians) | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|---|");
    let base = med.first().map_or(f64::NAN, |m| m[6]);
    for (i, (name, _, _)) in servers.iter().enumerate() {
        let r = &mut res[i];
        println!(
            "| {name} | {} | {:.2} | {} | {} |",
            stats(&mut r[6]),
            med[i][6] / base,
            stats(&mut r[7]),
            stats(&mut r[8])
        );
    }
    let command = |name: &str| servers.iter().find(|s| s.0 == name).map(|s| s.1.as_str());
    let paired_costs = match (command(DEMO), command(FULL)) {
        (Some(demo), Some(full)) if pairs > 0 => Some(paired(demo, full, pairs, wrk_secs)),
        _ => None,
    };
    targets(
        &servers.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        &med,
        paired_costs.as_deref(),
    );
}

const DEMO: &str = "lameduck-demo";
const FULL: &str = "lameduck-demo, full observability";

/// `pairs` back-to-back throughput measurements of `base` and `with`, alternating which
/// goes first; prints them and returns each pair's cost, `1 - with / base`.
fn paired(base: &str, with: &str, pairs: usize, secs: u64) -> Vec<f64> {
    println!("\n### {FULL} against {DEMO}, paired\n");
    println!("| pair | {DEMO} req/s | {FULL} req/s | cost |");
    println!("|---|---|---|---|");
    let mut costs = Vec::with_capacity(pairs);
    for i in 0..pairs {
        eprintln!("pair {}/{pairs}", i + 1);
        let (b, w) = if i % 2 == 0 {
            let b = wrk(base, secs).0;
            (b, wrk(with, secs).0)
        } else {
            let w = wrk(with, secs).0;
            (wrk(base, secs).0, w)
        };
        let cost = 1.0 - w / b;
        println!("| {} | {b:.0} | {w:.0} | {:.1}% |", i + 1, cost * 100.0);
        costs.push(cost);
    }
    costs
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The targets of the benchmarks issue, from the medians; a target whose servers were not
/// measured is left out.
fn targets(names: &[String], med: &[[f64; 9]], paired_costs: Option<&[f64]>) {
    let find = |n: &str| names.iter().position(|x| x == n).map(|i| med[i]);
    let (hyper, demo) = (find("bare hyper"), find(DEMO));
    let (demo_log, axum_log) = (
        find("lameduck-demo + JSON access log"),
        find("plain axum + TraceLayer"),
    );
    let (gin, gin_log) = (find("Go/Gin seed pattern"), find("Go/Gin + access log"));
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    let mut row = |t: &str, v: String, ok: bool| rows.push((t.into(), v, ok));
    if let (Some(h), Some(d)) = (hyper, demo) {
        row(
            "lameduck-demo /ping throughput >= 0.90 of bare hyper",
            format!("{:.2}", d[6] / h[6]),
            d[6] >= 0.90 * h[6],
        );
        row(
            "p99 at the same load <= 1.2x bare hyper's",
            format!("{:.2}x ({:.2} vs {:.2} ms)", d[8] / h[8], d[8], h[8]),
            d[8] <= 1.2 * h[8],
        );
        row(
            "idle SIGTERM-to-exit within 1 ms of bare hyper's",
            format!("{:+.2} ms", d[0] - h[0]),
            d[0] - h[0] <= 1.0,
        );
        row(
            "exit < 5 ms after the last in-flight response",
            format!("{:.2} ms", d[1]),
            d[1] < 5.0,
        );
        row(
            "keep-alive race: 0 failed",
            format!("{:.0} of {POOL} (bare hyper {:.0})", d[2], h[2]),
            d[2] == 0.0,
        );
        row(
            "RSS with 10,000 idle keep-alive connections < 64 MiB",
            format!(
                "{:.1} MiB; {:.1} KiB per connection (bare hyper {:.1})",
                d[5],
                (d[5] - d[4]) * 1024.0 / RSS_CONNS as f64,
                (h[5] - h[4]) * 1024.0 / RSS_CONNS as f64
            ),
            d[5] < 64.0,
        );
    }
    if let (Some(h), Some(dl)) = (hyper, demo_log) {
        row(
            "with JSON access log to a file + metrics: >= 0.75 of bare hyper",
            format!("{:.2}", dl[6] / h[6]),
            dl[6] >= 0.75 * h[6],
        );
    }
    if let (Some(d), Some(full)) = (demo, find(FULL)) {
        let of_medians = format!(
            "{:.1}% from the medians above ({:.0} vs {:.0} req/s)",
            (1.0 - full[6] / d[6]) * 100.0,
            full[6],
            d[6]
        );
        let (measured, ok) = match paired_costs {
            Some(costs) if !costs.is_empty() => {
                let mut sorted = costs.to_vec();
                let med = median(&mut sorted);
                (
                    format!(
                        "{:.1}%: median of {} paired runs ({:.1}% to {:.1}%); {of_medians}",
                        med * 100.0,
                        sorted.len(),
                        sorted[0] * 100.0,
                        sorted[sorted.len() - 1] * 100.0
                    ),
                    med <= 0.15,
                )
            }
            _ => (of_medians, full[6] >= 0.85 * d[6]),
        };
        row(
            "full observability (JSON access log to a file, metrics, request spans) costs <= 15% of /ping throughput",
            measured,
            ok,
        );
    }
    if let (Some(dl), Some(al)) = (demo_log, axum_log) {
        row(
            "... and ahead of plain axum + TraceLayer logging the same fields",
            format!("{:.2}x", dl[6] / al[6]),
            dl[6] > al[6],
        );
    }
    if let (Some(d), Some(g)) = (demo, gin) {
        row(
            ">= 1.4x Gin, default stacks",
            format!("{:.2}x", d[6] / g[6]),
            d[6] >= 1.4 * g[6],
        );
    }
    if let (Some(dl), Some(gl)) = (demo_log, gin_log) {
        row(
            ">= 1.4x Gin, both logging each request to a file",
            format!("{:.2}x", dl[6] / gl[6]),
            dl[6] >= 1.4 * gl[6],
        );
    }
    println!("\n### Targets\n");
    println!("| target | measured (medians) | met |");
    println!("|---|---|---|");
    for (t, v, ok) in rows {
        println!("| {t} | {v} | {} |", if ok { "yes" } else { "**no**" });
    }
}

/// 10,000 connections need more than the usual 1,024 descriptors, here and in the servers
/// (which inherit the limit).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = (4 * RSS_CONNS as u64).min(hard);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
    }
}
