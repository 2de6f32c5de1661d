//! The SQLite writer, driven through `Db::write` on a real database file: writes queued
//! together commit as one batch, each keeps the answer it would get alone, a failing write
//! fails alone, a full queue refuses, and a stop finishes what was accepted.
//!
//! The writes of a test are spawned together on the test's single-threaded runtime: each
//! task queues its write when it first runs, and the writer, woken by the first, runs after
//! all of them, so it finds every write waiting and takes them as one batch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use lameduck_orders::audit::AuditFsync;
use lameduck_orders::audit::AuditLog;
use lameduck_orders::db::Db;
use lameduck_orders::model::NewOrder;
use lameduck_orders::ops::{AuditCtx, Created, Done, Op};
use lameduck_orders::writer::{WriteError, DEFAULT_WRITE_TIMEOUT, QUEUE};

use crate::Store;

struct Fixture {
    db: Db,
    store: Store,
}

async fn open(name: &str) -> Fixture {
    with_writer(Store::sqlite(name)).await
}

/// A database in `store` (its `--database-url`, else SQLite in its directory) with the
/// writer on.
async fn with_writer(store: Store) -> Fixture {
    let (audit, _thread) =
        AuditLog::open(&store.dir.join("audit.log"), AuditFsync::Batch).expect("audit log");
    let url = match store.args.iter().position(|a| a == "--database-url") {
        Some(i) => store.args[i + 1].clone(),
        None => format!("sqlite:{}", store.dir.join("orders.db").display()),
    };
    let db = Db::connect(&url, 2, audit, false, Some(DEFAULT_WRITE_TIMEOUT))
        .await
        .expect("connect");
    Fixture { db, store }
}

