//! No acknowledged order is lost through a SIGTERM or a SIGKILL under load, and retries with
//! the idempotency key never create a second order.

use lameduck_testkit::Exit;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use lameduck_testkit::{connect_h1, get, poll_until, post_json, H1};
use nix::sys::signal::Signal;

use crate::{all_orders, json, order_json, Store, SOON};

const CLIENTS: usize = 32;
/// Bound on each client: requests and time.
const MAX_PER_CLIENT: usize = 400;
const MAX_TIME: Duration = Duration::from_secs(20);

/// What the clients saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Idempotency key -> order id, for every 201.
    acked: HashMap<String, String>,
    /// Keys whose request got no answer (reset, closed): unknown outcome, retriable.
    unknown: Vec<String>,
    /// Connects refused (the server was gone): the request was never sent.
    refused: usize,
    /// Answers other than 201 (must be none).
    other: Vec<(String, u16)>,
}

/// One client: a keep-alive connection, a fresh idempotency key per order, no retries;
/// stops when connects are refused.
async fn client(addr: SocketAddr, c: usize, acked_count: Arc<AtomicUsize>) -> Outcome {
    let mut out = Outcome::default();
    let mut conn: Option<H1> = None;
    let end = Instant::now() + MAX_TIME;
    for i in 0..MAX_PER_CLIENT {
        if Instant::now() > end {
            break;
        }
        let key = format!("c{c}-{i}");
        if conn.is_none() {
            match connect_h1(addr).await {
                Ok(h) => conn = Some(h),
                Err(e) if e.is_refused() => {
                    out.refused += 1;
                    break;
                }
                Err(_) => {
                    // Reset during connect: nothing was sent.
                    out.refused += 1;
                    break;
                }
            }
        }
        let Some(h) = conn.as_mut() else { break };
        let headers = [
            ("idempotency-key", key.as_str()),
            ("content-type", "application/json"),
        ];
        match h
            .send(Method::POST, "/orders", &headers, order_json(&key))
            .await
        {
            Ok(res) if res.status() == 201 => {
                let id = json(res.body())["id"].as_str().expect("id").to_string();
                out.acked.insert(key, id);
                acked_count.fetch_add(1, Ordering::Relaxed);
                if res
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v == "close")
                {
                    conn = None;
                }
            }
            Ok(res) => {
                out.other.push((key, res.status().as_u16()));
                conn = None;
            }
            Err(_) => {
                out.unknown.push(key);
                conn = None;
            }
        }
    }
    out
}

/// Run the clients; `fault` is called once at least `after` orders were acknowledged.
async fn load_with_fault(addr: SocketAddr, after: usize, fault: impl FnOnce()) -> Outcome {
    let acked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(addr, c, acked.clone())))
        .collect();
    let built = poll_until(SOON, || async {
        (acked.load(Ordering::Relaxed) >= after).then_some(())
    })
    .await;
    assert!(built.is_some(), "load never built up");
    fault();
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await.expect("client");
        total.acked.extend(o.acked);
        total.unknown.extend(o.unknown);
        total.refused += o.refused;
        total.other.extend(o.other);
    }
    total
}

/// After a restart: every acknowledged order is there, unknown requests retried with their
/// key give exactly one order each, and no key has two orders.
async fn verify_after_restart(addr: SocketAddr, out: &Outcome) {
    for (key, id) in &out.acked {
        let res = get(addr, &format!("/orders/{id}")).await.expect("get");
        assert_eq!(
            res.status(),
            200,
            "acknowledged order {id} ({key}) is missing"
        );
        assert_eq!(json(res.body())["customer_id"], key.as_str());
    }
    for key in &out.unknown {
        let res = post_json(
            addr,
            "/orders",
            &[("idempotency-key", key)],
            &order_json(key),
        )
        .await
        .expect("retry");
        assert_eq!(res.status(), 201, "retry of {key}");
    }
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for o in all_orders(addr).await {
        *per_key
            .entry(o["customer_id"].as_str().expect("customer").to_string())
            .or_default() += 1;
    }
    let dupes: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "duplicate orders: {dupes:?}");
    for key in out.acked.keys().chain(&out.unknown) {
        assert_eq!(per_key.get(key), Some(&1), "{key} has no order");
    }
}

/// The restarted process exports how the one before it ended (from its state file, in the
/// data directory by default).
async fn previous_shutdown_was(s: &lameduck_testkit::Spawned, outcome: &str) {
    let res = lameduck_testkit::get(s.admin, "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(res.body()).into_owned();
    for o in ["clean", "forced", "hook_failed", "killed"] {
        let line = format!(
            "lameduck_previous_shutdown{{outcome=\"{o}\"}} {}\n",
            u8::from(o == outcome)
        );
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.contains("lameduck_previous_shutdown_abandoned_requests 0\n"),
        "{text}"
    );
}

async fn sigterm_under_load(store: Store) {
    let mut s = store.start(&[]);
    crate::wait_ready(&s).await;
    let out = load_with_fault(s.http, 100, || s.signal(Signal::SIGTERM)).await;
    assert!(out.other.is_empty(), "unexpected answers: {:?}", out.other);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "clean exit after the drain"
    );
    assert!(out.acked.len() >= 100);
    let s2 = store.start(&[]);
    crate::wait_ready(&s2).await;
    verify_after_restart(s2.http, &out).await;
    previous_shutdown_was(&s2, "clean").await;
    eprintln!(
        "SIGTERM: {} acknowledged, {} unknown, {} refused at connect",
        out.acked.len(),
        out.unknown.len(),
        out.refused
    );
}

