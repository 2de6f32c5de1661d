//! The measurements: each starts the server command fresh, measures one thing, and kills
//! it. All traffic goes to 127.0.0.1; every loop is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lameduck_testkit::connect_h1;

use crate::verdict::{DEMO, FULL};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) const POOL: usize = 64;
pub(crate) const IN_FLIGHT: usize = 16;
pub(crate) const IDLE_CONNS: usize = 1_000;
pub(crate) const RSS_CONNS: usize = 10_000;
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
pub(crate) async fn idle_exit(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let mut c = connect_h1(s.http).await.expect("connect");
    c.get("/ping").await.expect("ping");
    drop(c);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = s.term();
    ms(s.wait_exit() - t0)
}

pub(crate) async fn after_last(cmd: &str) -> f64 {
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

pub(crate) async fn ka_race(cmd: &str) -> f64 {
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

pub(crate) async fn idle_exit_1000(cmd: &str) -> f64 {
    let s = spawn(cmd, None);
    let pool = idle_pool(s.http, IDLE_CONNS).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t0 = s.term();
    let exit = s.wait_exit();
    drop(pool);
    ms(exit - t0)
}

/// RSS idle, and with RSS_CONNS idle keep-alive connections, in MiB.
pub(crate) async fn rss(cmd: &str) -> (f64, f64) {
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

pub(crate) fn wrk(cmd: &str, secs: u64) -> Wrk {
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
    Wrk::parse(&text)
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Wrk {
    /// 2xx answers per second: wrk's requests, minus its non-2xx (or 3xx) answers, over
    /// its duration.
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    /// wrk's "Non-2xx or 3xx responses".
    pub(crate) non_2xx: f64,
}

impl Wrk {
    /// From wrk's output (`N requests in 5.00s, ...`, `Non-2xx or 3xx responses: M`, the
    /// latency distribution); NaN where a number is missing.
    pub(crate) fn parse(text: &str) -> Self {
        let non_2xx = field(text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
        let done = text.lines().find_map(|l| {
            let (n, rest) = l.trim().split_once(" requests in ")?;
            let secs = rest.split(',').next()?.trim();
            let secs = match secs.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok()? / 1e3,
                None => secs.strip_suffix('s')?.parse::<f64>().ok()?,
            };
            Some((n.parse::<f64>().ok()?, secs))
        });
        let rps = match done {
            Some((n, secs)) if secs > 0.0 => (n - non_2xx) / secs,
            _ => f64::NAN,
        };
        Self {
            rps,
            p50: latency(text, "50%"),
            p99: latency(text, "99%"),
            non_2xx,
        }
    }
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

/// `pairs` back-to-back throughput measurements of `base` and `with`, alternating which
/// goes first; prints them and returns each pair's cost, `1 - with / base`.
pub(crate) fn paired(base: &str, with: &str, pairs: usize, secs: u64) -> Vec<f64> {
    println!("\n### {FULL} against {DEMO}, paired\n");
    println!("| pair | {DEMO} req/s | {FULL} req/s | cost |");
    println!("|---|---|---|---|");
    let mut costs = Vec::with_capacity(pairs);
    for i in 0..pairs {
        eprintln!("pair {}/{pairs}", i + 1);
        let (b, w) = if i % 2 == 0 {
            let b = wrk(base, secs).rps;
            (b, wrk(with, secs).rps)
        } else {
            let w = wrk(with, secs).rps;
            (wrk(base, secs).rps, w)
        };
        let cost = 1.0 - w / b;
        println!("| {} | {b:.0} | {w:.0} | {:.1}% |", i + 1, cost * 100.0);
        costs.push(cost);
    }
    costs
}

/// 10,000 connections need more than the usual 1,024 descriptors, here and in the servers
/// (which inherit the limit).
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = (4 * RSS_CONNS as u64).min(hard);
        let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::Wrk;

    #[test]
    fn non_2xx_answers_are_not_throughput() {
        let text = "Running 5s test @ http://127.0.0.1:1/ping
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   500.00us  100.00us   2.00ms   90.00%
  Latency Distribution
     50%  480.00us
     75%  520.00us
     90%  600.00us
     99%    1.20ms
  500000 requests in 5.00s, 40.00MB read
  Non-2xx or 3xx responses: 100000
Requests/sec: 100000.00
";
        let w = Wrk::parse(text);
        assert_eq!(w.rps, 80_000.0);
        assert_eq!(w.non_2xx, 100_000.0);
        assert!((w.p50 - 0.48).abs() < 1e-9 && (w.p99 - 1.2).abs() < 1e-9);
        let clean = text.replace("  Non-2xx or 3xx responses: 100000\n", "");
        assert_eq!(Wrk::parse(&clean).rps, 100_000.0);
        assert!(Wrk::parse("garbage").rps.is_nan());
    }
}
