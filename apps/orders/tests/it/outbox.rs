//! The outbox end to end: real `lameduck-orders` processes, the real `lameduck-fakes`
//! webhook receiver, real signals. Every committed create and cancel reaches the receiver
//! at least once, duplicates carry the same event id, one order's events arrive in order.

use lameduck_testkit::Exit;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lameduck_testkit::{get, poll_until, post_json, Spawned};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{all_orders, json, order_json, wait_ready, Store, SOON};

/// How long the outbox may take to empty at the end (a killed relay's lease expires in 15 s).
const DRAINED: Duration = Duration::from_secs(60);

/// `lameduck-fakes webhook`'s receiver, served in this test process on loopback.
struct Receiver {
    http: SocketAddr,
}

async fn receiver(fail_rate: f64, seed: u64) -> Receiver {
    receiver_failing(fail_rate, 0.0, seed).await
}

/// A receiver that fails `fail_rate` of the deliveries without recording them, and records
/// `fail_after_record_rate` of them and then answers 500.
async fn receiver_failing(fail_rate: f64, fail_after_record_rate: f64, seed: u64) -> Receiver {
    use lameduck_fakes::webhook;
    let options = webhook::Options {
        listen: "127.0.0.1:0".parse().expect("addr"),
        fail_rate,
        fail_after_record_rate,
        latency_ms: 0,
        seed: Some(seed),
    };
    let app = webhook::router(webhook::Receiver::new(&options).expect("receiver"));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .expect("bind");
    let http = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { http }
}

fn webhook_args(r: &Receiver) -> Vec<String> {
    vec![
        "--webhook-url".into(),
        format!("http://{}/hooks/orders", r.http),
    ]
}

fn start(store: &Store, r: &Receiver, extra: &[&str]) -> Spawned {
    let hook = webhook_args(r);
    let mut args: Vec<&str> = hook.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    store.start(&args)
}

async fn outbox(admin: SocketAddr) -> serde_json::Value {
    json(get(admin, "/outbox").await.expect("GET /outbox").body())
}

