//! `lameduck-orders`: the reference lameduck service, an orders API on SQLite (default) or
//! PostgreSQL that loses no acknowledged order through shutdowns and crashes.
//!
//! - a 201 is sent only after the order is committed (fsync'd) and its audit line is on
//!   disk;
//! - `Idempotency-Key` makes retries safe, also after a crash between commit and response;
//! - shutdown order: stop accepting -> drain requests -> finish writes -> fsync the audit
//!   log -> checkpoint and close the database -> flush logs, each a hook with a timeout.

pub mod api;
pub mod audit;
pub mod config;
pub mod db;
pub mod model;
pub mod ops;
pub mod outbox;
pub mod payments;
pub mod redact;
pub mod relay;
pub mod space;
pub mod sql;
pub mod writer;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::response::IntoResponse as _;
use lameduck::admin::ReadinessCheck;
use lameduck::cli;
use lameduck::hooks::HookPhase;
use lameduck::lifecycle::Lifecycle;
use lameduck::server::Server;
use tokio_util::task::TaskTracker;

use crate::config::{Args, Settings};

/// Timeout of the hook that waits for writes in progress.
pub const FINISH_WRITES_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of the audit log's final fsync.
pub const AUDIT_SYNC_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout of the database checkpoint and close.
pub const DB_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of the final flush of stdout.
pub const FLUSH_LOGS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `/readyz` waits for the database.
pub const READINESS_DB_TIMEOUT: Duration = Duration::from_secs(1);

/// Parse flags, environment and config file, run, and map the outcome to the exit-code
/// table.
pub fn main_impl() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    // A registry flag in a build without the registry: a usage error, as for any flag
    // the binary does not take.
    if let Err(e) = config::refuse_registry_settings(&args.settings, "flag") {
        eprintln!("lameduck-orders: {e}");
        return ExitCode::from(lameduck::exit::USAGE);
    }
    let settings = match load(&args) {
        Ok(s) => s,
        // A bad configuration file or value is a start-up error (exit 1); clap already
        // answered malformed flags with exit 2.
        Err(e) => return cli::fail("lameduck-orders", format_args!("{e:#}")),
    };
    if args.print_config {
        print!("{}", settings.to_redacted_toml());
        return ExitCode::from(lameduck::exit::OK);
    }
    // Only a subscriber installed already can fail this (no file, no exporter).
    let options = lameduck::logs::LogOptions::new(settings.server.log_format(), "info,sqlx=warn");
    let logs = lameduck::logs::init(options).unwrap_or_default();
    cli::block_on_main("lameduck-orders", run(settings, logs))
}

fn load(args: &Args) -> anyhow::Result<Settings> {
    let file = args.config.as_deref().map(config::read_file).transpose()?;
    if let Some(f) = &file {
        config::refuse_registry_settings(f, "setting in the configuration file")?;
    }
    let mut settings = config::resolve(args.settings.clone(), file)?;
    settings.upgrade_exec = args.upgrade.upgrade_exec.clone();
    Ok(settings)
}

