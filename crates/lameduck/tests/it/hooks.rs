//! Hooks run in phase order, LIFO within a phase, with timeouts honoured.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use lameduck::hooks::HookPhase;
use lameduck::hooks::HookStatus;

use crate::{quick, run, SOON};

type Log = Arc<Mutex<Vec<&'static str>>>;

fn rec(
    log: &Log,
    name: &'static str,
) -> impl FnOnce() -> std::future::Ready<Result<(), lameduck::hooks::HookError>> + Send + 'static {
    let log = log.clone();
    move || {
        log.lock().unwrap().push(name);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn hooks_run_in_phase_order_lifo_within_a_phase() {
    let log: Log = Arc::default();
    let t = Duration::from_secs(1);
    let b = quick()
        .hook(HookPhase::Final, "flush-logs", t, rec(&log, "flush-logs"))
        .hook(HookPhase::AfterDrain, "close-db", t, rec(&log, "close-db"))
        .hook(
            HookPhase::BeforeDrain,
            "deregister",
            t,
            rec(&log, "deregister"),
        )
        .hook(
            HookPhase::AfterDrain,
            "flush-outbox",
            t,
            rec(&log, "flush-outbox"),
        );
    let (_, trigger, task) = run(b, Router::new()).await;
    trigger.drain();
    let report = tokio::time::timeout(SOON, task)
        .await
        .expect("exits")
        .expect("task");
    assert_eq!(
        *log.lock().unwrap(),
        ["deregister", "flush-outbox", "close-db", "flush-logs"]
    );
    let names: Vec<_> = report.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        ["deregister", "flush-outbox", "close-db", "flush-logs"]
    );
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn a_timed_out_hook_makes_exit_3_and_the_others_still_run() {
    let log: Log = Arc::default();
    let b = quick()
        .hook(
            HookPhase::Final,
            "flush-logs",
            Duration::from_secs(1),
            rec(&log, "flush-logs"),
        )
        .hook(
            HookPhase::AfterDrain,
            "hangs",
            Duration::from_millis(100),
            || async {
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        .hook(
            HookPhase::AfterDrain,
            "fails",
            Duration::from_secs(1),
            || async { Err("pool busy".into()) },
        );
    let (_, trigger, task) = run(b, Router::new()).await;
    trigger.drain();
    let report = tokio::time::timeout(SOON, task)
        .await
        .expect("exits")
        .expect("task");
    let statuses: Vec<_> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.status.clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("fails", HookStatus::Failed("pool busy".into())),
            ("hangs", HookStatus::TimedOut),
            ("flush-logs", HookStatus::Ok)
        ]
    );
    assert!(report.hooks[1].duration < Duration::from_secs(1));
    assert_eq!(*log.lock().unwrap(), ["flush-logs"]);
    assert_eq!(report.exit_code(), lameduck::exit::FORCED_SHUTDOWN);
}

#[tokio::test]
async fn a_drain_requested_before_serving_still_runs_the_hooks() {
    let log: Log = Arc::default();
    let b = quick().hook(
        HookPhase::AfterDrain,
        "close-db",
        Duration::from_secs(1),
        rec(&log, "close-db"),
    );
    let server = b
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    server.trigger().drain();
    let report = tokio::time::timeout(SOON, server.serve(Router::new()))
        .await
        .expect("exits");
    assert_eq!(*log.lock().unwrap(), ["close-db"]);
    assert_eq!(report.exit_code(), 0);
}