/// Wait until the outbox has nothing pending.
async fn drained(admin: SocketAddr) {
    let done = poll_until(DRAINED, || async {
        let o = get(admin, "/outbox").await.ok()?;
        (json(o.body())["pending"] == 0).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the outbox still has pending events: {}",
        outbox(admin).await
    );
}

async fn received(r: &Receiver) -> Vec<serde_json::Value> {
    let res = get(r.http, "/events").await.expect("GET /events");
    serde_json::from_slice::<Vec<serde_json::Value>>(res.body()).expect("events")
}

/// Every order in the database has its events at the receiver: `order.created`, and
/// `order.cancelled` when cancelled; duplicates only with the same event id; created before
/// cancelled; nothing about orders that do not exist. Returns (events, duplicates).
async fn verify(orders_at: SocketAddr, r: &Receiver) -> (usize, usize) {
    let orders = all_orders(orders_at).await;
    let events = received(r).await;
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut first: HashMap<(String, String), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let key = (
            e["order_id"].as_str().expect("order_id").to_string(),
            e["type"].as_str().expect("type").to_string(),
        );
        ids.entry(key.clone())
            .or_default()
            .insert(e["event_id"].as_str().expect("event_id").to_string());
        first.entry(key).or_insert(i);
    }
    let known: HashSet<&str> = orders
        .iter()
        .map(|o| o["id"].as_str().expect("id"))
        .collect();
    for (order, kind) in ids.keys() {
        assert!(
            known.contains(order.as_str()),
            "an event about {order}, which does not exist ({kind})"
        );
    }
    for ((order, kind), set) in &ids {
        assert_eq!(set.len(), 1, "{order} {kind}: several event ids {set:?}");
    }
    for o in &orders {
        let id = o["id"].as_str().expect("id").to_string();
        let created = first.get(&(id.clone(), "order.created".into()));
        assert!(created.is_some(), "no order.created for {id}");
        if o["status"] == "cancelled" {
            let cancelled = first.get(&(id.clone(), "order.cancelled".into()));
            assert!(cancelled.is_some(), "no order.cancelled for {id}");
            assert!(
                created < cancelled,
                "{id}: cancelled arrived before created"
            );
        } else {
            assert!(
                !first.contains_key(&(id.clone(), "order.cancelled".into())),
                "{id} is not cancelled"
            );
        }
    }
    let distinct: usize = ids.values().map(HashSet::len).sum();
    (events.len(), events.len() - distinct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_cancels_reach_the_receiver_once_each_and_in_order() {
    let r = receiver(0.0, 1).await;
    let store = Store::sqlite("outbox-basic");
    let s = start(&store, &r, &[]);
    wait_ready(&s).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let res = post_json(s.http, "/orders", &[], &order_json(&format!("c{i}")))
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
        ids.push(json(res.body())["id"].as_str().expect("id").to_string());
    }
    for id in ids.iter().step_by(4) {
        let res = post_json(s.http, &format!("/orders/{id}/cancel"), &[], "")
            .await
            .expect("cancel");
        assert_eq!(res.status(), 200);
    }
    drained(s.admin).await;
    let (events, duplicates) = verify(s.http, &r).await;
    assert_eq!((events, duplicates), (25, 0));
    let o = outbox(s.admin).await;
    assert_eq!(o["oldest_age_ms"], 0);
    assert_eq!(o["set_aside"], 0);
    // The delivered counter moves with each delivery; the pending gauge is refreshed from the
    // database every `STATS_EVERY` (1 s), so it may still show an older count for that long.
    let shown = poll_until(SOON, || async {
        let m = get(s.admin, "/metrics").await.ok()?;
        let text = String::from_utf8_lossy(m.body()).into_owned();
        (sample(&text, "orders_outbox_delivered_total") == Some(25.0)
            && sample(&text, "orders_outbox_pending") == Some(0.0))
        .then_some(())
    })
    .await;
    let metrics = get(s.admin, "/metrics").await.expect("metrics");
    let text = String::from_utf8_lossy(metrics.body());
    assert!(
        shown.is_some(),
        "the metrics never showed 25 delivered and 0 pending:\n{text}"
    );
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A receiver that refuses (422) every delivery of the first event it sees, and takes the
/// others.
async fn picky_receiver() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refused: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let acc = accepted.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let (acc, refused) = (acc.clone(), refused.clone());
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut r = refused.lock().unwrap();
            if r.get_or_insert_with(|| key.clone()) == &key {
                return StatusCode::UNPROCESSABLE_ENTITY;
            }
            acc.lock().unwrap().push(key);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_receiver_refuses_is_set_aside_and_the_next_ones_go() {
    let (addr, accepted) = picky_receiver().await;
    let store = Store::sqlite("outbox-refused");
    let url = format!("http://{addr}/hooks");
    let s = store.start(&[
        "--webhook-url",
        &url,
        "--webhook-set-aside-after",
        "2",
        "--log-format",
        "json",
    ]);
    wait_ready(&s).await;
    for i in 0..3 {
        let res = post_json(s.http, "/orders", &[], &order_json(&format!("c{i}")))
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
    }
    let settled = poll_until(SOON, || async {
        let o = outbox(s.admin).await;
        (o["pending"] == 0 && o["set_aside"] == 1).then_some(())
    })
    .await;
    assert!(settled.is_some(), "{}", outbox(s.admin).await);
    assert_eq!(
        accepted.lock().unwrap().len(),
        2,
        "the two events after it were delivered"
    );
    let line = s
        .wait_for_log(&["set aside", "status 422"], SOON)
        .await
        .expect("the set-aside event is logged");
    assert!(line.contains("\"attempts\":2"), "{line}");
    // The metrics follow within a second.
    let shown = poll_until(SOON, || async {
        let m = get(s.admin, "/metrics").await.ok()?;
        String::from_utf8_lossy(m.body())
            .contains("orders_outbox_set_aside 1")
            .then_some(())
    })
    .await;
    assert!(shown.is_some(), "orders_outbox_set_aside never showed 1");
}

/// Clients that create orders (a fresh idempotency key each) and cancel every third one
/// they created, until `stop` or their bound; errors during faults are expected.
fn load(
    phase: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|c| {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(60);
                for i in 0..400 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > end {
                        return;
                    }
                    let key = format!("{phase}-{}-{c}-{i}", std::process::id());
                    let Ok(res) = post_json(
                        addr,
                        "/orders",
                        &[("idempotency-key", &key)],
                        &order_json(&key),
                    )
                    .await
                    else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    if res.status() != 201 {
                        continue;
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    if i % 3 == 0 {
                        let id = json(res.body())["id"].as_str().expect("id").to_string();
                        let _ = post_json(addr, &format!("/orders/{id}/cancel"), &[], "").await;
                    }
                }
            })
        })
        .collect()
}

