//! Upgrades as operators deploy: a binary replaced with `mv`, a switched `releases/current`
//! symlink, `--upgrade-exec`, a deleted binary; the operator's drain through an upgrade.
//! Each release is a copy of the demo whose GNU build id differs, so `/upgrade` and
//! `/proc/PID/exe` tell which file serves.

use lameduck_testkit::Exit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lameduck_testkit::exe::{build_id, release_copy};
use lameduck_testkit::{get, poll_until, post_operator, Spawned};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::upgrade::{alive, children, new_pids, Newest};
use crate::{admin_status, BIN, SOON};

/// A directory for one test's releases, removed on drop.
struct Releases(PathBuf);

impl Releases {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ld-deploy-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("releases dir");
        Self(dir)
    }

    /// `DIR/sub/lameduck-demo`: the demo itself (`tag` 0) or a copy with its own build id;
    /// returns the path and the build id.
    fn release(&self, sub: &str, tag: u8) -> (PathBuf, String) {
        let dir = self.0.join(sub);
        std::fs::create_dir_all(&dir).expect("release dir");
        let path = dir.join("lameduck-demo");
        let id = if tag == 0 {
            std::fs::copy(BIN, &path).expect("copy the demo");
            build_id(&path).expect("the demo has a build id")
        } else {
            release_copy(Path::new(BIN), &path, tag).expect("a patched copy")
        };
        (path, id)
    }
}

impl Drop for Releases {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start `exe` on port 0 with JSON logs, `extra` flags and `env`; the newest process is
/// killed when the returned guard drops.
fn start_release(exe: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Spawned, Newest) {
    let mut args = vec!["--log-format", "json"];
    args.extend_from_slice(extra);
    let s = Spawned::start_env(exe.to_str().expect("utf-8 path"), &args, env)
        .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
    let newest = Newest(Arc::new(AtomicUsize::new(s.pid() as usize)));
    (s, newest)
}

/// `GET /upgrade`'s text once it contains `want` (the admin socket is shared: after a
/// handover the new process answers).
async fn upgrade_status(s: &Spawned, want: &str) -> String {
    let shown = poll_until(SOON, || async {
        let res = get(s.admin, "/upgrade").await.ok()?;
        let text = String::from_utf8_lossy(res.body()).into_owned();
        text.contains(want).then_some(text)
    })
    .await;
    shown.unwrap_or_else(|| {
        panic!(
            "/upgrade never showed {want:?}; logs:\n{}",
            s.logs().join("\n")
        )
    })
}

/// SIGHUP the process `s` started; the new process's pid once the old one exited 0.
async fn upgrade(s: &mut Spawned, newest: &Newest) -> u32 {
    let old = s.pid();
    s.signal(Signal::SIGHUP);
    let new_pid = poll_until(SOON, || async { new_pids(s).first().copied() })
        .await
        .unwrap_or_else(|| panic!("no handover; logs:\n{}", s.logs().join("\n")));
    newest.0.store(new_pid as usize, Ordering::Relaxed);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "the old process {old} exits 0"
    );
    new_pid
}

