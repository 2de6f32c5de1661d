//! A commit that outlives the write timeout (`--write-timeout`): on PostgreSQL a deferred
//! constraint trigger sleeps at COMMIT, so every batch's commit takes a second while the
//! timeout is 200 ms. Each such write is answered 503 `outcome_unknown`, saying a retry with
//! the same Idempotency-Key returns the order; the retry does; and every order in the table
//! has its audit line once the service has stopped.

use std::collections::{BTreeMap, BTreeSet};

use lameduck_testkit::{poll_until, post_json, Exit};
use sqlx::Connection as _;

use crate::{json, order_json, wait_ready, Store, SOON};

/// Sleeps one second once per transaction, at COMMIT (a deferred constraint trigger).
const SLOW_COMMIT: [&str; 2] = [
    "CREATE FUNCTION slow_commit() RETURNS trigger AS $$
     BEGIN
       IF current_setting('lameduck_test.slept', true) IS DISTINCT FROM 'yes' THEN
         PERFORM set_config('lameduck_test.slept', 'yes', true);
         PERFORM pg_sleep(1);
       END IF;
       RETURN NULL;
     END $$ LANGUAGE plpgsql",
    "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON orders
     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
];

const CLIENTS: usize = 6;
const EACH: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn a_commit_past_the_write_timeout_is_answered_outcome_unknown_and_keeps_its_audit_line() {
    let store = Store::postgres("late-commit").await;
    let url = store.args[store
        .args
        .iter()
        .position(|a| a == "--database-url")
        .expect("url")
        + 1]
    .clone();
    let mut s = store.start(&["--write-timeout", "200ms"]);
    wait_ready(&s).await;
    let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in SLOW_COMMIT {
        sqlx::query(sql)
            .execute(&mut db)
            .await
            .expect("slow commit trigger");
    }

    // CLIENTS clients, EACH orders each, every order with a key of its own.
    let http = s.http;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..EACH {
                    let key = format!("late-{c}-{i}");
                    let res = post_json(
                        http,
                        "/orders",
                        &[("idempotency-key", &key)],
                        &order_json("late"),
                    )
                    .await
                    .expect("post");
                    out.push((key, res.status().as_u16(), json(res.body())));
                }
                out
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.expect("client"));
    }

    // Every answer is a 201 or a 503 outcome_unknown; with every commit a second long
    // against a 200 ms timeout, there are 503s.
    let mut ids = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, status, body) in answers {
        match status {
            201 => {
                ids.insert(key, body["id"].as_str().expect("id").to_owned());
            }
            503 => {
                assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("outcome is unknown")
                        && message
                            .contains("retry with the same Idempotency-Key returns the order"),
                    "{message}"
                );
                unknown.push(key);
            }
            other => panic!("{key}: {other} {body}"),
        }
    }
    assert!(!unknown.is_empty(), "no write outlived the 200 ms timeout");

    // A retry with the same key returns the order (once the late commit has landed, it
    // replays it; before, it waits for it or is answered outcome_unknown again).
    for key in &unknown {
        let order = poll_until(SOON, || async {
            let res = post_json(
                http,
                "/orders",
                &[("idempotency-key", key)],
                &order_json("late"),
            )
            .await
            .ok()?;
            (res.status() == 201).then(|| json(res.body()))
        })
        .await
        .unwrap_or_else(|| panic!("{key}: the retry never returned the order"));
        ids.insert(key.clone(), order["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), CLIENTS * EACH, "every key has its order");

    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0), "clean exit");

    // One order per key, and every order in the table has its audit line.
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&mut db)
        .await
        .expect("orders");
    let stored: BTreeSet<String> = stored.into_iter().collect();
    let answered: BTreeSet<String> = ids.values().cloned().collect();
    assert_eq!(
        stored, answered,
        "the table holds exactly the orders answered"
    );
    let audited = crate::created_in_audit(&store.audit_log());
    assert_eq!(audited, stored, "every committed order has its audit line");
    let logs = s.logs().join("\n");
    assert!(
        logs.contains("a batch past its write timeout has committed"),
        "the late commit is logged"
    );
}
