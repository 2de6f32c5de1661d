//! Configuration: flags, then `LAMEDUCK_*` environment variables, then an optional TOML file
//! (`--config`), then defaults. `--print-config` shows the result with secrets redacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use lameduck::logs::LogFormat;
use serde::{Deserialize, Serialize};

use crate::audit::AuditFsync;
use crate::redact::redact_url;

/// Whether writes go through one writer that commits them in groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteBatching {
    /// One writer task, each batch one transaction (the default: the faster on SQLite and
    /// on PostgreSQL, measured in docs/benchmarks-orders.md).
    On,
    /// Each write a pooled transaction of its own.
    Off,
}

/// Command-line flags; every setting also reads `LAMEDUCK_<NAME>` from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "lameduck-orders",
    version,
    about = "An orders API that loses no acknowledged order"
)]
pub struct Args {
    /// TOML configuration file (lowest precedence after defaults).
    #[arg(long, env = "LAMEDUCK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The upgrade flags every lameduck binary shares (command line and environment only).
    #[command(flatten)]
    pub upgrade: lameduck::cli::UpgradeArgs,
    /// The settings given on the command line or in the environment.
    #[command(flatten)]
    pub settings: Overrides,
}

/// Every setting as an optional override. Field docs are the flags' help.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Overrides {
    /// HTTP listener address [default: 127.0.0.1:8080].
    #[arg(long, env = "LAMEDUCK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (/livez, /readyz, /metrics) [default: 127.0.0.1:9090].
    #[arg(long, env = "LAMEDUCK_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Grace period for in-flight requests after the drain delay [default: 20s].
    #[arg(long, env = "LAMEDUCK_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub shutdown_timeout: Option<Duration>,
    /// Keep accepting this long after SIGTERM [default: 0s].
    #[arg(long, env = "LAMEDUCK_DRAIN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub drain_delay: Option<Duration>,
    /// Keep idle keep-alive connections this long during the drain [default: 1s].
    #[arg(long, env = "LAMEDUCK_IDLE_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub idle_grace: Option<Duration>,
    /// Database URL: sqlite://PATH or postgres://... [default: SQLite file under data-dir].
    #[arg(long, env = "LAMEDUCK_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Directory for the SQLite database and the audit log [default: ./data].
    #[arg(long, env = "LAMEDUCK_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Audit log file [default: DATA_DIR/audit.log].
    #[arg(long, env = "LAMEDUCK_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Audit log durability: batch (group commit) or each (one fsync per change) [default: batch].
    #[arg(long, env = "LAMEDUCK_AUDIT_FSYNC", value_enum)]
    pub audit_fsync: Option<AuditFsync>,
    /// Most database connections [default: 8; SQLite: 4].
    #[arg(long, env = "LAMEDUCK_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Writes through one writer that commits them in groups (on), or each in a pooled
    /// transaction of its own (off) [default: on].
    #[arg(long, env = "LAMEDUCK_WRITE_BATCHING", value_enum)]
    pub write_batching: Option<WriteBatching>,
    /// Longest a batch's transaction may take, commit included, with write batching on;
    /// past it the batch's writes are answered 503 `outcome_unknown` while the transaction
    /// finishes (a retry with the same Idempotency-Key finds out) [default: 10s].
    #[arg(long, env = "LAMEDUCK_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub write_timeout: Option<Duration>,
    /// Largest request body in bytes [default: 65536].
    #[arg(long, env = "LAMEDUCK_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Most requests in flight at once (a number, or adaptive: a limit that follows the
    /// latency), or off; beyond it, 503 `overloaded` at once [default: off].
    #[arg(long, env = "LAMEDUCK_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<lameduck::limit::MaxInFlight>,
    /// Longest time a handler may take, or off; then 503 `handler_timeout` [default: off].
    #[arg(long, env = "LAMEDUCK_REQUEST_TIMEOUT")]
    pub request_timeout: Option<lameduck::cli::RequestTimeout>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs tls_key
    /// [default: none, cleartext].
    #[arg(long, env = "LAMEDUCK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM); needs tls_cert.
    #[arg(long, env = "LAMEDUCK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Longest a TLS handshake may take, from the accept [default: 10s].
    #[arg(long, env = "LAMEDUCK_TLS_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub tls_handshake_timeout: Option<Duration>,
    /// Longest a new connection may take to send the first byte of its ClientHello (the
    /// handshake timeout cuts it short when shorter) [default: 2s].
    #[arg(long, env = "LAMEDUCK_TLS_FIRST_BYTE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub tls_first_byte_timeout: Option<Duration>,
    /// Most TLS handshakes at once, counted from a complete ClientHello [default: 256].
    #[arg(long, env = "LAMEDUCK_TLS_MAX_HANDSHAKES")]
    pub tls_max_handshakes: Option<usize>,
    /// How often the certificate files are checked for a new pair, or off (then only
    /// POST /reload-tls) [default: 10s].
    #[arg(long, env = "LAMEDUCK_TLS_RELOAD_EVERY")]
    pub tls_reload_every: Option<lameduck::cli::RequestTimeout>,
    /// Longest wait between two pieces of a request body, then 408 [default: 10s].
    #[arg(long, env = "LAMEDUCK_BODY_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub body_read_timeout: Option<Duration>,
    /// Longest time for a whole request body, from its head, then 408 [default: 60s].
    #[arg(long, env = "LAMEDUCK_BODY_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub body_timeout: Option<Duration>,
    /// The orchestrator's stop timeout (Kubernetes terminationGracePeriodSeconds, systemd
    /// TimeoutStopSec): start-up fails, naming each part, when the drain delay, shutdown
    /// timeout and hook timeouts do not fit in it [default: none].
    #[arg(long, env = "LAMEDUCK_GRACE_BUDGET", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub grace_budget: Option<Duration>,
    /// Every connection starts with a PROXY protocol header (v2 or v1) naming the client, as
    /// HAProxy sends with send-proxy-v2; connections without one are closed [default: off].
    #[arg(long, env = "LAMEDUCK_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    pub proxy_protocol: Option<bool>,
    /// Register in etcd at these client URLs, comma-separated (off when absent; the
    /// registry settings need a build with the registry feature).
    #[arg(long, env = "LAMEDUCK_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The registry key's prefix [default: /services/lameduck-orders/].
    #[arg(long, env = "LAMEDUCK_REGISTRY_PREFIX")]
    pub registry_prefix: Option<String>,
    /// The registration's lease: how long the key outlives a crash [default: 10s].
    #[arg(long, env = "LAMEDUCK_REGISTRY_TTL", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub registry_ttl: Option<Duration>,
    /// This instance's name in the registry [default: HOSTNAME-PORT].
    #[arg(long, env = "LAMEDUCK_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Read the admin bearer token (POST /drain, /undrain) from this file; else
    /// LAMEDUCK_ADMIN_TOKEN; without either, those routes answer 404 [default: none].
    #[arg(long, env = "LAMEDUCK_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Write the pid here once serving (rewritten by the new process of an upgrade)
    /// [default: none].
    #[arg(long, env = "LAMEDUCK_PID_FILE")]
    pub pid_file: Option<PathBuf>,
    /// Deliver every order event (order.created, order.cancelled) to this http:// URL, from
    /// a transactional outbox (off when absent).
    #[arg(long, env = "LAMEDUCK_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The longest wait between two delivery attempts [default: 5s].
    #[arg(long, env = "LAMEDUCK_WEBHOOK_BACKOFF_MAX", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub webhook_backoff_max: Option<Duration>,
    /// Set an event aside after the receiver refused it (4xx other than 408/429) this many
    /// times [default: 5].
    #[arg(long, env = "LAMEDUCK_WEBHOOK_SET_ASIDE_AFTER")]
    pub webhook_set_aside_after: Option<u32>,
    /// Charge orders (POST /orders/{id}/pay) through the payment gateway at this http://
    /// URL (payments are off when absent).
    #[arg(long, env = "LAMEDUCK_PAYMENT_URL")]
    pub payment_url: Option<String>,
    /// Tries per payment gateway call, the first included, 1 to 10 [default: 3].
    #[arg(long, env = "LAMEDUCK_PAYMENT_ATTEMPTS")]
    pub payment_attempts: Option<u32>,
    /// The per-try timeout's lower clamp (it follows the gateway's P99 x 1.5)
    /// [default: 10ms].
    #[arg(long, env = "LAMEDUCK_PAYMENT_TIMEOUT_MIN", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_timeout_min: Option<Duration>,
    /// The per-try timeout's upper clamp, and its value until 50 calls were seen
    /// [default: 2s].
    #[arg(long, env = "LAMEDUCK_PAYMENT_TIMEOUT_MAX", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_timeout_max: Option<Duration>,
    /// How far back the gateway's latencies count for the per-try timeout [default: 30s].
    #[arg(long, env = "LAMEDUCK_PAYMENT_TIMEOUT_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_timeout_window: Option<Duration>,
    /// How long the payment circuit stays open before trial calls [default: 5s].
    #[arg(long, env = "LAMEDUCK_PAYMENT_BREAKER_OPEN_FOR", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_breaker_open_for: Option<Duration>,
    /// How long a paying order belongs to the attempt that set it; then it is settled.
    /// Must exceed the longest call (attempts x timeout max + back-offs) [default: 30s].
    #[arg(long, env = "LAMEDUCK_PAYMENT_LEASE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_lease: Option<Duration>,
    /// How often orders left paying past their lease are looked for [default: 1s].
    #[arg(long, env = "LAMEDUCK_PAYMENT_SETTLE_EVERY", value_parser = humantime::parse_duration)]
    #[serde(default, with = "opt_duration")]
    pub payment_settle_every: Option<Duration>,
    /// Record here that this process serves and, at exit, how it ended; the next process
    /// exports it as lameduck_previous_shutdown{outcome} [default: DATA_DIR/shutdown-state].
    #[arg(long, env = "LAMEDUCK_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Connections the kernel queues for accepting, capped by net.core.somaxconn
    /// [default: 1024].
    #[arg(long, env = "LAMEDUCK_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,
    /// Log format on stdout [default: json].
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// HTTP listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Grace period after the drain delay.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Keep accepting this long after SIGTERM.
    #[serde(with = "duration")]
    pub drain_delay: Duration,
    /// Idle keep-alive grace during the drain.
    #[serde(with = "duration")]
    pub idle_grace: Duration,
    /// Database URL.
    pub database_url: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Audit log path.
    pub audit_log: PathBuf,
    /// Audit log durability.
    pub audit_fsync: AuditFsync,
    /// Most database connections.
    pub db_max_connections: u32,
    /// Writes through the group-commit writer (`on`) or pooled transactions (`off`).
    pub write_batching: WriteBatching,
    /// Longest a writer batch's transaction may take before its writes are answered.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Largest request body.
    pub body_limit: usize,
    /// Most requests in flight (`off`: no limit).
    pub max_in_flight: lameduck::limit::MaxInFlight,
    /// Longest time a handler may take (`off`: no limit).
    pub request_timeout: lameduck::cli::RequestTimeout,
    /// The TLS certificate chain, when serving HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Longest TLS handshake.
    #[serde(with = "duration")]
    pub tls_handshake_timeout: Duration,
    /// Longest wait for the first byte of a ClientHello.
    #[serde(with = "duration")]
    pub tls_first_byte_timeout: Duration,
    /// Most TLS handshakes at once.
    pub tls_max_handshakes: usize,
    /// How often the TLS files are checked (`off`: only on POST /reload-tls).
    pub tls_reload_every: lameduck::cli::RequestTimeout,
    /// Longest wait between two pieces of a request body.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Longest time for a whole request body.
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// The orchestrator's stop timeout, when given.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub grace_budget: Option<Duration>,
    /// Whether connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// etcd's client URLs, when registering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The registry key's prefix.
    pub registry_prefix: String,
    /// The registration's lease.
    #[serde(with = "duration")]
    pub registry_ttl: Duration,
    /// The instance's name in the registry, when given (else HOSTNAME-PORT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The admin token file, when one is given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// The pid file, when one is written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// Where order events go, when delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// The longest back-off between delivery attempts.
    #[serde(with = "duration")]
    pub webhook_backoff_max: Duration,
    /// Refusals after which an event is set aside.
    pub webhook_set_aside_after: u32,
    /// The payment gateway, when payments are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_url: Option<String>,
    /// Tries per gateway call.
    pub payment_attempts: u32,
    /// The per-try timeout's lower clamp.
    #[serde(with = "duration")]
    pub payment_timeout_min: Duration,
    /// The per-try timeout's upper clamp.
    #[serde(with = "duration")]
    pub payment_timeout_max: Duration,
    /// The latency window of the per-try timeout.
    #[serde(with = "duration")]
    pub payment_timeout_window: Duration,
    /// How long the circuit stays open.
    #[serde(with = "duration")]
    pub payment_breaker_open_for: Duration,
    /// A paying order's lease.
    #[serde(with = "duration")]
    pub payment_lease: Duration,
    /// How often the settle task looks.
    #[serde(with = "duration")]
    pub payment_settle_every: Duration,
    /// The shutdown state file.
    pub state_file: PathBuf,
    /// The listen backlog.
    pub listen_backlog: u32,
    /// Log format.
    pub log_format: LogFormat,
    /// The executable a SIGHUP upgrade starts, when not the start-up path
    /// (`--upgrade-exec`, a shared server flag: command line and environment only, so not in
    /// the printed configuration, which must read back as a file).
    #[serde(skip)]
    pub upgrade_exec: Option<PathBuf>,
}

