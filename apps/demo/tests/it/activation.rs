//! Socket activation: the demo serves on sockets passed by `systemd-socket-activate`
//! (package systemd) instead of binding.

use lameduck_testkit::{get, poll_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Command, Stdio};

use crate::{BIN, SOON};

/// Kills the launcher (and the demo it became) if the test fails midway.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs systemd-socket-activate (systemd): scripts/test runs it"]
async fn the_demo_serves_on_sockets_passed_by_systemd_socket_activate() {
    let (http, admin) = (free_port(), free_port());
    let child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &format!("127.0.0.1:{http}"),
            "-l",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--fdname=http:admin")
        .args(["--", BIN, "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (apt-get install systemd)");
    let mut child = KillOnDrop(child);
    let http_addr = ([127, 0, 0, 1], http).into();
    let admin_addr = ([127, 0, 0, 1], admin).into();
    // The first connection makes systemd-socket-activate exec the demo, which then accepts
    // it from the inherited socket (until the launcher listens, connects are refused).
    let res = poll_until(SOON, || async { get(http_addr, "/ping").await.ok() })
        .await
        .expect("served on the inherited socket");
    assert_eq!(res.status(), 200);
    let ok = poll_until(SOON, || async {
        (get(admin_addr, "/readyz").await.ok()?.status() == 200).then_some(())
    })
    .await;
    assert!(ok.is_some(), "admin served on the second inherited socket");
    // The demo replaced systemd-socket-activate by exec: same pid.
    let _ = kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + SOON;
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not exit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(status.code(), Some(0));
    let refused = get(http_addr, "/ping").await;
    assert!(
        refused.is_err_and(|e| e.is_refused()),
        "the socket is closed with the process"
    );
}

#[test]
fn malformed_activation_variables_are_a_start_up_error() {
    // LISTEN_PID names the child itself through a shell that execs the demo.
    let out = Command::new("sh")
        .args(["-c", &format!("LISTEN_PID=$$ LISTEN_FDS=abc exec {BIN} --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("LISTEN_FDS"), "{err}");
}
