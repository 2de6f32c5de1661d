//! Real clients from another stack: the Python programs in `tests/py/`, run with the
//! interpreter in `LAMEDUCK_TEST_PYTHON` (a virtual environment that `scripts/test` makes from
//! the pinned `tests/py/requirements.txt`).

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use lameduck_testkit::poll_until;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::upgrade::Newest;
use crate::{start, SOON};

/// The interpreter of the test environment.
fn python() -> String {
    std::env::var("LAMEDUCK_TEST_PYTHON")
        .expect("LAMEDUCK_TEST_PYTHON names the test environment's python (scripts/test sets it)")
}

/// A program of `tests/py/`.
fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/py")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python with tests/py/requirements.txt (python3-venv; LAMEDUCK_TEST_PYTHON): scripts/test runs it"]
async fn urllib3s_pool_loses_no_request_across_sighup_upgrades() {
    let mut s = start(&["--log-format", "json"]);
    let newest = Arc::new(AtomicUsize::new(s.pid() as usize));
    let _cleanup = Newest(newest.clone());
    let url = format!("http://{}/ping", s.http);
    let client = tokio::process::Command::new(python())
        .arg(script("pooled_get.py"))
        .args([url.as_str(), "6", "4"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the Python client");
    let mut pid = s.pid();
    for i in 1..=3 {
        // Each process serves the client's pool a while before its upgrade.
        let serving = poll_until(SOON, || async {
            (crate::answered(&s, "/ping").await >= 200).then_some(())
        })
        .await;
        assert!(
            serving.is_some(),
            "the client's requests reach process {pid}"
        );
        pid = crate::upgrade::upgrade_and_wait(&mut s, i, pid, &newest).await;
    }
    let out = tokio::time::timeout(SOON, client.wait_with_output())
        .await
        .expect("the client ends after its 6 s")
        .expect("client output");
    assert!(out.status.success(), "{:?}", out.status);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(report["failed"], 0, "urllib3 saw failures: {report}");
    assert!(report["requests"].as_u64().unwrap_or(0) > 600, "{report}");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}