impl Overrides {
    /// `self` where set, else `lower`.
    fn or(self, lower: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(lower.listen),
            admin_listen: self.admin_listen.or(lower.admin_listen),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            drain_delay: self.drain_delay.or(lower.drain_delay),
            idle_grace: self.idle_grace.or(lower.idle_grace),
            database_url: self.database_url.or(lower.database_url),
            data_dir: self.data_dir.or(lower.data_dir),
            audit_log: self.audit_log.or(lower.audit_log),
            audit_fsync: self.audit_fsync.or(lower.audit_fsync),
            db_max_connections: self.db_max_connections.or(lower.db_max_connections),
            write_batching: self.write_batching.or(lower.write_batching),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            body_limit: self.body_limit.or(lower.body_limit),
            max_in_flight: self.max_in_flight.or(lower.max_in_flight),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_handshake_timeout: self.tls_handshake_timeout.or(lower.tls_handshake_timeout),
            tls_first_byte_timeout: self.tls_first_byte_timeout.or(lower.tls_first_byte_timeout),
            tls_max_handshakes: self.tls_max_handshakes.or(lower.tls_max_handshakes),
            tls_reload_every: self.tls_reload_every.or(lower.tls_reload_every),
            body_read_timeout: self.body_read_timeout.or(lower.body_read_timeout),
            body_timeout: self.body_timeout.or(lower.body_timeout),
            grace_budget: self.grace_budget.or(lower.grace_budget),
            pid_file: self.pid_file.or(lower.pid_file),
            state_file: self.state_file.or(lower.state_file),
            webhook_url: self.webhook_url.or(lower.webhook_url),
            webhook_backoff_max: self.webhook_backoff_max.or(lower.webhook_backoff_max),
            webhook_set_aside_after: self
                .webhook_set_aside_after
                .or(lower.webhook_set_aside_after),
            payment_url: self.payment_url.or(lower.payment_url),
            payment_attempts: self.payment_attempts.or(lower.payment_attempts),
            payment_timeout_min: self.payment_timeout_min.or(lower.payment_timeout_min),
            payment_timeout_max: self.payment_timeout_max.or(lower.payment_timeout_max),
            payment_timeout_window: self.payment_timeout_window.or(lower.payment_timeout_window),
            payment_breaker_open_for: self
                .payment_breaker_open_for
                .or(lower.payment_breaker_open_for),
            payment_lease: self.payment_lease.or(lower.payment_lease),
            payment_settle_every: self.payment_settle_every.or(lower.payment_settle_every),
            admin_token_file: self.admin_token_file.or(lower.admin_token_file),
            proxy_protocol: self.proxy_protocol.or(lower.proxy_protocol),
            etcd_endpoints: self.etcd_endpoints.or(lower.etcd_endpoints),
            registry_prefix: self.registry_prefix.or(lower.registry_prefix),
            registry_ttl: self.registry_ttl.or(lower.registry_ttl),
            instance_id: self.instance_id.or(lower.instance_id),
            listen_backlog: self.listen_backlog.or(lower.listen_backlog),
            log_format: self.log_format.or(lower.log_format),
        }
    }
}

