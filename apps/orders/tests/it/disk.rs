//! A full disk: the orders service on SQLite with its data directory on a 16 MiB tmpfs, in
//! a mount namespace of its own (`unshare --mount`, or with `--user --map-root-user` where
//! the test is not root). Under 8 POST clients a file fills the tmpfs: writes are refused
//! with 503 `unavailable` and `Retry-After`, reads and `/readyz` stay 200, the condition is
//! named in `/readyz`, a WARN line and the gauge `orders_writes_refused`. The file goes:
//! writes are accepted again within 5 s, without a restart. Every order answered 201 (and
//! every order stored) is in the database with its audit line, and the database is intact.
//!
//! The test reaches the tmpfs through `/proc/PID/root`, the service's view of the files.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lameduck_testkit::{get, poll_until, post_json, Exit, Spawned};
use nix::sys::signal::Signal;
use sqlx::Connection as _;

use crate::{json, order_json, wait_ready, Store, SOON};

/// The `unshare` flags that make a mount namespace here (as root, or in a user namespace);
/// `None` where neither is allowed.
fn mount_namespace() -> Option<Vec<&'static str>> {
    for args in [
        vec!["--mount"],
        vec!["--user", "--map-root-user", "--mount"],
    ] {
        let ok = std::process::Command::new("unshare")
            .args(&args)
            .args(["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(args);
        }
    }
    None
}

/// The orders service with its data directory on a 16 MiB tmpfs of its own.
fn start_on_tmpfs(unshare: &[&str], store: &Store) -> Spawned {
    let dir = store.dir.display().to_string();
    let mut args = unshare.to_vec();
    args.extend([
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=16m tmpfs "$0" && exec "$@""#,
        &dir,
    ]);
    store.start_under("unshare", &args, &[])
}

/// Fill the file system of `path` with `path`'s contents until it is full.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded: 16 MiB hold 256 chunks.
    for _ in 0..1024 {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // The last bytes, one at a time until nothing fits.
    for _ in 0..64 * 1024 {
        match f.write(&[0xA5]) {
            Ok(1) => written += 1,
            _ => break,
        }
    }
    written
}

/// What one POST got.
struct Answer {
    status: u16,
    id: Option<String>,
    code: Option<String>,
    retry_after: bool,
}

async fn post(addr: std::net::SocketAddr, key: &str) -> Option<Answer> {
    let res = post_json(
        addr,
        "/orders",
        &[("idempotency-key", key)],
        &order_json("disk"),
    )
    .await
    .ok()?;
    let body = json(res.body());
    Some(Answer {
        status: res.status().as_u16(),
        id: body["id"].as_str().map(str::to_owned),
        code: body["error"]["code"].as_str().map(str::to_owned),
        retry_after: res.headers().contains_key("retry-after"),
    })
}