/// Issue `writes` together (see the module's note) and their answers, in order.
async fn together(
    db: &Db,
    writes: impl IntoIterator<Item = (Op, Option<AuditCtx>)>,
) -> Vec<Result<Done, WriteError>> {
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(op, audit)| {
            let db = db.clone();
            tokio::spawn(async move { db.write(op, audit).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for t in tasks {
        answers.push(t.await.expect("write task"));
    }
    answers
}

fn order(customer: &str, quantity: i64) -> NewOrder {
    NewOrder {
        customer_id: customer.into(),
        sku: "sku-1".into(),
        quantity,
        amount_cents: 100,
    }
}

fn create(customer: &str, quantity: i64, key: Option<&str>) -> Op {
    Op::Create {
        new: order(customer, quantity),
        key: key.map(Into::into),
    }
}

fn ctx(n: usize) -> Option<AuditCtx> {
    Some(AuditCtx {
        client_ip: Some("127.0.0.1".into()),
        request_id: format!("req-{n}"),
        trace_id: None,
    })
}

/// Batches committed and the writes in them, so far.
fn counts(db: &Db) -> (u64, u64) {
    let s = db.writer().expect("SQLite has a writer").stats();
    (
        s.batches.load(Ordering::Relaxed),
        s.jobs.load(Ordering::Relaxed),
    )
}

/// The answer the one-at-a-time rules give, for creates taken in order: the first use of a
/// key creates, the same key with the same body replays that order, with another body is
/// refused.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    New,
    ReplayOf(usize),
    Mismatch,
}

#[tokio::test]
async fn overlapping_idempotency_keys_in_one_batch_get_the_one_at_a_time_answers() {
    overlapping_keys(open("writer-keys").await).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn the_writer_keeps_the_idempotency_rules_on_postgres_too() {
    overlapping_keys(with_writer(Store::postgres("writer-keys").await).await).await;
}

async fn overlapping_keys(f: Fixture) {
    // 6 keys, each used by 8 requests; the bodies differ by quantity (1 or 2) in a pattern
    // that varies per key, so that the first use is not always the common body.
    let requests: Vec<(String, i64)> = (0..48)
        .map(|i| {
            let key = i % 6;
            let quantity = if (i / 6 + key) % 3 == 0 { 2 } else { 1 };
            (format!("key-{key}"), quantity)
        })
        .collect();
    let mut first: HashMap<&str, (usize, i64)> = HashMap::new();
    let expected: Vec<Expected> = requests
        .iter()
        .enumerate()
        .map(|(i, (key, q))| match first.get(key.as_str()) {
            None => {
                first.insert(key, (i, *q));
                Expected::New
            }
            Some((j, fq)) if fq == q => Expected::ReplayOf(*j),
            Some(_) => Expected::Mismatch,
        })
        .collect();
    assert!(expected.contains(&Expected::Mismatch));

    let answers = together(
        &f.db,
        requests
            .iter()
            .enumerate()
            .map(|(i, (key, q))| (create(key, *q, Some(key)), ctx(i))),
    )
    .await;
    assert_eq!(counts(&f.db), (1, 48), "one batch of 48 writes");

    let mut ids: HashMap<usize, String> = HashMap::new();
    for (i, (answer, want)) in answers.iter().zip(&expected).enumerate() {
        let got = match answer {
            Ok(Done::Created(c)) => c,
            other => panic!("request {i}: {other:?}"),
        };
        match (want, got) {
            (Expected::New, Created::New(o)) => {
                assert_eq!(o.quantity, requests[i].1);
                ids.insert(i, o.id.clone());
            }
            (Expected::ReplayOf(j), Created::Replayed(o)) => {
                assert_eq!(Some(&o.id), ids.get(j), "request {i} replays request {j}")
            }
            (Expected::Mismatch, Created::KeyMismatch) => {}
            (want, got) => panic!("request {i}: expected {want:?}, got {got:?}"),
        }
    }
    assert_eq!(f.db.count().await.expect("count"), 6, "one order per key");

    // Every change has its audit line, durable before the answers: 6 created, and a replay
    // line for each replay.
    let audit = f.store.audit_log();
    let replays = expected
        .iter()
        .filter(|e| matches!(e, Expected::ReplayOf(_)))
        .count();
    assert_eq!(audit.matches("\"order.created\"").count(), 6, "{audit}");
    assert_eq!(
        audit.matches("\"order.replayed\"").count(),
        replays,
        "{audit}"
    );
}

#[tokio::test]
async fn a_write_that_fails_in_a_batch_fails_alone() {
    a_failing_write(open("writer-fails").await, false).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn a_write_that_fails_in_a_batch_fails_alone_on_postgres_too() {
    // There a failed statement aborts the whole transaction: the batch starts over.
    let f = with_writer(Store::postgres("writer-fails").await).await;
    a_failing_write(f, false).await;
}

/// The same with a cancel in the batch: the creates then fail together under a savepoint
/// (a batch of creates alone rolls its transaction back instead).
#[tokio::test]
async fn a_write_that_fails_in_a_batch_with_other_writes_fails_alone() {
    a_failing_write(open("writer-fails-mixed").await, true).await;
}

async fn a_failing_write(f: Fixture, with_cancel: bool) {
    let mut before = 0;
    let mut ops: Vec<Op> = Vec::new();
    if with_cancel {
        let Ok(Done::Created(Created::New(old))) = f.db.write(create("old", 1, None), None).await
        else {
            panic!("the order to cancel")
        };
        before = 1;
        ops.push(Op::Cancel { id: old.id });
    }
    let batches = counts(&f.db).0;
    // Writes 3 and 7 break the quantity CHECK constraint; 7 carries a key, which must not
    // stay behind when its write is rolled back.
    ops.extend((0..10).map(|i| match i {
        3 => create("bad-3", 0, None),
        7 => create("bad-7", 5000, Some("key-7")),
        i => create(&format!("c{i}"), 1, Some(&format!("key-{i}"))),
    }));
    let answers = together(
        &f.db,
        ops.into_iter().enumerate().map(|(i, op)| (op, ctx(i))),
    )
    .await;
    assert_eq!(counts(&f.db).0, batches + 1, "one batch");
    let (cancel, answers) = answers.split_at(before);
    if let [cancelled] = cancel {
        assert!(
            matches!(
                cancelled,
                Ok(Done::Cancelled(lameduck_orders::ops::Cancelled::Done(_)))
            ),
            "{cancelled:?}"
        );
    }
    for (i, a) in answers.iter().enumerate() {
        match (i, a) {
            (3 | 7, Err(WriteError::Db(e))) => {
                assert!(e.to_string().to_lowercase().contains("check"), "{i}: {e}")
            }
            (3 | 7, other) => panic!("write {i} should fail: {other:?}"),
            (_, Ok(Done::Created(Created::New(o)))) => {
                assert_eq!(o.customer_id, format!("c{i}"))
            }
            (_, other) => panic!("write {i} should commit: {other:?}"),
        }
    }
    assert_eq!(f.db.count().await.expect("count"), 8 + before as i64);
    let audit = f.store.audit_log();
    assert!(!audit.contains("bad-"), "a failed write left an audit line");
    // The failed write's key was rolled back with it: the same key now creates.
    let again =
        f.db.write(create("c7", 1, Some("key-7")), None)
            .await
            .expect("write");
    assert!(matches!(again, Done::Created(Created::New(_))), "{again:?}");
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_a_stop_finishes_what_it_accepted() {
    let f = open("writer-full").await;
    let n = QUEUE + 5;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let db = f.db.clone();
            tokio::spawn(async move { db.write(create(&format!("c{i}"), 1, None), None).await })
        })
        .collect();
    // The stop is queued after every accepted write: they all commit before it returns.
    let db = f.db.clone();
    let stop = tokio::spawn(async move { db.finish_writes().await });
    let mut answers = Vec::new();
    for t in writes {
        answers.push(t.await.expect("write task"));
    }
    stop.await.expect("stop task");
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(WriteError::Overloaded)))
        .count();
    let committed = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(refused, 5, "the writes beyond the queue are refused");
    assert_eq!(committed, QUEUE, "every accepted write commits");
    let stats = f.db.writer().expect("writer").stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 5);
    assert_eq!(f.db.count().await.expect("count"), QUEUE as i64);
    let (batches, jobs) = counts(&f.db);
    assert_eq!(jobs, QUEUE as u64);
    assert!(batches >= (QUEUE / lameduck_orders::writer::MAX_BATCH) as u64);
    // After the stop a write is refused as closed, not queued forever.
    let late = f.db.write(create("late", 1, None), None).await;
    assert!(matches!(late, Err(WriteError::Closed)), "{late:?}");
}