/// Run the service until it has shut down; returns the exit code.
///
/// # Errors
/// Start-up failures: signal handlers, audit log, database, binding.
pub async fn run(settings: Settings, logs: lameduck::logs::Logs) -> anyhow::Result<u8> {
    let lifecycle = Lifecycle::new()
        .with_os_signals()
        .context("failed to install signal handlers")?;
    let (audit, audit_thread) = audit::AuditLog::open(&settings.audit_log, settings.audit_fsync)
        .with_context(|| format!("cannot open audit log {}", settings.audit_log.display()))?;
    tracing::info!(database = %redact::redact_url(&settings.database_url), "opening database");
    let db = db::Db::connect(
        &settings.database_url,
        settings.db_max_connections,
        audit.clone(),
        settings.webhook_url.is_some(),
        (settings.write_batching == config::WriteBatching::On).then_some(settings.write_timeout),
    )
    .await?;
    let payments = settings
        .payments()
        .map(|p| payments::Payments::new(p, db.clone()));
    let app = api::App {
        db: db.clone(),
        audit: audit.clone(),
        work: TaskTracker::new(),
        payments: payments.clone(),
    };
    let mut builder = logs
        .configure(Server::builder())
        .version(env!("CARGO_PKG_VERSION"));
    if let Some(path) = &settings.upgrade_exec {
        builder = builder.upgrade_exec(path);
    }
    if let Some(dir) = settings
        .server
        .state_file
        .as_deref()
        .and_then(std::path::Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    builder = with_outbox(builder, &settings, &db)?;
    if let Some(p) = payments {
        tracing::info!(
            url = settings
                .payment_url
                .as_deref()
                .map(crate::redact::redact_url),
            "payments on"
        );
        builder = builder.circuit(p.breaker());
        for m in p.metrics() {
            builder = builder.metric(m);
        }
        builder = builder.task(lameduck::tasks::Task::new("payment-settle", move |ctx| {
            p.clone().settle(ctx)
        }));
    }
    builder = builder.metric(db.space().metric());
    if let Some(w) = db.writer() {
        for m in writer::metrics(&w.stats()) {
            builder = builder.metric(m);
        }
    }
    let builder = settings.server.apply(builder).map_err(anyhow::Error::msg)?;
    let (listen, admin) = (settings.server.listen_addr(), settings.server.admin_addr());
    let server = with_hooks(builder, &app, audit_thread)
        .readiness_check(readiness(&app))
        .readiness_check(space_check(&app))
        .bind(listen, lifecycle)
        .await?;
    cli::announce(&server, listen, admin)?;
    let server = match registry(&settings, &server)? {
        Some(r) => server.with_registry(r),
        None => server,
    };
    let report = server.serve(api::router(app)).await;
    Ok(report.exit_code())
}

/// The shutdown hooks. After-drain hooks run last-registered first, so they are added in
/// reverse: the run order is finish writes -> fsync audit log -> close database.
fn with_hooks(
    b: lameduck::server::Builder,
    app: &api::App,
    audit_thread: std::thread::JoinHandle<()>,
) -> lameduck::server::Builder {
    let (db, audit, work) = (app.db.clone(), app.audit.clone(), app.work.clone());
    let writes = app.db.clone();
    b.hook(
        HookPhase::AfterDrain,
        "close-database",
        DB_CLOSE_TIMEOUT,
        move || async move { db.close().await.map_err(Into::into) },
    )
    .hook(
        HookPhase::AfterDrain,
        "fsync-audit-log",
        AUDIT_SYNC_TIMEOUT,
        move || async move {
            audit.sync().await?;
            drop(audit);
            // The writer thread ends once every handle is gone; do not wait for it here if a
            // task still holds one.
            drop(audit_thread);
            Ok(())
        },
    )
    .hook(
        HookPhase::AfterDrain,
        "finish-writes",
        FINISH_WRITES_TIMEOUT,
        move || async move {
            work.close();
            work.wait().await;
            // Every write accepted (a request's or a task's) committed and its audit line
            // written, before the audit log's last fsync and the database's close.
            writes.finish_writes().await;
            Ok(())
        },
    )
    .hook(
        HookPhase::Final,
        "flush-logs",
        FLUSH_LOGS_TIMEOUT,
        || async { std::io::stdout().flush().map_err(Into::into) },
    )
}

/// The outbox relay (when a webhook URL is set), its metrics, and `GET /outbox` on the
/// admin listener.
fn with_outbox(
    mut builder: lameduck::server::Builder,
    settings: &Settings,
    db: &db::Db,
) -> anyhow::Result<lameduck::server::Builder> {
    if let Some(url) = &settings.webhook_url {
        let counters = std::sync::Arc::new(relay::Counters::default());
        let relay = relay::Relay::new(
            db.clone(),
            relay::Settings {
                url: url.parse().context("webhook_url")?,
                backoff_max: settings.webhook_backoff_max,
                set_aside_after: settings.webhook_set_aside_after,
            },
            counters.clone(),
        );
        tracing::info!(url = %crate::redact::redact_url(&url.to_string()), "delivering order events to the webhook");
        builder = builder.task(lameduck::tasks::Task::new("outbox-relay", move |ctx| {
            relay.clone().run(ctx)
        }));
        for m in counters.metrics() {
            builder = builder.metric(m);
        }
    }
    let outbox = db.outbox();
    let route = axum::routing::get(move || {
        let outbox = outbox.clone();
        async move {
            match outbox.stats().await {
                Ok(s) => axum::Json(s).into_response(),
                Err(e) => {
                    tracing::warn!(error = %e, "GET /outbox: cannot read the outbox");
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"error": {"code": "unavailable", "message": "database unavailable"}})),
                    )
                        .into_response()
                }
            }
        }
    });
    Ok(builder.admin_routes(axum::Router::new().route("/outbox", route)))
}

/// The etcd registration `settings` ask for: key `{prefix}{instance}`, the instance
/// `HOSTNAME-PORT` unless named, the value the bound addresses, pid and version as JSON.
#[cfg(feature = "registry")]
fn registry(
    settings: &Settings,
    server: &Server,
) -> anyhow::Result<Option<std::sync::Arc<dyn lameduck::registry::Registry>>> {
    let Some(endpoints) = settings.etcd_endpoints.clone() else {
        return Ok(None);
    };
    let http = server.local_addr()?;
    let admin = server.admin_addr().transpose()?;
    let instance = settings
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", hostname(), http.port()));
    let value = serde_json::json!({
        "http": http.to_string(),
        "admin": admin.map(|a| a.to_string()),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let config = lameduck::registry::etcd::EtcdConfig {
        endpoints,
        key: format!("{}{instance}", settings.registry_prefix),
        value: value.to_string(),
        ttl: settings.registry_ttl,
    };
    tracing::info!(key = %config.key, "registering in etcd once serving");
    Ok(Some(std::sync::Arc::new(
        lameduck::registry::etcd::EtcdRegistry::new(config),
    )))
}

/// Without the `registry` feature there is no registration; a setting that asks for one
/// was refused before (`config::refuse_registry_settings`).
#[cfg(not(feature = "registry"))]
fn registry(
    settings: &Settings,
    _: &Server,
) -> anyhow::Result<Option<std::sync::Arc<dyn lameduck::registry::Registry>>> {
    if settings.etcd_endpoints.is_some() {
        anyhow::bail!("etcd_endpoints is set: {}", config::NO_REGISTRY);
    }
    Ok(None)
}

/// The machine's host name (Linux), or `localhost`.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn readiness(app: &api::App) -> ReadinessCheck {
    let (db, audit) = (app.db.clone(), app.audit.clone());
    ReadinessCheck::new("database", move || {
        let (db, audit) = (db.clone(), audit.clone());
        async move {
            if !audit.is_healthy() {
                return Err(format!("audit log {} is broken", audit.path().display()));
            }
            match tokio::time::timeout(READINESS_DB_TIMEOUT, db.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("database did not answer in time".into()),
            }
        }
    })
}

/// `/readyz` names a full disk but stays 200: reads are still served.
fn space_check(app: &api::App) -> ReadinessCheck {
    let space = app.db.space().clone();
    ReadinessCheck::advisory("disk", move || {
        let refused = space.refusal();
        async move { refused.map_or(Ok(()), Err) }
    })
}
