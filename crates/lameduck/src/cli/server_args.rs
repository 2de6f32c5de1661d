//! The server flags every lameduck binary shares, declared once ([`ServerArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limit::MaxInFlight;
use crate::logs::LogFormat;
use crate::server::Builder;

use super::{opt_duration, RequestTimeout};

/// The HTTP listener's address when none is given.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// The admin listener's address when none is given.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9090);
use crate::server::{
    DEFAULT_FIRST_BYTE_TIMEOUT as TLS_FIRST_BYTE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT as TLS_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES as TLS_MAX_HANDSHAKES, DEFAULT_RELOAD_EVERY as TLS_RELOAD_EVERY,
};

/// Declares [`ServerArgs`]: each setting once, with its flag, its `LAMEDUCK_*` variable
/// (the attributes), its TOML key (the field's name) and its default (after `=`; none for
/// a setting that is off when absent).
macro_rules! server_args {
    ($( $(#[$m:meta])* $f:ident : $ty:ty $(= $d:expr)? ; )*) => {
        /// The server flags every lameduck binary shares (feature `cli`): listeners,
        /// timeouts, limits, TLS, PROXY protocol, pid and state files, the admin token and
        /// the log format, each a flag with its `LAMEDUCK_*` variable and a TOML key of the
        /// same name. Flatten it into a binary's flags (`#[command(flatten)]`, and
        /// `#[serde(flatten)]` for a configuration file); every field is `None` unless
        /// given, so layers merge with [`or`](Self::or) (flag > environment > file, as clap
        /// reads the first two), a binary's own defaults being the lowest layer;
        /// [`apply`](Self::apply) sets the result on a [`Builder`], the library's
        /// defaults filling in the rest. The `upgrade` flags are
        /// [`UpgradeArgs`](super::UpgradeArgs).
        #[derive(Debug, Default, Clone, PartialEq, clap::Args, serde::Deserialize, serde::Serialize)]
        #[serde(default)]
        pub struct ServerArgs {
            $(
                $(#[$m])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $f: Option<$ty>,
            )*
        }

        impl ServerArgs {
            /// Each setting given here, else `lower`'s.
            #[must_use]
            pub fn or(self, lower: Self) -> Self {
                Self { $( $f: self.$f.or(lower.$f), )* }
            }

            /// Every setting that has a default, filled in: what the server will use (for
            /// printing the effective configuration).
            #[must_use]
            pub fn effective(&self) -> Self {
                Self { $( $f: self.$f.clone() $(.or(Some($d)))?, )* }
            }
        }
    };
}

server_args! {
    /// HTTP listener address [default: 127.0.0.1:8080].
    #[arg(long, env = "LAMEDUCK_LISTEN")]
    listen: SocketAddr = DEFAULT_LISTEN;
    /// Admin listener address (/livez, /readyz, /metrics) [default: 127.0.0.1:9090].
    #[arg(long, env = "LAMEDUCK_ADMIN_LISTEN")]
    admin_listen: SocketAddr = DEFAULT_ADMIN_LISTEN;
    /// Grace period for in-flight requests after the drain delay [default: 20s].
    #[arg(long, env = "LAMEDUCK_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "opt_duration")]
    shutdown_timeout: Duration = crate::server::DEFAULT_SHUTDOWN_TIMEOUT;
    /// Keep accepting this long after SIGTERM while load balancers notice [default: 0s].
    #[arg(long, env = "LAMEDUCK_DRAIN_DELAY", value_parser = humantime::parse_duration)]
    #[serde(with = "opt_duration")]
    drain_delay: Duration = crate::server::DEFAULT_DRAIN_DELAY;
    /// Keep idle keep-alive connections this long during the drain (0s closes them at
    /// once) [default: 1s].
    #[arg(long, env = "LAMEDUCK_IDLE_GRACE", value_parser = humantime::parse_duration)]
    #[serde(with = "opt_duration")]
    idle_grace: Duration = crate::server::DEFAULT_IDLE_GRACE;
    /// Cut connections whose request head takes longer than this [default: 10s].
    #[arg(long, env = "LAMEDUCK_HEADER_READ_TIMEOUT", value_parser = positive_duration)]
    #[serde(with = "opt_duration")]
    header_read_timeout: Duration = crate::server::DEFAULT_HEADER_READ_TIMEOUT;
    /// Largest request body in bytes [default: 2097152].
    #[arg(long, env = "LAMEDUCK_BODY_LIMIT", value_parser = positive_count)]
    body_limit: usize = crate::server::DEFAULT_BODY_LIMIT;
    /// Most requests in flight at once (a number, or adaptive: a limit that follows the
    /// latency), or off; beyond it, 503 `overloaded` at once [default: off].
    #[arg(long, env = "LAMEDUCK_MAX_IN_FLIGHT")]
    max_in_flight: MaxInFlight = MaxInFlight::Off;
    /// Longest time a handler may take, or off; then 503 `handler_timeout` [default: off].
    #[arg(long, env = "LAMEDUCK_REQUEST_TIMEOUT")]
    request_timeout: RequestTimeout = RequestTimeout::default();
    /// Longest wait between two pieces of a request body, then 408 [default: 10s].
    #[arg(long, env = "LAMEDUCK_BODY_READ_TIMEOUT", value_parser = positive_duration)]
    #[serde(with = "opt_duration")]
    body_read_timeout: Duration = crate::server::DEFAULT_BODY_READ_TIMEOUT;
    /// Longest time for a whole request body, from its head, then 408 [default: 60s].
    #[arg(long, env = "LAMEDUCK_BODY_TIMEOUT", value_parser = positive_duration)]
    #[serde(with = "opt_duration")]
    body_timeout: Duration = crate::server::DEFAULT_BODY_TIMEOUT;
    /// The orchestrator's stop timeout (Kubernetes terminationGracePeriodSeconds, systemd
    /// TimeoutStopSec): start-up fails, naming each part, when the drain delay, shutdown
    /// timeout and hook timeouts do not fit in it [default: none].
    #[arg(long, env = "LAMEDUCK_GRACE_BUDGET", value_parser = humantime::parse_duration)]
    #[serde(with = "opt_duration")]
    grace_budget: Duration;
    /// Every connection starts with a PROXY protocol header (v2 or v1) naming the client, as
    /// HAProxy sends with send-proxy-v2; connections without one are closed [default: off].
    #[arg(long, env = "LAMEDUCK_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true")]
    proxy_protocol: bool = false;
    /// Read the admin bearer token (POST /drain, /undrain) from this file; else
    /// LAMEDUCK_ADMIN_TOKEN; without either, those routes answer 404 [default: none].
    #[arg(long, env = "LAMEDUCK_ADMIN_TOKEN_FILE", value_name = "PATH")]
    admin_token_file: PathBuf;
    /// Write the pid here once serving (rewritten by the new process of an upgrade)
    /// [default: none].
    #[arg(long, env = "LAMEDUCK_PID_FILE", value_name = "PATH")]
    pid_file: PathBuf;
    /// Record here that this process serves and, at exit, how it ended; the next process
    /// exports it as lameduck_previous_shutdown{outcome} [default: none].
    #[arg(long, env = "LAMEDUCK_STATE_FILE", value_name = "PATH")]
    state_file: PathBuf;
    /// Connections the kernel queues for accepting, capped by net.core.somaxconn
    /// [default: 1024].
    #[arg(long, env = "LAMEDUCK_LISTEN_BACKLOG", value_parser = clap::value_parser!(u32).range(1..))]
    listen_backlog: u32 = crate::server::DEFAULT_LISTEN_BACKLOG;
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs tls_key (and a
    /// build with the tls feature) [default: none, cleartext].
    #[arg(long, env = "LAMEDUCK_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    tls_cert: PathBuf;
    /// The certificate's private key (PEM); needs tls_cert.
    #[arg(long, env = "LAMEDUCK_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    tls_key: PathBuf;
    /// Longest a TLS handshake may take, from the accept [default: 10s].
    #[arg(long, env = "LAMEDUCK_TLS_HANDSHAKE_TIMEOUT", value_parser = positive_duration)]
    #[serde(with = "opt_duration")]
    tls_handshake_timeout: Duration = TLS_HANDSHAKE_TIMEOUT;
    /// Longest a new connection may take to send the first byte of its ClientHello (the
    /// handshake timeout cuts it short when shorter) [default: 2s].
    #[arg(long, env = "LAMEDUCK_TLS_FIRST_BYTE_TIMEOUT", value_parser = positive_duration)]
    #[serde(with = "opt_duration")]
    tls_first_byte_timeout: Duration = TLS_FIRST_BYTE_TIMEOUT;
    /// Most TLS handshakes at once, counted from a complete ClientHello [default: 256].
    #[arg(long, env = "LAMEDUCK_TLS_MAX_HANDSHAKES", value_parser = positive_count)]
    tls_max_handshakes: usize = TLS_MAX_HANDSHAKES;
    /// How often the certificate files are checked for a new pair, or off (then only
    /// POST /reload-tls) [default: 10s].
    #[arg(long, env = "LAMEDUCK_TLS_RELOAD_EVERY")]
    tls_reload_every: RequestTimeout = RequestTimeout::from(Some(TLS_RELOAD_EVERY));
    /// Log format [default: json].
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_enum)]
    log_format: LogFormat = LogFormat::Json;
}

impl ServerArgs {
    /// The HTTP listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listen.unwrap_or(DEFAULT_ADMIN_LISTEN)
    }

    /// The log format.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_default()
    }

    /// Check every setting; the message names the one at fault.
    ///
    /// # Errors
    /// A zero timeout or count, a certificate without its key (or the reverse), or TLS in a
    /// build without the `tls` feature.
    pub fn check(&self) -> Result<(), String> {
        let s = self.effective();
        let positive = [
            ("body_read_timeout", s.body_read_timeout),
            ("body_timeout", s.body_timeout),
            ("header_read_timeout", s.header_read_timeout),
            ("tls_handshake_timeout", s.tls_handshake_timeout),
            ("tls_first_byte_timeout", s.tls_first_byte_timeout),
        ];
        for (name, d) in positive {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(format!("{name} must be more than zero"));
            }
        }
        if s.body_limit == Some(0) {
            return Err("body_limit must be at least 1".into());
        }
        if s.tls_max_handshakes == Some(0) {
            return Err("tls_max_handshakes must be at least 1".into());
        }
        if s.listen_backlog == Some(0) {
            return Err("listen_backlog must be at least 1".into());
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return Err("tls_cert and tls_key go together: give both or neither".into());
        }
        if cfg!(not(feature = "tls")) && s.tls_cert.is_some() {
            return Err("tls_cert is set but this build has no TLS (feature tls)".into());
        }
        Ok(())
    }

    /// Set these settings on `builder` (the admin listener on [`admin_addr`](Self::admin_addr);
    /// the HTTP address is the caller's to bind, [`listen_addr`](Self::listen_addr)); what is
    /// not given keeps the library's default.
    ///
    /// # Errors
    /// As [`check`](Self::check); an admin token file that cannot be read or holds no
    /// one-line token.
    pub fn apply(&self, builder: Builder) -> Result<Builder, String> {
        self.check()?;
        let s = self.effective();
        let mut b = builder
            .admin(self.admin_addr())
            .max_in_flight(s.max_in_flight.clone().unwrap_or_default())
            .request_timeout(s.request_timeout.and_then(RequestTimeout::limit))
            .proxy_protocol(s.proxy_protocol.unwrap_or(false));
        if let Some(d) = s.shutdown_timeout {
            b = b.shutdown_timeout(d);
        }
        if let Some(d) = s.drain_delay {
            b = b.drain_delay(d);
        }
        if let Some(d) = s.idle_grace {
            b = b.idle_grace(d);
        }
        if let Some(d) = s.header_read_timeout {
            b = b.header_read_timeout(d);
        }
        if let Some(n) = s.body_limit {
            b = b.body_limit(n);
        }
        if let Some(d) = s.body_read_timeout {
            b = b.body_read_timeout(d);
        }
        if let Some(d) = s.body_timeout {
            b = b.body_timeout(d);
        }
        if let Some(d) = s.grace_budget {
            b = b.grace_budget(d);
        }
        if let Some(n) = s.listen_backlog {
            b = b.listen_backlog(n);
        }
        if let Some(path) = &s.pid_file {
            b = b.pid_file(path);
        }
        if let Some(path) = &s.state_file {
            b = b.state_file(path);
        }
        if let Some(token) = super::admin_token(s.admin_token_file.as_deref())? {
            b = b.admin_token(token);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = s.tls_config() {
            b = b.tls(tls);
        }
        Ok(b)
    }

    /// The TLS configuration, when a certificate and key are given.
    #[cfg(feature = "tls")]
    pub fn tls_config(&self) -> Option<crate::server::TlsConfig> {
        let s = self.effective();
        let (cert, key) = (s.tls_cert?, s.tls_key?);
        let mut c = crate::server::TlsConfig::new(cert, key);
        c.handshake_timeout = s.tls_handshake_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT);
        c.first_byte_timeout = s.tls_first_byte_timeout.unwrap_or(TLS_FIRST_BYTE_TIMEOUT);
        c.max_handshakes = s.tls_max_handshakes.unwrap_or(TLS_MAX_HANDSHAKES);
        c.reload_every = s.tls_reload_every.and_then(RequestTimeout::limit);
        Some(c)
    }
}