async fn text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let res = get(addr, path).await.expect(path);
    (
        res.status().as_u16(),
        String::from_utf8_lossy(res.body()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs unshare (util-linux) and tmpfs, as root or with user namespaces: scripts/test runs it"]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    let Some(unshare) = mount_namespace() else {
        panic!("unshare can make no mount namespace with a tmpfs here");
    };
    let store = Store::sqlite("disk");
    let mut s = start_on_tmpfs(&unshare, &store);
    wait_ready(&s).await;
    // The service's view of its data directory.
    let seen: PathBuf = PathBuf::from(format!("/proc/{}/root{}", s.pid(), store.dir.display()));
    let refusal = format!("writes refused: no space left on {}", store.dir.display());

    // 8 clients, each a key per POST, until told to stop (bounded in count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let http = s.http;
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let until = Instant::now() + Duration::from_secs(90);
                for i in 0..20_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > until {
                        break;
                    }
                    if let Some(a) = post(http, &format!("disk-{c}-{i}")).await {
                        out.push(a);
                    }
                }
                out
            })
        })
        .collect();
    let some = poll_until(SOON, || async {
        let orders = json(get(http, "/orders?limit=60").await.ok()?.body());
        (orders["orders"].as_array()?.len() >= 50).then_some(())
    })
    .await;
    assert!(some.is_some(), "no orders under load");

    // Fill the disk.
    let filler = seen.join("filler");
    let at = filler.clone();
    let written = tokio::task::spawn_blocking(move || fill(&at))
        .await
        .expect("fill");
    assert!(written > 0, "the filler wrote nothing");

    // Writes are refused, 503 unavailable with Retry-After, naming the condition.
    let mut n = 0;
    let refused = poll_until(SOON, || {
        n += 1;
        let key = format!("probe-full-{n}");
        async move {
            let a = post(http, &key).await?;
            (a.status == 503).then_some(a)
        }
    })
    .await
    .expect("writes never refused on a full disk");
    assert_eq!(refused.code.as_deref(), Some("unavailable"));
    assert!(refused.retry_after, "a 503 without Retry-After");
    // While the disk stays full, every write is refused; reads and readiness stay up.
    for i in 0..5 {
        let a = post(http, &format!("probe-still-{i}")).await.expect("post");
        assert_eq!(
            (a.status, a.code.as_deref()),
            (503, Some("unavailable")),
            "a write on a full disk"
        );
        let (status, _) = text(http, "/orders?limit=5").await;
        assert_eq!(status, 200, "GET /orders on a full disk");
    }
    let some_id = crate::all_orders(http).await[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(text(http, &format!("/orders/{some_id}")).await.0, 200);
    let (status, body) = text(s.admin, "/readyz").await;
    assert_eq!(status, 200, "/readyz on a full disk: {body}");
    assert!(body.contains(&refusal), "/readyz: {body}");
    let (_, metrics) = text(s.admin, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "orders_writes_refused 1.0"),
        "{metrics}"
    );
    assert!(
        s.wait_for_log(&["WARN", &refusal], SOON).await.is_some(),
        "no WARN line naming the condition"
    );

    // Free the space: writes are accepted again within 5 s, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let freed = Instant::now();
    let mut n = 0;
    let back = poll_until(SOON, || {
        n += 1;
        let key = format!("probe-back-{n}");
        async move {
            let a = post(http, &key).await?;
            (a.status == 201).then_some(a)
        }
    })
    .await;
    let took = freed.elapsed();
    assert!(back.is_some(), "writes never came back");
    assert!(
        took < Duration::from_secs(5),
        "writes came back after {took:?}"
    );
    let (status, body) = text(s.admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));

    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.expect("client"));
    }
    let acked: BTreeSet<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .filter_map(|a| a.id.clone())
        .chain(back.and_then(|a| a.id))
        .collect();
    for a in answers.iter().filter(|a| a.status != 201) {
        assert_eq!(
            (a.status, a.code.as_deref(), a.retry_after),
            (503, Some("unavailable"), true),
            "every refusal is a 503 unavailable with Retry-After"
        );
    }
    let refusals = answers.iter().filter(|a| a.status == 503).count();
    eprintln!(
        "full disk: {} acknowledged, {refusals} refused by the clients",
        acked.len()
    );

    // Every acknowledged order is stored with its audit line; so is every stored order
    // (the lines of orders stored when the audit log found no space were written once
    // there was); the database is intact.
    // SQLite follows the `/proc/PID/root` link to `/`, outside the tmpfs: read a copy of
    // the database and its WAL, taken while no write runs (the clients have stopped).
    let copy = store.dir.join("copy");
    std::fs::create_dir_all(&copy).expect("copy dir");
    for file in ["orders.db", "orders.db-wal"] {
        if seen.join(file).exists() {
            std::fs::copy(seen.join(file), copy.join(file)).expect("copy the database");
        }
    }
    let url = format!("sqlite://{}", copy.join("orders.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&mut db)
        .await
        .expect("orders");
    let stored: BTreeSet<String> = stored.into_iter().collect();
    assert!(acked.is_subset(&stored), "an acknowledged order is missing");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .expect("integrity_check");
    assert_eq!(check, "ok");
    db.close().await.expect("close");
    let audit = std::fs::read_to_string(seen.join("audit.log")).expect("audit log");
    let audited = crate::created_in_audit(&audit);
    assert_eq!(audited, stored, "every stored order has its audit line");

    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0), "clean exit");
}