/// What a build without the `registry` feature says of a registry setting.
pub const NO_REGISTRY: &str =
    "built without the registry feature (build with --features registry; it needs protoc)";

/// In a build without the `registry` feature, refuse the registry settings (`what`: where
/// they came from, "flag" or "setting in the configuration file"), naming the first one
/// set; with the feature, accept them.
///
/// # Errors
/// A registry setting is set and the build has no registry.
pub fn refuse_registry_settings(o: &Overrides, what: &str) -> anyhow::Result<()> {
    if cfg!(feature = "registry") {
        return Ok(());
    }
    let set = [
        ("etcd_endpoints", o.etcd_endpoints.is_some()),
        ("registry_prefix", o.registry_prefix.is_some()),
        ("registry_ttl", o.registry_ttl.is_some()),
        ("instance_id", o.instance_id.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((name, _)) => {
            let shown = if what == "flag" {
                format!("--{}", name.replace('_', "-"))
            } else {
                (*name).to_string()
            };
            bail!("the {what} {shown} needs the registry: {NO_REGISTRY}")
        }
        None => Ok(()),
    }
}

/// Read the TOML file at `path`.
///
/// # Errors
/// Unreadable file, bad TOML, unknown keys or bad values, naming the file.
pub fn read_file(path: &Path) -> anyhow::Result<Overrides> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Merge flags/environment (`cli`) over the file over defaults.
///
/// # Errors
/// Out-of-range values, naming the setting.
pub fn resolve(cli: Overrides, file: Option<Overrides>) -> anyhow::Result<Settings> {
    let o = cli.or(file.unwrap_or_default());
    let payments = payment_settings(&o)?;
    if o.tls_cert.is_some() != o.tls_key.is_some() {
        bail!("tls_cert and tls_key go together: give both or neither");
    }
    let tls_handshake_timeout = o.tls_handshake_timeout.unwrap_or(Duration::from_secs(10));
    if tls_handshake_timeout.is_zero() {
        bail!("tls_handshake_timeout must be more than zero");
    }
    // lameduck's defaults (its `tls` feature exports them; these settings exist without it).
    let tls_first_byte_timeout = o.tls_first_byte_timeout.unwrap_or(Duration::from_secs(2));
    if tls_first_byte_timeout.is_zero() {
        bail!("tls_first_byte_timeout must be more than zero");
    }
    let tls_max_handshakes = o.tls_max_handshakes.unwrap_or(256);
    if tls_max_handshakes == 0 {
        bail!("tls_max_handshakes must be at least 1");
    }
    let data_dir = o.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
    let database_url = o
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("orders.db").display()));
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        bail!(
            "database_url must start with sqlite:, postgres:// or postgresql://, got {}",
            redact_url(&database_url)
        );
    }
    let sqlite = database_url.starts_with("sqlite:");
    let db_max_connections = o.db_max_connections.unwrap_or(if sqlite { 4 } else { 8 });
    if db_max_connections == 0 {
        bail!("db_max_connections must be at least 1");
    }
    let body_limit = o.body_limit.unwrap_or(64 * 1024);
    if body_limit == 0 {
        bail!("body_limit must be at least 1");
    }
    let body_read_timeout = o
        .body_read_timeout
        .unwrap_or(lameduck::server::DEFAULT_BODY_READ_TIMEOUT);
    let body_timeout = o
        .body_timeout
        .unwrap_or(lameduck::server::DEFAULT_BODY_TIMEOUT);
    if body_read_timeout.is_zero() || body_timeout.is_zero() {
        bail!("body_read_timeout and body_timeout must be above zero");
    }
    let write_timeout = o
        .write_timeout
        .unwrap_or(crate::writer::DEFAULT_WRITE_TIMEOUT);
    if write_timeout.is_zero() {
        bail!("write_timeout must be above zero");
    }
    let registry_ttl = o.registry_ttl.unwrap_or(Duration::from_secs(10));
    if registry_ttl < Duration::from_secs(1) {
        bail!("registry_ttl must be at least 1s");
    }
    if let Some(urls) = &o.etcd_endpoints {
        if urls.is_empty()
            || urls
                .iter()
                .any(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            bail!("etcd_endpoints must be http:// or https:// URLs, got {urls:?}");
        }
    }
    let registry_prefix = o
        .registry_prefix
        .unwrap_or_else(|| "/services/lameduck-orders/".into());
    if !registry_prefix.starts_with('/') {
        bail!("registry_prefix must start with /, got {registry_prefix:?}");
    }
    if let Some(url) = &o.webhook_url {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("webhook_url {url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            bail!("webhook_url must be an http:// URL with a host, got {url:?}");
        }
    }
    let webhook_backoff_max = o.webhook_backoff_max.unwrap_or(Duration::from_secs(5));
    if webhook_backoff_max < Duration::from_millis(100) {
        bail!("webhook_backoff_max must be at least 100ms");
    }
    let webhook_set_aside_after = o.webhook_set_aside_after.unwrap_or(5);
    if webhook_set_aside_after == 0 {
        bail!("webhook_set_aside_after must be at least 1");
    }
    let listen_backlog = o
        .listen_backlog
        .unwrap_or(lameduck::server::DEFAULT_LISTEN_BACKLOG);
    if listen_backlog == 0 {
        bail!("listen_backlog must be at least 1");
    }
    Ok(Settings {
        listen: o
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        admin_listen: o
            .admin_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
        shutdown_timeout: o
            .shutdown_timeout
            .unwrap_or(lameduck::server::DEFAULT_SHUTDOWN_TIMEOUT),
        drain_delay: o.drain_delay.unwrap_or(Duration::ZERO),
        idle_grace: o.idle_grace.unwrap_or(Duration::from_secs(1)),
        audit_log: o.audit_log.unwrap_or_else(|| data_dir.join("audit.log")),
        webhook_url: o.webhook_url,
        webhook_backoff_max,
        webhook_set_aside_after,
        payment_url: o.payment_url.clone(),
        payment_attempts: payments.attempts,
        payment_timeout_min: payments.timeout_min,
        payment_timeout_max: payments.timeout_max,
        payment_timeout_window: payments.timeout_window,
        payment_breaker_open_for: payments.breaker_open_for,
        payment_lease: payments.lease,
        payment_settle_every: payments.settle_every,
        state_file: o
            .state_file
            .unwrap_or_else(|| data_dir.join("shutdown-state")),
        database_url,
        data_dir,
        audit_fsync: o.audit_fsync.unwrap_or(AuditFsync::Batch),
        db_max_connections,
        write_batching: o.write_batching.unwrap_or(WriteBatching::On),
        write_timeout,
        body_limit,
        max_in_flight: o.max_in_flight.unwrap_or_default(),
        request_timeout: o.request_timeout.unwrap_or_default(),
        tls_cert: o.tls_cert.clone(),
        tls_key: o.tls_key.clone(),
        tls_handshake_timeout,
        tls_first_byte_timeout,
        tls_max_handshakes,
        tls_reload_every: o
            .tls_reload_every
            .unwrap_or_else(|| lameduck::cli::RequestTimeout::from(Some(Duration::from_secs(10)))),
        body_read_timeout,
        body_timeout,
        grace_budget: o.grace_budget,
        pid_file: o.pid_file,
        admin_token_file: o.admin_token_file,
        proxy_protocol: o.proxy_protocol.unwrap_or(false),
        etcd_endpoints: o.etcd_endpoints,
        registry_prefix,
        registry_ttl,
        instance_id: o.instance_id,
        listen_backlog,
        log_format: o.log_format.unwrap_or(LogFormat::Json),
        upgrade_exec: None,
    })
}