/// The HTTP handler hands its write to the writer and awaits the answer; a client that
/// goes away drops that wait. A write still queued then commits all the same, with its
/// audit line.
#[tokio::test]
async fn a_write_whose_caller_goes_away_while_queued_still_commits_and_is_audited() {
    use sqlx::{Connection as _, Executor as _};
    let f = open("writer-gone").await;
    let stats = f.db.writer().expect("writer").stats();
    // Another connection holds the write lock: the writer's first batch waits for it
    // (busy_timeout, 5 s), and the next write stays in the queue meanwhile.
    let url = format!("sqlite:{}", f.store.dir.join("orders.db").display());
    let mut holder = sqlx::AnyConnection::connect(&url).await.expect("connect");
    holder.execute("BEGIN IMMEDIATE").await.expect("lock");
    let db = f.db.clone();
    let first = tokio::spawn(async move { db.write(create("first", 1, None), ctx(1)).await });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while stats.jobs.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first write never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let db = f.db.clone();
    let caller =
        tokio::spawn(async move { db.write(create("gone", 1, Some("k-gone")), ctx(7)).await });
    while stats.queued.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second write was never queued"
        );
        tokio::task::yield_now().await;
    }
    caller.abort();
    let gone = caller
        .await
        .expect_err("the caller is cut off before its answer");
    assert!(gone.is_cancelled(), "{gone:?}");
    assert_eq!(
        stats.queued.load(Ordering::Relaxed),
        1,
        "still queued when its caller went"
    );
    holder.execute("ROLLBACK").await.expect("unlock");
    first
        .await
        .expect("first")
        .expect("the first write commits once the lock is free");
    f.db.finish_writes().await;
    assert_eq!(f.db.count().await.expect("count"), 2);
    let log = std::fs::read_to_string(f.store.dir.join("audit.log")).expect("audit log");
    assert_eq!(log.matches("req-7").count(), 1, "{log}");
}

#[tokio::test]
async fn a_write_alone_in_its_batch_follows_the_same_rules() {
    let f = open("writer-single").await;
    let write = |op| f.db.write(op, None);
    let first = write(create("c1", 1, Some("k"))).await.expect("create");
    let Done::Created(Created::New(order)) = first else {
        panic!("{first:?}")
    };
    // The key is stored: the insert-first path meets the unique key and replays.
    let again = write(create("c1", 1, Some("k"))).await.expect("replay");
    assert_eq!(again, Done::Created(Created::Replayed(order.clone())));
    let other = write(create("c1", 2, Some("k"))).await.expect("mismatch");
    assert_eq!(other, Done::Created(Created::KeyMismatch));
    // A failing write alone rolls back whole: neither its order nor its key stays.
    let bad = write(create("bad", 0, Some("k2"))).await;
    assert!(matches!(bad, Err(WriteError::Db(_))), "{bad:?}");
    let ok = write(create("c2", 1, Some("k2"))).await.expect("create");
    assert!(matches!(ok, Done::Created(Created::New(_))), "{ok:?}");
    assert_eq!(f.db.count().await.expect("count"), 2);
    let (batches, jobs) = counts(&f.db);
    assert_eq!((batches, jobs), (5, 5), "one batch per write");
}

#[tokio::test]
async fn a_write_alone_that_cannot_take_the_write_lock_fails_its_batch() {
    use sqlx::{Connection as _, Executor as _};
    let f = open("writer-locked").await;
    // Another process's transaction (an upgrade's other half) holds SQLite's write lock
    // past the writer's busy_timeout (5 s): the batch's insert cannot start, and the batch fails.
    let url = format!("sqlite:{}", f.store.dir.join("orders.db").display());
    let mut holder = sqlx::AnyConnection::connect(&url).await.expect("connect");
    holder.execute("BEGIN IMMEDIATE").await.expect("lock");
    let locked = f.db.write(create("c1", 1, Some("k")), None).await;
    assert!(
        matches!(locked, Err(WriteError::Unavailable(_))),
        "{locked:?}"
    );
    holder.execute("ROLLBACK").await.expect("unlock");
    // Nothing of it was written: the retry creates.
    let retry = f.db.write(create("c1", 1, Some("k")), None).await;
    assert!(
        matches!(retry, Ok(Done::Created(Created::New(_)))),
        "{retry:?}"
    );
    assert_eq!(f.db.count().await.expect("count"), 1);
}
