//! Zero-downtime upgrades on SIGHUP under load: the new process inherits the listening
//! sockets, becomes ready, and only then does the old one drain. No request of any class
//! fails.

use lameduck_testkit::Exit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use lameduck_testkit::{poll_until, Spawned};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{start, SOON};

const UPGRADES: usize = 20;
const CONCURRENCY: &str = "8";

/// Start `lameduck-drill` (the library) against `addr` until `stop` fires; over TLS
/// trusting the CA in `ca`, when given.
pub(crate) fn drill(
    addr: SocketAddr,
    mode: &str,
    ca: Option<&std::path::Path>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<lameduck_drill::Report> {
    drill_with(addr, "/ping", mode, ca, &[], stop)
}

/// [`drill`] on `path`, with more of the drill's flags (`--rate R` for an open loop).
pub(crate) fn drill_with(
    addr: SocketAddr,
    path: &str,
    mode: &str,
    ca: Option<&std::path::Path>,
    load: &[&str],
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<lameduck_drill::Report> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{addr}{path}");
    let mut argv = vec![
        "lameduck-drill".to_string(),
        url,
        "--mode".into(),
        mode.into(),
        "--concurrency".into(),
        CONCURRENCY.into(),
        "--duration".into(),
        "120s".into(),
        "--quiet".into(),
    ];
    if let Some(ca) = ca {
        argv.extend(["--ca".to_string(), ca.display().to_string()]);
    }
    argv.extend(load.iter().map(|a| a.to_string()));
    let args = lameduck_drill::Args::try_parse_from(argv).expect("drill flags");
    tokio::spawn(async move {
        lameduck_drill::run_until(args, async move {
            let _ = stop.await;
        })
        .await
        .expect("drill")
    })
}

/// `false` once `pid` has exited (gone, or a zombie nobody reaped yet).
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(") ")
            .next()
            .is_some_and(|rest| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids of the new processes the upgrades so far handed over to, in order.
pub(crate) fn new_pids(s: &Spawned) -> Vec<u32> {
    s.logs()
        .iter()
        .filter(|l| l.contains("the new process is ready"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["new_pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// Upgrade `i` (counted from 1) of the process chain started as `s`: SIGHUP to `pid`, wait
/// for the `i`-th new process (recorded in `newest`) and for `pid` to exit; the new pid.
pub(crate) async fn upgrade_and_wait(
    s: &mut Spawned,
    i: usize,
    pid: u32,
    newest: &AtomicUsize,
) -> u32 {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGHUP);
    let next = poll_until(SOON, || async { new_pids(s).get(i - 1).copied() })
        .await
        .unwrap_or_else(|| panic!("upgrade {i} never completed"));
    newest.store(next as usize, Ordering::Relaxed);
    let deadline = Instant::now() + SOON;
    // The first process is the test's child; the later ones are not.
    while !(if i == 1 { s.has_exited() } else { !alive(pid) }) {
        assert!(
            Instant::now() < deadline,
            "old process {pid} did not exit after upgrade {i}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    next
}

/// Kills whatever process is newest if the test fails midway.
pub(crate) struct Newest(pub(crate) Arc<AtomicUsize>);

impl Drop for Newest {
    fn drop(&mut self) {
        let pid = self.0.load(Ordering::Relaxed) as i32;
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

async fn upgrades_under_load(mode: &str) {
    upgrades_under_load_with(mode, UPGRADES, &[], None).await;
}

/// `upgrades` SIGHUP upgrades under the drill's load in `mode`; the demo gets `extra`, and
/// the drill speaks TLS trusting `ca` when given.
pub(crate) async fn upgrades_under_load_with(
    mode: &str,
    upgrades: usize,
    extra: &[&str],
    ca: Option<&std::path::Path>,
) {
    let mut args = vec!["--log-format", "json"];
    args.extend_from_slice(extra);
    let mut s = start(&args);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let load = drill(s.http, mode, ca, stopped);
    let mut pid = s.pid();
    let mut pids = vec![pid];
    for i in 1..=upgrades {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGHUP);
        let next = poll_until(SOON, || async { new_pids(&s).get(i - 1).copied() })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "upgrade {i} never completed; logs:\n{}",
                    s.logs().join("\n")
                )
            });
        newest.store(next as usize, Ordering::Relaxed);
        let deadline = Instant::now() + SOON;
        loop {
            let exited = if i == 1 { s.has_exited() } else { !alive(pid) };
            if exited {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "old process {pid} did not exit after upgrade {i}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pid = next;
        pids.push(pid);
    }
    // Let the last process serve a moment before the drill stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stop.send(());
    let report = load.await.expect("drill task");
    eprintln!(
        "{mode}: {} requests, outcomes {:?}, pids {pids:?}",
        report.requests, report.outcomes
    );
    assert!(
        report.requests > 50 * upgrades as u64,
        "the drill ran ({} requests)",
        report.requests
    );
    assert_eq!(
        report.errors, 0,
        "failed requests across {upgrades} upgrades: {:?}",
        report.outcomes
    );
    let mut unique = pids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        upgrades + 1,
        "every upgrade gave a new pid: {pids:?}"
    );
    // The final process exits 0 on SIGTERM.
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let report = s
        .wait_for_log(&["shutdown report", "\"reason\":\"signal\""], SOON)
        .await
        .expect("the final process drains on SIGTERM");
    assert!(report.contains("\"exit_code\":0"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_lose_no_request_over_http2() {
    upgrades_under_load("h2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_lose_no_request_on_keep_alive_connections() {
    upgrades_under_load("keep-alive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_lose_no_request_with_a_connection_per_request() {
    upgrades_under_load("conn-per-request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_over_http2_goes_through_upgrades_on_few_new_connections() {
    // Each upgrade's GOAWAY hands back the streams above its last stream id; they go out
    // again on a connection opened since, shared, not one each.
    let mut s = start(&["--log-format", "json"]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let load = drill_with(
        s.http,
        "/work?ms=20",
        "h2",
        None,
        &["--rate", "1000"],
        stopped,
    );
    let mut pid = s.pid();
    for i in 1..=5 {
        // Each process serves a while first, with streams in flight when its GOAWAY comes.
        let served = poll_until(SOON, || async {
            (crate::answered(&s, "/work").await >= 300).then_some(())
        })
        .await;
        assert!(served.is_some(), "process {pid} served the load");
        pid = upgrade_and_wait(&mut s, i, pid, &newest).await;
    }
    let _ = stop.send(());
    let report = load.await.expect("drill task");
    eprintln!("{}", lameduck_drill::summary(&report));
    assert_eq!(report.errors, 0, "{:?}", report.outcomes);
    assert!(!report.client_saturated, "the client kept up");
    assert!(
        report.peak_connections < 100,
        "8 first connections and a few new ones per upgrade, not one per handed-back request: {}",
        report.peak_connections
    );
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_the_new_main_pid_then_stopping() {
    let dir = std::env::temp_dir().join(format!("ld-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).expect("bind notify socket");
    let recv = || async {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(SOON, sock.recv(&mut buf))
            .await
            .expect("a notification")
            .expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let s = lameduck_testkit::Spawned::start_env(
        crate::BIN,
        &["--log-format", "json"],
        &[("NOTIFY_SOCKET", path.to_str().expect("path"))],
    )
    .expect("start");
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    assert_eq!(recv().await, "READY=1\n");
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let msg = recv().await;
    let new_pid = poll_until(SOON, || async { new_pids(&s).first().copied() })
        .await
        .expect("upgraded");
    newest.store(new_pid as usize, Ordering::Relaxed);
    assert_eq!(
        msg,
        format!("MAINPID={new_pid}\nREADY=1\n"),
        "the new process claims the service"
    );
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
    assert_eq!(
        recv().await,
        "STOPPING=1\n",
        "only the real stop is announced"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// What each open descriptor of `pid` refers to (`socket:[inode]`, `pipe:[inode]`, a path).
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The `socket:[inode]` names of every listening TCP socket on this machine.
fn listening_sockets() -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // Column 3 is the state (0A: LISTEN), column 9 the inode.
                    match (cols.get(3), cols.get(9)) {
                        (Some(&"0A"), Some(inode)) => Some(format!("socket:[{inode}]")),
                        _ => None,
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_process_inherits_only_the_listeners() {
    let s = start(&["--log-format", "json"]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    // Client connections to the old process: descriptors a careless exec would leak. Once
    // each has been answered the old process holds all five, and it has finished starting
    // (its descriptor count right after the `listening` line can still grow).
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut c = lameduck_testkit::connect_h1(s.http).await.expect("connect");
        assert_eq!(c.get("/ping").await.expect("ping").status(), 200);
        conns.push(c);
    }
    let old = fd_targets(s.pid());
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let new_pid = poll_until(SOON, || async { new_pids(&s).first().copied() })
        .await
        .expect("upgraded");
    newest.store(new_pid as usize, Ordering::Relaxed);
    let new = fd_targets(new_pid);
    assert!(
        new.len() + 5 <= old.len(),
        "the new process has the descriptors of a fresh start, not the old one's \
         connections: old {old:?}, new {new:?}"
    );
    // Sockets both processes hold are the listeners, and nothing else.
    let listeners = listening_sockets();
    let shared: Vec<&String> = new
        .iter()
        .filter(|t| t.starts_with("socket:") && old.contains(t) && !listeners.contains(t))
        .collect();
    assert!(
        shared.is_empty(),
        "sockets of the old process, not listeners, in the new one: {shared:?}"
    );
    drop(conns);
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

/// The children of `pid` (for a process started through a wrapper).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, unshare and nsenter (util-linux): scripts/test runs it"]
async fn as_pid_1_a_sighup_is_refused_and_sigterm_still_drains() {
    // A new PID namespace makes the demo PID 1, as in a container (util-linux unshare, root).
    let s = Spawned::start_cmd(
        "unshare",
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            crate::BIN,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &[],
    )
    .expect("unshare (util-linux, needs root)");
    let demo = poll_until(SOON, || async { children(s.pid()).first().copied() })
        .await
        .expect("the demo runs under unshare");
    s.wait_for_log(&["running as PID 1"], SOON)
        .await
        .expect("the demo knows it is PID 1");
    let _ = kill(Pid::from_raw(demo as i32), Signal::SIGHUP);
    let refused = s
        .wait_for_log(&["upgrade refused"], SOON)
        .await
        .expect("the SIGHUP is refused");
    assert!(
        refused.contains("PID 1") && refused.contains("rolling update"),
        "{refused}"
    );
    assert_eq!(
        lameduck_testkit::get(s.http, "/ping")
            .await
            .expect("still serving")
            .status(),
        200
    );
    // An orphan in the namespace is reparented to the demo, which must reap it.
    let status = std::process::Command::new("nsenter")
        .args([
            "-t",
            &demo.to_string(),
            "-p",
            "-m",
            "--",
            "sh",
            "-c",
            "sleep 0.2 & exit 0",
        ])
        .status()
        .expect("nsenter (util-linux)");
    assert!(status.success());
    let adopted = poll_until(SOON, || async {
        (!children(demo).is_empty()).then_some(())
    })
    .await;
    assert!(adopted.is_some(), "the orphan was reparented to the demo");
    let reaped = poll_until(SOON, || async { children(demo).is_empty().then_some(()) }).await;
    assert!(
        reaped.is_some(),
        "the orphan was reaped, not left a zombie: {:?}",
        children(demo)
    );
    let _ = kill(Pid::from_raw(demo as i32), Signal::SIGTERM);
    let report = s
        .wait_for_log(&["shutdown report"], SOON)
        .await
        .expect("PID 1 drains on SIGTERM");
    assert!(report.contains("\"exit_code\":0"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_handover_the_new_process_shows_whom_it_took_over_from() {
    let s = start(&["--log-format", "json"]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let old = s.pid();
    let _ = kill(Pid::from_raw(old as i32), Signal::SIGHUP);
    let new_pid = poll_until(SOON, || async { new_pids(&s).first().copied() })
        .await
        .expect("upgraded");
    newest.store(new_pid as usize, Ordering::Relaxed);
    // The admin socket is shared: once the old process has let go, the new one answers.
    let want = format!("took over from pid {old} at ");
    let shown = poll_until(SOON, || async {
        let res = lameduck_testkit::get(s.admin, "/upgrade").await.ok()?;
        let text = String::from_utf8_lossy(res.body()).into_owned();
        text.contains(&want).then_some(text)
    })
    .await;
    let shown = shown.expect("/upgrade names the old pid");
    assert!(
        shown.contains(&format!("this process ({new_pid}) serves")),
        "{shown}"
    );
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_handover_drain_does_not_abandon_the_requests_in_flight() {
    let mut s = start(&["--log-format", "json"]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let http = s.http;
    let slow = tokio::spawn(async move {
        let mut c = lameduck_testkit::connect_h1(http).await.expect("connect");
        c.get("/work?ms=1500").await
    });
    crate::wait_in_flight(&s, 1).await;
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let new_pid = poll_until(SOON, || async { new_pids(&s).first().copied() })
        .await
        .expect("upgraded");
    newest.store(new_pid as usize, Ordering::Relaxed);
    // `systemctl stop` during the upgrade's drain: the old process is already draining.
    s.signal(Signal::SIGTERM);
    s.wait_for_log(&["already draining after a handover"], SOON)
        .await
        .expect("the first SIGTERM is noted, not obeyed");
    let res = slow
        .await
        .expect("task")
        .expect("the in-flight request is answered");
    assert_eq!(res.status(), 200);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process exits clean"
    );
    let report = s
        .wait_for_log(&["shutdown report"], SOON)
        .await
        .expect("report");
    assert!(!report.contains("second signal"), "{report}");
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_follows_the_upgrade_and_goes_with_a_clean_exit() {
    let dir = std::env::temp_dir().join(format!("ld-demo-pid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("demo.pid");
    let mut s = start(&["--pid-file", path.to_str().unwrap()]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let read = || {
        std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    };
    let first = poll_until(SOON, || async { read() }).await;
    assert_eq!(first, Some(s.pid()), "written once serving");
    let _ = kill(Pid::from_raw(s.pid() as i32), Signal::SIGHUP);
    let new_pid = poll_until(SOON, || async { new_pids(&s).first().copied() })
        .await
        .expect("upgraded");
    newest.store(new_pid as usize, Ordering::Relaxed);
    let now = poll_until(SOON, || async { read().filter(|p| *p == new_pid) }).await;
    assert_eq!(now, Some(new_pid), "the new process wrote its own");
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process drains and exits"
    );
    assert_eq!(
        read(),
        Some(new_pid),
        "the old process left the new pid in place"
    );
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
    let gone = poll_until(SOON, || async { (!path.exists()).then_some(()) }).await;
    assert!(gone.is_some(), "a clean exit removes its own pid file");
    let _ = std::fs::remove_dir_all(dir);
}