impl Settings {
    /// `true` for SQLite.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// The configuration as TOML with the secrets in URLs redacted (see [`redact_url`]).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.database_url = redact_url(&self.database_url);
        shown.webhook_url = self.webhook_url.as_deref().map(redact_url);
        shown.payment_url = self.payment_url.as_deref().map(redact_url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

mod duration {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

mod opt_duration {
    use serde::Deserialize;
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// The payment settings of `o`, checked (the URL, if any, is checked too but not kept:
/// [`Settings::payments`] parses it again).
fn payment_settings(o: &Overrides) -> anyhow::Result<crate::payments::Settings> {
    let url: http::Uri = match &o.payment_url {
        Some(url) => {
            let uri: http::Uri = url
                .parse()
                .with_context(|| format!("payment_url {url:?} is not a URL"))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() || uri.query().is_some() {
                bail!("payment_url must be an http:// URL with a host and no query, got {url:?}");
            }
            uri
        }
        None => http::Uri::from_static("http://127.0.0.1/"),
    };
    let s = crate::payments::Settings {
        url,
        attempts: o.payment_attempts.unwrap_or(3),
        timeout_min: o.payment_timeout_min.unwrap_or(Duration::from_millis(10)),
        timeout_max: o.payment_timeout_max.unwrap_or(Duration::from_secs(2)),
        timeout_window: o.payment_timeout_window.unwrap_or(Duration::from_secs(30)),
        breaker_open_for: o.payment_breaker_open_for.unwrap_or(Duration::from_secs(5)),
        lease: o.payment_lease.unwrap_or(Duration::from_secs(30)),
        settle_every: o.payment_settle_every.unwrap_or(Duration::from_secs(1)),
    };
    if !(1..=10).contains(&s.attempts) {
        bail!("payment_attempts must be from 1 to 10, got {}", s.attempts);
    }
    if s.timeout_min < Duration::from_millis(1) {
        bail!("payment_timeout_min must be at least 1ms");
    }
    if s.timeout_max < s.timeout_min {
        bail!(
            "payment_timeout_max ({:?}) must be at least payment_timeout_min ({:?})",
            s.timeout_max,
            s.timeout_min
        );
    }
    if s.timeout_window < Duration::from_millis(100) {
        bail!("payment_timeout_window must be at least 100ms");
    }
    if s.breaker_open_for < Duration::from_millis(10) {
        bail!("payment_breaker_open_for must be at least 10ms");
    }
    if s.settle_every < Duration::from_millis(10) {
        bail!("payment_settle_every must be at least 10ms");
    }
    // The lease must outlast the charge and the look-up that follows it, or a settler could
    // find "no charge" while a try is still on its way to the gateway.
    let longest = s.call_budget() * 2;
    if s.lease <= longest {
        bail!(
            "payment_lease ({:?}) must exceed {longest:?}: twice payment_attempts x payment_timeout_max plus back-offs",
            s.lease
        );
    }
    Ok(s)
}

impl Settings {
    /// The payment settings, when payments are on.
    pub fn payments(&self) -> Option<crate::payments::Settings> {
        let url = self.payment_url.as_deref()?.parse().ok()?;
        Some(crate::payments::Settings {
            url,
            attempts: self.payment_attempts,
            timeout_min: self.payment_timeout_min,
            timeout_max: self.payment_timeout_max,
            timeout_window: self.payment_timeout_window,
            breaker_open_for: self.payment_breaker_open_for,
            lease: self.payment_lease,
            settle_every: self.payment_settle_every,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file: Overrides = toml::from_str(
            "listen = \"127.0.0.1:1\"\ndrain_delay = \"2s\"\naudit_fsync = \"each\"",
        )
        .unwrap();
        let cli = Overrides {
            listen: Some("127.0.0.1:2".parse().unwrap()),
            ..Overrides::default()
        };
        let s = resolve(cli, Some(file)).unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.drain_delay, Duration::from_secs(2));
        assert_eq!(s.audit_fsync, AuditFsync::Each);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
        assert!(s.database_url.ends_with("data/orders.db"));
    }

    #[test]
    fn bad_file_values_are_named() {
        let err = toml::from_str::<Overrides>("drain_delay = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = toml::from_str::<Overrides>("nope = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = resolve(
            Overrides {
                database_url: Some("mysql://x".into()),
                ..Overrides::default()
            },
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("database_url"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn the_tls_defaults_are_lameducks() {
        let s = resolve(Overrides::default(), None).unwrap();
        assert_eq!(
            s.tls_first_byte_timeout,
            lameduck::server::DEFAULT_FIRST_BYTE_TIMEOUT
        );
        assert_eq!(
            s.tls_max_handshakes,
            lameduck::server::DEFAULT_MAX_HANDSHAKES
        );
        assert_eq!(
            s.tls_handshake_timeout,
            lameduck::server::DEFAULT_HANDSHAKE_TIMEOUT
        );
    }

    #[test]
    fn passwords_are_redacted_in_the_printed_configuration() {
        let s = resolve(
            Overrides {
                database_url: Some("postgres://u:pw@h/db".into()),
                ..Overrides::default()
            },
            None,
        )
        .unwrap();
        let text = s.to_redacted_toml();
        assert!(!text.contains("pw@"), "{text}");
        assert!(text.contains("*****"), "{text}");
    }

    #[test]
    fn max_in_flight_is_a_number_or_off_in_the_file_too() {
        let file: Overrides = toml::from_str("max_in_flight = 64").unwrap();
        let s = resolve(file, None).unwrap();
        use lameduck::limit::MaxInFlight;
        assert!(matches!(s.max_in_flight, MaxInFlight::Fixed(n) if n.get() == 64));
        let file: Overrides = toml::from_str("max_in_flight = \"off\"").unwrap();
        let s = resolve(file, None).unwrap();
        assert!(matches!(s.max_in_flight, MaxInFlight::Off));
        let file: Overrides = toml::from_str("max_in_flight = \"adaptive\"").unwrap();
        let s = resolve(file, None).unwrap();
        assert!(matches!(s.max_in_flight, MaxInFlight::Adaptive(_)));
        for bad in ["max_in_flight = 0", "max_in_flight = \"lots\""] {
            let err = toml::from_str::<Overrides>(bad).unwrap_err().to_string();
            assert!(
                err.contains("at least 1") || err.contains("lots"),
                "{bad}: {err}"
            );
        }
        let text = resolve(Overrides::default(), None)
            .unwrap()
            .to_redacted_toml();
        assert!(text.contains("max_in_flight = \"off\""), "{text}");
        assert!(text.contains("request_timeout = \"off\""), "{text}");
        let file: Overrides = toml::from_str("request_timeout = \"2s\"").unwrap();
        let s = resolve(file, None).unwrap();
        assert_eq!(s.request_timeout.limit(), Some(Duration::from_secs(2)));
        for bad in ["request_timeout = \"0s\"", "request_timeout = \"soon\""] {
            assert!(toml::from_str::<Overrides>(bad).is_err(), "{bad}");
        }
    }
}
