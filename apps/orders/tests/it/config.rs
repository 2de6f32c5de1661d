//! Configuration precedence, `--print-config`, and start-up failures.

use std::process::Command;

use crate::BIN;

fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("LAMEDUCK_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .expect("run binary")
}

#[test]
fn flags_beat_environment_which_beats_the_file_and_passwords_are_redacted() {
    let dir = std::env::temp_dir().join(format!("ld-orders-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("orders.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:7001\"\ndrain_delay = \"9s\"\nidle_grace = \"3s\"\naudit_fsync = \"each\"\n").expect("write");
    let out = run(
        &[
            "--config",
            file.to_str().unwrap(),
            "--print-config",
            "--listen",
            "127.0.0.1:7003",
        ],
        &[
            ("LAMEDUCK_LISTEN", "127.0.0.1:7002"),
            ("LAMEDUCK_DRAIN_DELAY", "5s"),
            (
                "LAMEDUCK_DATABASE_URL",
                "postgres://app:hunter2@db.internal:5432/orders",
            ),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen = \"127.0.0.1:7003\""),
        "flag wins: {text}"
    );
    assert!(
        text.contains("drain_delay = \"5s\""),
        "environment beats the file: {text}"
    );
    assert!(
        text.contains("idle_grace = \"3s\""),
        "the file beats defaults: {text}"
    );
    assert!(text.contains("audit_fsync = \"each\""), "{text}");
    assert!(
        text.contains("shutdown_timeout = \"20s\""),
        "defaults fill the rest: {text}"
    );
    assert!(!text.contains("hunter2"), "password shown: {text}");
    assert!(
        text.contains("postgres://app:*****@db.internal:5432/orders"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn secrets_in_every_url_are_redacted_when_printed() {
    let out = run(
        &[
            "--print-config",
            "--webhook-url",
            "http://hook:w3bh00k-pw@127.0.0.1:8090/hooks",
            "--payment-url",
            "http://t0k3n-as-user@127.0.0.1:8091",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for secret in ["w3bh00k-pw", "t0k3n-as-user"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert!(
        text.contains("http://hook:*****@127.0.0.1:8090/hooks"),
        "{text}"
    );
    assert!(text.contains("http://*****@127.0.0.1:8091"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_urls_are_not_logged_at_start_up() {
    let store = crate::Store::sqlite("redact-log");
    let s = store.start(&[
        "--webhook-url",
        "http://hook:w3bh00k-pw@127.0.0.1:9/hooks",
        "--payment-url",
        "http://p4y:p4y-pw@127.0.0.1:9",
    ]);
    crate::wait_ready(&s).await;
    let logs = s.logs().join("\n");
    assert!(
        logs.contains("payments on") && logs.contains("webhook"),
        "{logs}"
    );
    for secret in ["w3bh00k-pw", "p4y-pw"] {
        assert!(!logs.contains(secret), "{secret} logged: {logs}");
    }
}

#[test]
fn a_bad_config_file_or_value_exits_1_naming_it_and_bad_flags_exit_2() {
    let dir = std::env::temp_dir().join(format!("ld-orders-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "drain_delay = \"soon\"\n").expect("write");
    let out = run(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("soon"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let out = run(&["--config", "/nonexistent/orders.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/orders.toml"));
    let out = run(&["--database-url", "mysql://x"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_url"));
    let out = run(&["--quantity-of-nonsense"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--shutdown-timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unusable_database_location_exits_1_with_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("ld-orders-unwritable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // A regular file where the data directory should be: nothing can be created under it,
    // even by root.
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "x").expect("write");
    let data = blocker.join("data");
    let audit = dir.join("audit.log");
    let out = run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not-a-dir"), "names the location: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_grace_budget_too_small_for_the_stop_exits_1_naming_each_part() {
    let dir = std::env::temp_dir().join(format!("ld-orders-budget-{}", std::process::id()));
    let data = dir.to_str().unwrap().to_owned();
    let out = run(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
        &[("LAMEDUCK_GRACE_BUDGET", "10s")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [
        "grace budget is 10s",
        "shutdown timeout 20s",
        "hook close-database 3s",
        "hook finish-writes 3s",
        "margin 1s",
        "takes up to 29s",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn version_prints_the_version_and_the_build_id_of_the_file() {
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let id = lameduck_testkit::exe::build_id(std::path::Path::new(crate::BIN)).expect("build id");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "lameduck-orders {} (build id {id})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[cfg(not(feature = "registry"))]
#[test]
fn registry_settings_in_a_build_without_the_registry_exit_with_what_to_do() {
    // A flag or its variable: a usage error (2); a key in the file: a configuration error (1).
    for (args, env) in [
        (vec!["--etcd-endpoints", "http://127.0.0.1:2379"], vec![]),
        (vec!["--instance-id", "a"], vec![]),
        (vec![], vec![("LAMEDUCK_REGISTRY_TTL", "5s")]),
    ] {
        let out = run(&args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("built without the registry feature"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let dir = std::env::temp_dir().join(format!("ld-orders-noreg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("orders.toml");
    std::fs::write(&file, "registry_prefix = \"/x/\"\n").expect("config");
    let out = run(&["--config", file.to_str().expect("path")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("registry_prefix") && err.contains("built without the registry feature"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