/// A count of at least 1, for a flag (a file's value is checked by [`ServerArgs::check`]).
fn positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration above zero, for a flag.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than zero".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_field_by_field_and_defaults_fill_the_rest() {
        let flags = ServerArgs {
            drain_delay: Some(Duration::from_secs(5)),
            ..ServerArgs::default()
        };
        let file: ServerArgs =
            toml::from_str("drain_delay = \"2s\"\nbody_limit = 1000\nmax_in_flight = 64").unwrap();
        let binary = ServerArgs {
            body_limit: Some(65536),
            listen: Some("127.0.0.1:8081".parse().unwrap()),
            ..ServerArgs::default()
        };
        let s = flags.or(file).or(binary);
        assert_eq!(s.drain_delay, Some(Duration::from_secs(5)), "the flag wins");
        assert_eq!(
            s.body_limit,
            Some(1000),
            "the file beats the binary's default"
        );
        assert_eq!(
            s.listen_addr().port(),
            8081,
            "the binary's default beats the library's"
        );
        assert_eq!(s.idle_grace, None);
        let e = s.effective();
        assert_eq!(e.idle_grace, Some(crate::server::DEFAULT_IDLE_GRACE));
        assert_eq!(e.grace_budget, None, "off when absent");
        // Printed and read back, it is the same.
        let text = toml::to_string(&e).unwrap();
        assert!(text.contains("idle_grace = \"1s\""), "{text}");
        assert_eq!(toml::from_str::<ServerArgs>(&text).unwrap(), e);
    }

    #[test]
    fn bad_values_are_refused_naming_the_setting() {
        let bad = |text: &str| {
            toml::from_str::<ServerArgs>(text)
                .map_err(|e| e.to_string())
                .and_then(|s| s.check())
                .unwrap_err()
        };
        assert!(bad("body_timeout = \"0s\"").contains("body_timeout"));
        assert!(bad("body_limit = 0").contains("body_limit"));
        assert!(bad("tls_cert = \"c.pem\"").contains("tls_key"));
        assert!(bad("drain_delay = \"soon\"").contains("soon"));
        assert!(bad("max_in_flight = 0").contains("at least 1"));
    }
}
