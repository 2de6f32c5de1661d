//! Inherited descriptors are taken once per process, however often the public functions
//! are called: a second `from_env` finds nothing, a second `notify_ready` writes nothing.
//! Run in a child process (this test binary again, one test selected), because the
//! descriptors and the flags are the process's.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};
use lameduck::server::activation::{self, LISTEN_FDS_START, PARENT_ENV, READY_FD_ENV};

/// Set in the child: the test below then acts as the process that inherited sockets.
const CHILD_ENV: &str = "LAMEDUCK_TEST_ACTIVATION_CHILD";
const CHILD_TEST: &str =
    "activation::as_the_new_process_take_the_sockets_twice_and_report_ready_twice";

#[test]
fn as_the_new_process_take_the_sockets_twice_and_report_ready_twice() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // Only meaningful in the child the next test starts.
    }
    let first = activation::from_env()
        .expect("well-formed variables")
        .expect("the sockets, the first time");
    let http = first.http.as_ref().expect("the http socket");
    assert!(http.local_addr().is_ok());
    assert_eq!(
        first.upgraded_from,
        Some(std::os::unix::process::parent_id())
    );
    let second = activation::from_env().expect("no error the second time");
    assert!(
        second.is_none(),
        "the second call finds nothing: {second:?}"
    );
    activation::notify_ready();
    activation::notify_ready();
    drop(first);
}

#[test]
fn inherited_descriptors_are_taken_once_and_ready_is_written_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
    cmd.args([CHILD_TEST, "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http")
        .env(PARENT_ENV, std::process::id().to_string())
        .env(READY_FD_ENV, (LISTEN_FDS_START + 1).to_string())
        .env_remove("LISTEN_PID")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.fd_mappings(vec![
        FdMapping {
            parent_fd: OwnedFd::from(listener),
            child_fd: LISTEN_FDS_START,
        },
        FdMapping {
            parent_fd: OwnedFd::from(writer),
            child_fd: LISTEN_FDS_START + 1,
        },
    ])
    .expect("map the descriptors");
    let child = cmd.spawn().expect("start the child");
    // This process's copies of the mapped descriptors, the pipe's write end among them.
    drop(cmd);
    let mut text = String::new();
    reader.read_to_string(&mut text).expect("read the pipe");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "the child's assertions held: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "READY=1\n", "readiness written once");
}