async fn sigkill_under_load(store: Store) {
    let mut s = store.start(&[]);
    crate::wait_ready(&s).await;
    // A moment that differs from run to run.
    let jitter = Duration::from_millis(u64::from(std::process::id() % 200));
    let pid = s.pid();
    let out = load_with_fault(s.http, 50, move || {
        std::thread::sleep(jitter);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    })
    .await;
    assert!(out.other.is_empty(), "unexpected answers: {:?}", out.other);
    assert_eq!(s.wait_exit(SOON).await, Exit::KILLED);
    let audit = store.audit_log();
    for id in out.acked.values() {
        assert!(
            audit.contains(id.as_str()),
            "acknowledged order {id} has no audit line"
        );
    }
    let s2 = store.start(&[]);
    crate::wait_ready(&s2).await;
    verify_after_restart(s2.http, &out).await;
    previous_shutdown_was(&s2, "killed").await;
    // The kill landed while batches were committing: nothing half-written either. Every
    // audit line names an order that is in the database (lines are written after the commit),
    // and every order's key maps to it alone (checked above).
    let ids: std::collections::HashSet<String> = all_orders(s2.http)
        .await
        .iter()
        .filter_map(|o| Some(o["id"].as_str()?.to_string()))
        .collect();
    for line in audit.lines().filter(|l| !l.is_empty()) {
        let v = json(line.as_bytes());
        let id = v["order_id"].as_str().expect("order_id");
        assert!(
            ids.contains(id),
            "audit line for an order not in the database: {line}"
        );
    }
    eprintln!(
        "SIGKILL: {} acknowledged, {} unknown, {} refused at connect",
        out.acked.len(),
        out.unknown.len(),
        out.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_order_on_sqlite() {
    sigterm_under_load(Store::sqlite("sigterm")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_order_on_sqlite() {
    sigkill_under_load(Store::sqlite("sigkill")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn sigterm_under_load_loses_no_acknowledged_order_on_postgres() {
    sigterm_under_load(Store::postgres("sigterm").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn sigkill_under_load_loses_no_acknowledged_order_on_postgres() {
    sigkill_under_load(Store::postgres("sigkill").await).await;
}

/// Seconds since the epoch, as `strace -ttt` prints them.
fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The syncs (`fsync`, `fdatasync`) in an `strace -f -y -ttt` trace made from `since` to
/// `until`, as the paths they synced.
fn syncs_between(trace: &str, since: f64, until: f64) -> Vec<String> {
    trace
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let _pid = parts.next()?;
            let at: f64 = parts.next()?.parse().ok()?;
            let call = parts.next()?;
            let rest = call
                .strip_prefix("fsync(")
                .or_else(|| call.strip_prefix("fdatasync("))?;
            let path = rest.split_once('<')?.1.split_once('>')?.0;
            (since..=until).contains(&at).then(|| path.to_string())
        })
        .collect()
}

#[test]
fn syncs_are_read_from_an_strace_trace() {
    let trace = "\
12 100.5 fsync(7</d/audit.log>) = 0
13 101.0 fdatasync(9</d/orders.db-wal>) = 0
13 99.0 fdatasync(9</d/orders.db-wal>) = 0
13 101.5 fsync(3<socket:[5]>) = -1 EINVAL (Invalid argument)
13 101.6 --- SIGTERM {si_signo=SIGTERM} ---";
    assert_eq!(
        syncs_between(trace, 100.0, 101.5),
        ["/d/audit.log", "/d/orders.db-wal", "socket:[5]"]
    );
}

/// Run the service under `strace`, create `batch` orders at once, and return the paths
/// synced from just before the first request to the last answer (not the syncs of the
/// shutdown, which checkpoints the WAL whatever the commits did).
async fn synced_paths_for(store: &Store, batch: usize) -> Vec<String> {
    let trace = store.dir.join("sync.trace");
    let trace_arg = trace.display().to_string();
    let args = vec![
        "-f",
        "-y",
        "-qq",
        "-ttt",
        "-e",
        "trace=fsync,fdatasync",
        "-e",
        "signal=none",
        "-o",
        &trace_arg,
    ];
    let mut s = store.start_under("strace", &args, &[]);
    crate::wait_ready(&s).await;
    let since = epoch_secs();
    let posts: Vec<_> = (0..batch)
        .map(|i| {
            let addr = s.http;
            tokio::spawn(async move {
                post_json(addr, "/orders", &[], &order_json(&format!("sync{i}")))
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.await.expect("task").expect("POST"), 201);
    }
    let until = epoch_secs();
    // The service is strace's child: SIGTERM it, and strace exits with it.
    let children = format!("/proc/{0}/task/{0}/children", s.pid());
    let child: i32 = std::fs::read_to_string(&children)
        .expect("strace's children")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the service under strace");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGTERM);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "strace and the service exit"
    );
    let text = std::fs::read_to_string(&trace).expect("the trace");
    syncs_between(&text, since, until)
}

#[tokio::test]
#[ignore = "needs strace (strace) and ptrace allowed: scripts/test runs it"]
async fn an_acknowledged_order_was_synced_to_the_audit_log_and_the_database_wal() {
    for batch in [1, 16] {
        let store = Store::sqlite(&format!("fsync-{batch}"));
        let dir = store.dir.canonicalize().expect("dir");
        let audit = dir.join("audit.log").display().to_string();
        let wal = dir.join("orders.db-wal").display().to_string();
        let synced = synced_paths_for(&store, batch).await;
        let count = |p: &str| synced.iter().filter(|s| *s == p).count();
        eprintln!(
            "{batch} POST(s): {} syncs of the audit log, {} of the WAL, {} in all",
            count(&audit),
            count(&wal),
            synced.len()
        );
        assert!(count(&audit) >= 1, "no sync of {audit}: {synced:?}");
        assert!(count(&wal) >= 1, "no sync of {wal}: {synced:?}");
    }
}
