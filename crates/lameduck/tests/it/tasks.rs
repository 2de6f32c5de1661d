//! Background tasks in a real server's drain: told to stop in their group, waited for,
//! abandoned at the deadline, restarted or stopping the process on failure.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use lameduck::exit;
use lameduck::lifecycle::TaskStatus;
use lameduck::tasks::{OnFailure, StopWhen, Task};
use lameduck_testkit::get as http_get;

use crate::{quick, run, SOON};

#[tokio::test]
async fn a_task_that_honours_stop_soon_ends_the_drain_when_it_returns() {
    // It takes 300 ms to finish what it is doing once told to stop.
    let task = Task::new("relay", |ctx| async move {
        ctx.stop_soon().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    });
    let (_, trigger, report) = run(
        quick().shutdown_timeout(Duration::from_secs(10)).task(task),
        Router::new(),
    )
    .await;
    let t0 = Instant::now();
    trigger.drain();
    let report = tokio::time::timeout(SOON, report)
        .await
        .expect("exits")
        .expect("task");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "the drain waited for the task: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "and no longer: {took:?}");
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.tasks[0].status, TaskStatus::Stopped);
    assert_eq!(report.exit_code(), exit::OK);
}

#[tokio::test]
async fn a_task_that_ignores_stop_soon_is_abandoned_at_the_deadline_and_named() {
    let task = Task::new("stubborn", |_| std::future::pending());
    let b = quick()
        .shutdown_timeout(Duration::from_millis(300))
        .task(task);
    let (_, trigger, report) = run(b, Router::new()).await;
    let t0 = Instant::now();
    trigger.drain();
    let report = tokio::time::timeout(SOON, report)
        .await
        .expect("exits")
        .expect("task");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(report.tasks[0].name, "stubborn");
    assert_eq!(report.tasks[0].status, TaskStatus::Abandoned);
    assert!(report.forced);
    assert!(
        report.reason.contains("deadline passed"),
        "{}",
        report.reason
    );
    assert_eq!(report.exit_code(), exit::FORCED_SHUTDOWN);
}

#[tokio::test]
async fn an_after_requests_task_still_runs_while_a_request_finishes() {
    // The request feeds the task: the task must outlive it.
    let seen = Arc::new(AtomicUsize::new(0));
    let (s1, s2) = (seen.clone(), seen.clone());
    let task = Task::new("consumer", move |ctx| {
        let seen = s1.clone();
        async move {
            ctx.stop_soon().await;
            // Told to stop only once the request below has finished.
            seen.store(seen.load(Ordering::SeqCst) * 10, Ordering::SeqCst);
            Ok(())
        }
    })
    .stop_when(StopWhen::AfterRequests);
    let in_handler = Arc::new(tokio::sync::Notify::new());
    let entered = in_handler.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            let (seen, entered) = (s2.clone(), entered.clone());
            async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                seen.store(1, Ordering::SeqCst);
                "done"
            }
        }),
    );
    let (addr, trigger, report) = run(quick().task(task), app).await;
    let req = tokio::spawn(async move { http_get(addr, "/slow").await });
    // The request is in flight before the drain starts.
    in_handler.notified().await;
    trigger.drain();
    assert_eq!(req.await.expect("join").expect("response").status(), 200);
    let report = tokio::time::timeout(SOON, report)
        .await
        .expect("exits")
        .expect("task");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        10,
        "stopped after the request, not before"
    );
    assert_eq!(report.exit_code(), exit::OK);
}

#[tokio::test]
async fn a_panicking_task_restarts_and_the_metrics_count_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let task = Task::new("flaky", move |ctx| {
        let r = r.clone();
        async move {
            if r.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("flaky start");
            }
            ctx.stop_soon().await;
            Ok(())
        }
    });
    let b = quick().task(task).admin("127.0.0.1:0".parse().unwrap());
    let server = b
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    let admin = server.admin_addr().expect("admin").expect("addr");
    let trigger = server.trigger();
    let report = tokio::spawn(server.serve(Router::new()));
    // Two panics, 100 + 200 ms of back-off, then it runs.
    let started = lameduck_testkit::poll_until(SOON, || async {
        (runs.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert!(started.is_some(), "restarted twice");
    let metrics = lameduck_testkit::poll_until(SOON, || async {
        let res = http_get(admin, "/metrics").await.ok()?;
        let text = String::from_utf8_lossy(res.body()).into_owned();
        text.contains("lameduck_tasks_running{task=\"flaky\"} 1")
            .then_some(text)
    })
    .await
    .expect("the task runs");
    assert!(
        metrics.contains("lameduck_task_restarts_total{task=\"flaky\"} 2"),
        "{metrics}"
    );
    trigger.drain();
    let report = tokio::time::timeout(SOON, report)
        .await
        .expect("exits")
        .expect("task");
    assert_eq!(report.tasks[0].status, TaskStatus::Stopped);
    assert_eq!(report.tasks[0].restarts, 2);
    assert_eq!(report.exit_code(), exit::OK);
}

#[tokio::test]
async fn a_failing_task_with_the_stop_policy_stops_the_process_with_exit_1() {
    let task = Task::new("critical", |_| async { Err("the queue is gone".into()) })
        .on_failure(OnFailure::StopProcess);
    let (_, _trigger, report) = run(quick().task(task), Router::new()).await;
    // No signal: the task's failure starts the drain.
    let report = tokio::time::timeout(SOON, report)
        .await
        .expect("exits")
        .expect("task");
    assert_eq!(
        report.tasks[0].status,
        TaskStatus::StoppedTheProcess("the queue is gone".into())
    );
    assert_eq!(report.reason, "task critical failed");
    assert_eq!(report.exit_code(), exit::RUNTIME_ERROR);
}

#[tokio::test]
async fn two_tasks_with_one_name_are_refused_at_bind() {
    let b = quick()
        .task(Task::new("relay", |_| async { Ok(()) }))
        .task(Task::new("relay", |_| async { Ok(()) }));
    let err = b
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("two background tasks are named \"relay\""),
        "{err}"
    );
}
