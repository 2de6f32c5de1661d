//! Registration in a real etcd (Debian's etcd-server, started here on loopback): the key
//! appears once the service is ready, is gone before the listener closes, follows an
//! upgrade, expires after a crash, comes back after etcd does, and leaves with an operator
//! drain. Built with the `registry` feature; etcd is read through its JSON gateway
//! (`/v3/kv/range`), so the tests need no etcd client library.

use lameduck_testkit::Exit;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use lameduck_testkit::{poll_until, post_operator, Spawned};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Store, SOON};

/// An etcd server on loopback, killed (and its data removed) on drop.
struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    /// Start etcd on free ports.
    async fn start(name: &str) -> Etcd {
        let dir = std::env::temp_dir().join(format!("ld-etcd-{}-{name}", std::process::id()));
        let mut e = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
        };
        e.run().await;
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// (Re)start the server on the same ports, with an empty data directory.
    async fn run(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args([
                "--name",
                "default",
                "--data-dir",
                self.dir.to_str().expect("path"),
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("default={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) is installed");
        self.child = Some(child);
        let up = poll_until(SOON, || async { self.range("probe").await.map(|_| ()) }).await;
        assert!(up.is_some(), "etcd did not come up");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// etcd's answer to a range request for `key` (JSON), or `None` when it does not answer.
    async fn range(&self, key: &str) -> Option<serde_json::Value> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({ "key": b64.encode(key) }).to_string();
        let res = lameduck_testkit::post_json(self.addr(), "/v3/kv/range", &[], &body)
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        serde_json::from_slice(res.body()).ok()
    }

    /// Freeze the server (SIGSTOP): its connections stay open and nothing answers, so a
    /// client notices only by its own timeouts. `stop` (or drop) ends it.
    fn freeze(&self) {
        if let Some(c) = &self.child {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGSTOP);
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The value of `key` (JSON), and its lease.
    async fn get(&self, key: &str) -> Option<(serde_json::Value, i64)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let answer = self.range(key).await?;
        let kv = answer["kvs"].as_array()?.first()?.clone();
        let value = b64.decode(kv["value"].as_str()?).ok()?;
        // int64 fields come as strings; a key without a lease has none.
        let lease = kv["lease"].as_str().map_or(Some(0), |l| l.parse().ok())?;
        Some((serde_json::from_slice(&value).ok()?, lease))
    }

    /// Poll until `key`'s presence is `present` (and its value satisfies `check`).
    async fn until(
        &self,
        key: &str,
        within: Duration,
        check: impl Fn(Option<&serde_json::Value>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(key).await;
            if check(v.as_ref().map(|(v, _)| v)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const KEY: &str = "/services/lameduck-orders/it";

fn start(store: &Store, etcd_url: &str, extra: &[&str]) -> Spawned {
    let mut args = vec![
        "--etcd-endpoints",
        etcd_url,
        "--instance-id",
        "it",
        "--registry-ttl",
        "2s",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    store.start(&args)
}

fn pid_of(v: Option<&serde_json::Value>) -> Option<u64> {
    v?["pid"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn the_key_appears_when_ready_and_is_gone_before_the_listener_closes() {
    let etcd = Etcd::start("drain").await;
    let store = Store::sqlite("registry-drain");
    let mut s = start(&store, &etcd.url(), &["--drain-delay", "1s"]);
    let pid = u64::from(s.pid());
    assert!(
        etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await,
        "registered"
    );
    let (value, _) = etcd.get(KEY).await.expect("value");
    assert_eq!(value["http"], s.http.to_string());
    s.signal(Signal::SIGTERM);
    let t0 = Instant::now();
    assert!(
        etcd.until(KEY, Duration::from_millis(500), |v| v.is_none())
            .await,
        "deregistered within 0.5 s"
    );
    // The drain delay (1 s) is not over: the listener still accepts.
    assert!(t0.elapsed() < Duration::from_millis(900));
    assert!(
        tokio::net::TcpStream::connect(s.http).await.is_ok(),
        "still accepting"
    );
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn etcd_down_at_sigterm_is_a_warning_and_a_clean_exit() {
    let mut etcd = Etcd::start("down-at-stop").await;
    let store = Store::sqlite("registry-down-at-stop");
    let mut s = start(&store, &etcd.url(), &[]);
    let pid = u64::from(s.pid());
    assert!(etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await);
    // Down without a word, as a partitioned etcd is: the deregistration times out (a
    // stopped etcd may be noticed first, and then there is nothing to deregister).
    etcd.freeze();
    s.signal(Signal::SIGTERM);
    // Nothing is lost: the lease expires on its own.
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    let logs = s.logs().join("\n");
    let hook = s
        .logs()
        .into_iter()
        .find(|l| l.contains("hook finished") && l.contains("deregister"))
        .unwrap_or_else(|| panic!("no report line for the hook: {logs}"));
    assert!(
        hook.contains("\"best_effort\":true") && !hook.contains("\"status\":\"ok\""),
        "{hook}"
    );
    assert!(
        logs.contains("best-effort hook did not succeed"),
        "a warning: {logs}"
    );
    assert!(logs.contains("\"exit_code\":0"), "{logs}");
    // The next process sees a clean end.
    let s = store.start(&[]);
    crate::wait_ready(&s).await;
    let res = lameduck_testkit::get(s.admin, "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(res.body()).into_owned();
    assert!(
        text.contains("lameduck_previous_shutdown{outcome=\"clean\"} 1"),
        "{text}"
    );
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn after_sigkill_the_lease_removes_the_key() {
    let etcd = Etcd::start("kill").await;
    let store = Store::sqlite("registry-kill");
    let mut s = start(&store, &etcd.url(), &[]);
    let pid = u64::from(s.pid());
    assert!(etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await);
    s.signal(Signal::SIGKILL);
    assert_eq!(s.wait_exit(SOON).await, Exit::KILLED);
    // TTL 2 s, plus a second.
    assert!(
        etcd.until(KEY, Duration::from_secs(3), |v| v.is_none())
            .await,
        "expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn an_upgrade_leaves_the_key_in_place_owned_by_the_new_process() {
    let etcd = Etcd::start("upgrade").await;
    let store = Store::sqlite("registry-upgrade");
    let mut s = start(&store, &etcd.url(), &[]);
    let old = u64::from(s.pid());
    assert!(etcd.until(KEY, SOON, |v| pid_of(v) == Some(old)).await);
    let (_, old_lease) = etcd.get(KEY).await.expect("key");
    s.signal(Signal::SIGHUP);
    // The old process exits after the handover; the key never disappears meanwhile.
    let deadline = Instant::now() + SOON;
    let mut new_pid = None;
    while Instant::now() < deadline {
        let (v, lease) = etcd
            .get(KEY)
            .await
            .expect("the key stays registered throughout");
        if pid_of(Some(&v)) != Some(old) && s.has_exited() {
            assert_ne!(lease, old_lease, "under the new process's own lease");
            new_pid = pid_of(Some(&v));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_pid = new_pid.expect("the new process owns the key after the old one exited");
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
    assert!(
        etcd.until(KEY, SOON, |v| v.is_none()).await,
        "the new process deregisters at its own stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn the_key_comes_back_after_etcd_does_and_without_etcd_the_service_serves() {
    let mut etcd = Etcd::start("restart").await;
    etcd.stop();
    let store = Store::sqlite("registry-restart");
    let s = start(&store, &etcd.url(), &[]);
    crate::wait_ready(&s).await;
    let res = lameduck_testkit::get(s.http, "/orders")
        .await
        .expect("serves without etcd");
    assert_eq!(res.status(), 200);
    etcd.run().await;
    let pid = u64::from(s.pid());
    assert!(
        etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await,
        "registers once etcd appears"
    );
    // etcd restarts with nothing: the registration is lost and made again.
    etcd.stop();
    etcd.run().await;
    assert!(
        etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await,
        "registers again"
    );
    // The key is in etcd a moment before the registration task records it in its gauge.
    let text = lameduck_testkit::poll_until(SOON, || async {
        let m = lameduck_testkit::get(s.admin, "/metrics").await.ok()?;
        let text = String::from_utf8_lossy(m.body()).into_owned();
        text.contains("lameduck_registry_registered 1\n")
            .then_some(text)
    })
    .await;
    let Some(text) = text else {
        panic!("lameduck_registry_registered never showed 1");
    };
    let failures: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("lameduck_registry_failures_total ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no lameduck_registry_failures_total in {text}"));
    assert!(failures >= 1.0, "failures counted: {text}");
}

/// Start the service with an admin token, wait for its key, drain it as an operator and
/// wait for the key to go.
async fn start_drained(store: &Store, etcd: &Etcd) -> Spawned {
    let s = Spawned::start_env(
        crate::BIN,
        &[
            "--data-dir",
            store.dir.to_str().expect("path"),
            "--etcd-endpoints",
            &etcd.url(),
            "--instance-id",
            "it",
            "--log-format",
            "json",
        ],
        &[("LAMEDUCK_ADMIN_TOKEN", "s3cret")],
    )
    .expect("start");
    let pid = u64::from(s.pid());
    assert!(etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await);
    assert_eq!(post_operator(s.admin, "/drain", Some("s3cret")).await, 200);
    assert!(etcd.until(KEY, SOON, |v| v.is_none()).await, "deregistered");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn an_operator_drain_deregisters_and_undrain_registers_again() {
    let etcd = Etcd::start("operator").await;
    let store = Store::sqlite("registry-operator");
    let s = start_drained(&store, &etcd).await;
    let pid = u64::from(s.pid());
    let res = lameduck_testkit::get(s.http, "/orders")
        .await
        .expect("still serving");
    assert_eq!(res.status(), 200);
    assert_eq!(
        post_operator(s.admin, "/undrain", Some("s3cret")).await,
        200
    );
    assert!(
        etcd.until(KEY, SOON, |v| pid_of(v) == Some(pid)).await,
        "registered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (etcd-server): scripts/test runs it"]
async fn an_operator_drain_passes_through_an_upgrade_and_the_key_stays_absent() {
    let etcd = Etcd::start("operator-upgrade").await;
    let store = Store::sqlite("registry-operator-upgrade");
    let mut s = start_drained(&store, &etcd).await;
    s.signal(Signal::SIGHUP);
    let line = s
        .wait_for_log(&["the new process is ready"], SOON)
        .await
        .expect("a handover");
    let new_pid = serde_json::from_str::<serde_json::Value>(&line).expect("JSON")["new_pid"]
        .as_u64()
        .expect("new_pid");
    let _kill = KillPid(new_pid as i32);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process exits 0"
    );
    s.wait_for_log(&["starting drained"], SOON)
        .await
        .expect("the new process says it starts drained");
    // The new process reported ready (the handover happened) without registering: a
    // registration would have come before its readiness.
    let res = lameduck_testkit::get(s.admin, "/readyz")
        .await
        .expect("/readyz");
    let body = String::from_utf8_lossy(res.body()).into_owned();
    assert_eq!(res.status(), 503, "{body}");
    assert!(body.contains("operator drain"), "{body}");
    assert!(etcd.get(KEY).await.is_none(), "the key stays absent");
    assert_eq!(
        post_operator(s.admin, "/undrain", Some("s3cret")).await,
        200
    );
    assert!(
        etcd.until(KEY, SOON, |v| pid_of(v) == Some(new_pid)).await,
        "undrained, the new process registers"
    );
}

/// Kills a process that a test started indirectly (the new process of an upgrade).
struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}
