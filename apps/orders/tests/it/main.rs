//! End-to-end tests of `lameduck-orders`: the real binary, real SQLite files, a real
//! PostgreSQL 15 (from `LAMEDUCK_TEST_POSTGRES_URL`, which `.ci/run` sets; those tests are
//! ignored unless run with `--include-ignored`), real signals.

mod api;
mod config;
mod disk;
mod durability;
mod faults;
mod fleet;
mod late_commit;
mod outbox;
mod payments;
#[cfg(feature = "registry")]
mod registry;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lameduck_testkit::{get, poll_until, Spawned};
use sqlx::Connection as _;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lameduck-orders");
pub(crate) const SOON: Duration = Duration::from_secs(15);

/// Where a test's orders live: a fresh data directory, and for PostgreSQL a fresh database.
pub(crate) struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) args: Vec<String>,
}

/// A fresh directory and a number unique within this test process.
fn fresh_dir(name: &str) -> (PathBuf, usize) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "lameduck-orders-it-{}-{n}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    (dir, n)
}

impl Store {
    /// SQLite in a fresh directory.
    pub(crate) fn sqlite(name: &str) -> Self {
        let (dir, _) = fresh_dir(name);
        let args = vec!["--data-dir".into(), dir.display().to_string()];
        Self { dir, args }
    }

    /// A fresh PostgreSQL database on the server `LAMEDUCK_TEST_POSTGRES_URL` names. The
    /// tests that use it are `#[ignore]`d, so that a run without a server shows them as not
    /// run; `.ci/run` starts one and runs them with `--include-ignored`.
    pub(crate) async fn postgres(name: &str) -> Self {
        let Ok(base) = std::env::var("LAMEDUCK_TEST_POSTGRES_URL") else {
            panic!(
                "LAMEDUCK_TEST_POSTGRES_URL is not set: start PostgreSQL with \
                 `export LAMEDUCK_TEST_POSTGRES_URL=$(scripts/test-postgres)`"
            );
        };
        let (dir, n) = fresh_dir(name);
        let db = format!("ld_{}_{}_{n}", name.replace('-', "_"), std::process::id());
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db}"))
            .execute(&mut admin)
            .await
            .expect("drop db");
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .expect("create db");
        let url = match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{db}"),
            None => panic!("bad LAMEDUCK_TEST_POSTGRES_URL {base}"),
        };
        let args = vec![
            "--data-dir".into(),
            dir.display().to_string(),
            "--database-url".into(),
            url,
        ];
        Self { dir, args }
    }

    /// Start the service on this store under `wrapper` (`strace`, `unshare`) with
    /// `wrapper_args` before the binary and `extra` flags after the store's.
    pub(crate) fn start_under(
        &self,
        wrapper: &str,
        wrapper_args: &[&str],
        extra: &[&str],
    ) -> Spawned {
        let mut args = wrapper_args.to_vec();
        args.extend([
            BIN,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        args.extend(self.args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        Spawned::start_cmd(wrapper, &args, &[]).unwrap_or_else(|e| panic!("{wrapper} {BIN}: {e}"))
    }

    pub(crate) fn start(&self, extra: &[&str]) -> Spawned {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        Spawned::start(BIN, &args).unwrap_or_else(|e| panic!("start {BIN}: {e}"))
    }

    pub(crate) fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A JSON order body whose customer id is `customer`.
pub(crate) fn order_json(customer: &str) -> String {
    format!(r#"{{"customer_id":"{customer}","sku":"sku-1","quantity":2,"amount_cents":1250}}"#)
}

/// Parse a response body as JSON.
pub(crate) fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Wait until `/readyz` is 200.
pub(crate) async fn wait_ready(s: &Spawned) {
    let ok = poll_until(SOON, || async {
        (get(s.admin, "/readyz").await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "never ready");
}

/// Every order, following the pagination.
pub(crate) async fn all_orders(addr: std::net::SocketAddr) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    for _ in 0..1000 {
        let path = if after.is_empty() {
            "/orders?limit=500".to_string()
        } else {
            format!("/orders?limit=500&after={after}")
        };
        let page = json(get(addr, &path).await.expect("list").body());
        let orders = page["orders"].as_array().expect("orders").clone();
        out.extend(orders);
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

/// The ids of the orders whose `order.created` line is in the audit log `text` (every line
/// a whole JSON object).
pub(crate) fn created_in_audit(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
            (v["action"] == "order.created").then(|| v["order_id"].as_str().map(str::to_owned))?
        })
        .collect()
}
