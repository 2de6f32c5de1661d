//! Configuration: flags, then `LAMEDUCK_*` environment variables, then an optional TOML file
//! (`--config`), then defaults. `--print-config` shows the result with secrets redacted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use lameduck::cli::opt_duration;
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
#[serde(rename_all = "snake_case")]
pub struct Overrides {
    /// The server settings every lameduck binary shares (listeners, timeouts, limits, TLS,
    /// PROXY protocol, pid and state files, admin token, log format).
    #[command(flatten)]
    #[serde(flatten)]
    pub server: lameduck::cli::ServerArgs,
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
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The shared server settings, every default filled in.
    #[serde(flatten)]
    pub server: lameduck::cli::ServerArgs,
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
            server: self.server.or(lower.server),
            database_url: self.database_url.or(lower.database_url),
            data_dir: self.data_dir.or(lower.data_dir),
            audit_log: self.audit_log.or(lower.audit_log),
            audit_fsync: self.audit_fsync.or(lower.audit_fsync),
            db_max_connections: self.db_max_connections.or(lower.db_max_connections),
            write_batching: self.write_batching.or(lower.write_batching),
            write_timeout: self.write_timeout.or(lower.write_timeout),
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
            etcd_endpoints: self.etcd_endpoints.or(lower.etcd_endpoints),
            registry_prefix: self.registry_prefix.or(lower.registry_prefix),
            registry_ttl: self.registry_ttl.or(lower.registry_ttl),
            instance_id: self.instance_id.or(lower.instance_id),
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
    parse_file(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// The settings in a configuration file's `text`. Every key must be a setting: serde cannot
/// refuse unknown keys of a struct with a flattened part (the shared server settings), so
/// they are checked against the settings' names first.
///
/// # Errors
/// Bad TOML, a key that is no setting, a bad value.
pub fn parse_file(text: &str) -> anyhow::Result<Overrides> {
    let table: toml::Table = toml::from_str(text)?;
    let known = setting_names();
    if let Some(key) = table.keys().find(|k| !known.contains(k)) {
        bail!("unknown setting `{key}`");
    }
    Ok(toml::from_str(text)?)
}

/// Every setting's name, as a file's key: the flags' ids (the shared server settings
/// included); not the flags that are command line only.
fn setting_names() -> Vec<String> {
    <Overrides as clap::Args>::augment_args(clap::Command::new("orders"))
        .get_arguments()
        .map(|a| a.get_id().as_str().to_owned())
        .collect()
}

/// Merge flags/environment (`cli`) over the file over defaults.
///
/// # Errors
/// Out-of-range values, naming the setting.
pub fn resolve(cli: Overrides, file: Option<Overrides>) -> anyhow::Result<Settings> {
    let o = cli.or(file.unwrap_or_default());
    let payments = payment_settings(&o)?;
    let data_dir = o.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
    // The orders service's own defaults under the shared settings: a small body limit
    // (orders are small), the state file in the data directory.
    let server = o.server.or(lameduck::cli::ServerArgs {
        body_limit: Some(64 * 1024),
        state_file: Some(data_dir.join("shutdown-state")),
        ..lameduck::cli::ServerArgs::default()
    });
    server.check().map_err(anyhow::Error::msg)?;
    let server = server.effective();
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
    Ok(Settings {
        server,
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
        database_url,
        data_dir,
        audit_fsync: o.audit_fsync.unwrap_or(AuditFsync::Batch),
        db_max_connections,
        write_batching: o.write_batching.unwrap_or(WriteBatching::On),
        write_timeout,
        etcd_endpoints: o.etcd_endpoints,
        registry_prefix,
        registry_ttl,
        instance_id: o.instance_id,
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
            server: lameduck::cli::ServerArgs {
                listen: Some("127.0.0.1:2".parse().unwrap()),
                ..Default::default()
            },
            ..Overrides::default()
        };
        let s = resolve(cli, Some(file)).unwrap();
        assert_eq!(s.server.listen_addr().port(), 2);
        assert_eq!(s.server.drain_delay, Some(Duration::from_secs(2)));
        assert_eq!(s.audit_fsync, AuditFsync::Each);
        assert_eq!(s.server.shutdown_timeout, Some(Duration::from_secs(20)));
        assert_eq!(
            s.server.body_limit,
            Some(64 * 1024),
            "the orders' own default"
        );
        assert!(s.database_url.ends_with("data/orders.db"));
    }

    #[test]
    fn bad_file_values_are_named() {
        let err = parse_file("drain_delay = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
        let err = parse_file("nope = 1").unwrap_err().to_string();
        assert!(err.contains("unknown setting `nope`"), "{err}");
        let err = parse_file("[server]\nlisten = \"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `server`"), "{err}");
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
            s.server.tls_first_byte_timeout,
            Some(lameduck::server::DEFAULT_FIRST_BYTE_TIMEOUT)
        );
        assert_eq!(
            s.server.tls_max_handshakes,
            Some(lameduck::server::DEFAULT_MAX_HANDSHAKES)
        );
        assert_eq!(
            s.server.tls_handshake_timeout,
            Some(lameduck::server::DEFAULT_HANDSHAKE_TIMEOUT)
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
        assert!(
            matches!(s.server.max_in_flight.unwrap_or_default(), MaxInFlight::Fixed(n) if n.get() == 64)
        );
        let file: Overrides = toml::from_str("max_in_flight = \"off\"").unwrap();
        let s = resolve(file, None).unwrap();
        assert!(matches!(
            s.server.max_in_flight.unwrap_or_default(),
            MaxInFlight::Off
        ));
        let file: Overrides = toml::from_str("max_in_flight = \"adaptive\"").unwrap();
        let s = resolve(file, None).unwrap();
        assert!(matches!(
            s.server.max_in_flight.unwrap_or_default(),
            MaxInFlight::Adaptive(_)
        ));
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
        assert_eq!(
            s.server.request_timeout.and_then(|t| t.limit()),
            Some(Duration::from_secs(2))
        );
        for bad in ["request_timeout = \"0s\"", "request_timeout = \"soon\""] {
            assert!(toml::from_str::<Overrides>(bad).is_err(), "{bad}");
        }
    }
}