async fn acked_at_least(acked: &AtomicUsize, n: usize) {
    let ok = poll_until(SOON, || async {
        (acked.load(Ordering::Relaxed) >= n).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "the load stalled at {} acknowledged orders",
        acked.load(Ordering::Relaxed)
    );
}

async fn stop_load(stop: &AtomicBool, clients: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_committed_event_is_lost_over_sigterm_sigkill_and_an_upgrade_while_the_receiver_fails() {
    let r = receiver(0.2, 20261202).await;
    let duplicates = over_signals(&r, "outbox-faults").await;
    eprintln!("{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_receiver_recorded_and_then_failed_come_again_under_the_same_event_id() {
    // A quarter recorded and answered 500: each is delivered again (the relay cannot know
    // it was recorded), so the receiver sees duplicates, each under its first event id.
    let r = receiver_failing(0.0, 0.25, 20261207).await;
    let duplicates = over_signals(&r, "outbox-after-record").await;
    assert!(
        duplicates > 0,
        "no delivery came twice: the relay did not redeliver"
    );
}

/// Load the service through a SIGTERM, a SIGKILL and a SIGHUP upgrade with the receiver
/// `r`, then check that every committed event arrived (duplicates only under the same
/// event id); returns the number of duplicates.
async fn over_signals(r: &Receiver, name: &str) -> usize {
    let store = Store::sqlite(name);
    let pid_file = store.dir.join("orders.pid");
    let pid_arg = pid_file.to_str().expect("path").to_string();
    let jitter = |n: u64| Duration::from_millis(u64::from(std::process::id()) % n);

    // SIGTERM under load: the relay finishes its delivery in flight and stops.
    let mut s = start(&store, r, &[]);
    wait_ready(&s).await;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = load("term", s.http, stop.clone(), acked.clone());
    acked_at_least(&acked, 30).await;
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0), "clean exit");
    stop_load(&stop, clients).await;

    // SIGKILL under load, at a moment that varies from run to run.
    let mut s = start(&store, r, &[]);
    wait_ready(&s).await;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = load("kill", s.http, stop.clone(), acked.clone());
    acked_at_least(&acked, 30).await;
    tokio::time::sleep(jitter(150)).await;
    s.signal(Signal::SIGKILL);
    assert_eq!(s.wait_exit(SOON).await, Exit::KILLED);
    stop_load(&stop, clients).await;

    // A SIGHUP upgrade under load: the new process serves on the same sockets and takes
    // the relay over once the old one has released the lease.
    let mut s = start(&store, r, &["--pid-file", &pid_arg]);
    wait_ready(&s).await;
    let (stop, acked) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients = load("hup", s.http, stop.clone(), acked.clone());
    acked_at_least(&acked, 30).await;
    let old = s.pid();
    s.signal(Signal::SIGHUP);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process drains and exits 0"
    );
    let new: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(new as u32, old);
    acked_at_least(&acked, 60).await;
    stop_load(&stop, clients).await;
    let _ = kill(Pid::from_raw(new), Signal::SIGTERM);
    let gone = poll_until(SOON, || async {
        kill(Pid::from_raw(new), None).is_err().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the upgraded process exits on SIGTERM");

    // A last process delivers whatever is pending (after the killed relay's lease expired).
    let s = start(&store, r, &[]);
    wait_ready(&s).await;
    drained(s.admin).await;
    let (events, duplicates) = verify(s.http, r).await;
    let orders = all_orders(s.http).await.len();
    eprintln!(
        "outbox under faults ({name}): {orders} orders, {events} events received, {duplicates} duplicates"
    );
    assert!(orders >= 120, "{orders} orders");
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn two_replicas_on_one_postgres_database_deliver_through_one_relay() {
    let r = receiver(0.1, 7).await;
    let store = Store::postgres("outbox-replicas").await;
    let a = start(&store, &r, &["--log-format", "json"]);
    let b = start(&store, &r, &["--log-format", "json"]);
    wait_ready(&a).await;
    wait_ready(&b).await;
    for i in 0..40 {
        let at = if i % 2 == 0 { a.http } else { b.http };
        let res = post_json(at, "/orders", &[], &order_json(&format!("c{i}")))
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
        if i % 5 == 0 {
            let id = json(res.body())["id"].as_str().expect("id").to_string();
            let other = if i % 2 == 0 { b.http } else { a.http };
            let res = post_json(other, &format!("/orders/{id}/cancel"), &[], "")
                .await
                .expect("cancel");
            assert_eq!(res.status(), 200);
        }
    }
    drained(a.admin).await;
    let (events, _) = verify(a.http, &r).await;
    assert!(events >= 48, "{events} events");
    let holders = [&a, &b]
        .iter()
        .filter(|s| s.logs().iter().any(|l| l.contains("holds the lease")))
        .count();
    assert_eq!(holders, 1, "exactly one replica delivered");
}