/// What `/proc/PID/exe` names: the file the process runs.
fn running_file(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/PID/exe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_runs_the_binary_that_mv_put_in_place() {
    let r = Releases::new("mv");
    let (path, old_id) = r.release("bin", 0);
    let (mut s, newest) = start_release(&path, &[], &[]);
    let before = upgrade_status(&s, "no upgrade yet").await;
    assert!(before.contains(&format!("build_id={old_id}")), "{before}");
    // The usual atomic deploy: the new binary written beside the old, renamed over it.
    let staged = r.0.join("bin/lameduck-demo.new");
    let new_id = release_copy(Path::new(BIN), &staged, 0x5a).expect("new release");
    assert_ne!(new_id, old_id);
    std::fs::rename(&staged, &path).expect("mv");
    let old = s.pid();
    let new_pid = upgrade(&mut s, &newest).await;
    let shown = upgrade_status(&s, &format!("took over from pid {old}")).await;
    assert!(
        shown.contains(&format!("build_id={new_id}")),
        "the new build serves: {shown}"
    );
    assert!(
        shown.contains(&format!("exe={}", path.display())),
        "{shown}"
    );
    assert!(shown.contains("version=0.1.0"), "{shown}");
    assert_eq!(
        running_file(new_pid),
        path,
        "the new file, not a deleted inode"
    );
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_follows_a_switched_release_symlink() {
    let r = Releases::new("symlink");
    let (_, v1_id) = r.release("v1", 0);
    let (v2, v2_id) = r.release("v2", 0x33);
    let current = r.0.join("current");
    std::os::unix::fs::symlink("v1", &current).expect("current -> v1");
    let exe = current.join("lameduck-demo");
    let (mut s, newest) = start_release(&exe, &[], &[]);
    let before = upgrade_status(&s, "no upgrade yet").await;
    assert!(before.contains(&format!("build_id={v1_id}")), "{before}");
    // Switch atomically: a new link renamed over the old one.
    let next = r.0.join("current.next");
    std::os::unix::fs::symlink("v2", &next).expect("link");
    std::fs::rename(&next, &current).expect("switch current -> v2");
    let new_pid = upgrade(&mut s, &newest).await;
    let shown = upgrade_status(&s, "took over from pid").await;
    assert!(
        shown.contains(&format!("build_id={v2_id}")),
        "release v2 serves: {shown}"
    );
    assert!(shown.contains(&format!("exe={}", exe.display())), "{shown}");
    assert_eq!(running_file(new_pid), v2);
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_exec_names_the_binary_an_upgrade_starts() {
    let r = Releases::new("exec");
    let (a, _) = r.release("a", 0);
    let (c, c_id) = r.release("c", 0x77);
    let (mut s, newest) = start_release(&a, &["--upgrade-exec", c.to_str().expect("path")], &[]);
    let new_pid = upgrade(&mut s, &newest).await;
    let shown = upgrade_status(&s, "took over from pid").await;
    assert!(shown.contains(&format!("build_id={c_id}")), "{shown}");
    assert!(shown.contains(&format!("exe={}", c.display())), "{shown}");
    assert_eq!(running_file(new_pid), c);
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_binary_is_gone_is_refused_before_anything_starts() {
    let r = Releases::new("gone");
    let (path, _) = r.release("bin", 0);
    let (mut s, _newest) = start_release(&path, &[], &[]);
    crate::wait_ready(&s).await;
    std::fs::remove_file(&path).expect("rm");
    s.signal(Signal::SIGHUP);
    let refused = s
        .wait_for_log(&["upgrade refused"], SOON)
        .await
        .unwrap_or_else(|| panic!("no refusal; logs:\n{}", s.logs().join("\n")));
    assert!(
        refused.contains(&path.display().to_string()) && refused.contains("No such file"),
        "names the path and why: {refused}"
    );
    let shown = upgrade_status(&s, "refused").await;
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(
        !s.logs().iter().any(|l| l.contains("new process started")),
        "nothing was started"
    );
    assert!(children(s.pid()).is_empty(), "no child process");
    let res = get(s.http, "/ping").await.expect("still serving");
    assert_eq!(res.status(), 200);
    assert_eq!(admin_status(&s, "/readyz").await, 200);
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

/// `/readyz`'s status and body.
async fn readyz(s: &Spawned) -> (u16, String) {
    let res = get(s.admin, "/readyz").await.expect("/readyz");
    (
        res.status().as_u16(),
        String::from_utf8_lossy(res.body()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_drain_passes_to_the_new_process_and_undrain_resumes() {
    let (mut s, newest) = start_release(Path::new(BIN), &[], &[("LAMEDUCK_ADMIN_TOKEN", "s3cret")]);
    crate::wait_ready(&s).await;
    assert_eq!(post_operator(s.admin, "/drain", Some("s3cret")).await, 200);
    let new_pid = upgrade(&mut s, &newest).await;
    s.wait_for_log(&["starting drained"], SOON)
        .await
        .expect("the new process says it starts drained");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("operator drain"), "{body}");
    let res = get(s.http, "/ping").await.expect("serves while drained");
    assert_eq!(res.status(), 200);
    assert_eq!(
        post_operator(s.admin, "/undrain", Some("s3cret")).await,
        200
    );
    assert_eq!(readyz(&s).await.0, 200, "undrained");
    // Undrained, its own upgrade passes no drain on (the variable it inherited is removed).
    let _ = kill(Pid::from_raw(new_pid as i32), Signal::SIGHUP);
    let third = poll_until(SOON, || async { new_pids(&s).get(1).copied() })
        .await
        .expect("a second handover");
    newest.0.store(third as usize, Ordering::Relaxed);
    let gone = poll_until(SOON, || async { (!alive(new_pid)).then_some(()) }).await;
    assert!(
        gone.is_some(),
        "the second process exits after its handover"
    );
    let shown = upgrade_status(&s, &format!("took over from pid {new_pid}")).await;
    assert!(shown.contains(&format!("({third}) serves")), "{shown}");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 200, "{body}");
    let _ = kill(Pid::from_raw(third as i32), Signal::SIGTERM);
}
