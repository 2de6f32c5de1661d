//! TLS on the main listener (feature `tls`): rustls through tokio-rustls, with the `ring`
//! provider (no C toolchain beyond what `ring` itself needs, no cmake; aws-lc-rs would be
//! faster at handshakes but builds with cmake and a larger C tree).
//!
//! - TLS 1.2 and 1.3 only; ALPN offers `h2` and `http/1.1` (the connection then serves
//!   what the client chose, through the same drain as cleartext).
//! - The certificate chain and key are PEM files. A missing, unreadable or mismatched pair
//!   fails at start-up, naming the file and the problem.
//! - **Handshake limits**: each handshake must finish within `handshake_timeout` (10 s) of
//!   the accept, waiting for a free place included, and its ClientHello must start within
//!   `first_byte_timeout` (2 s). At most `max_handshakes` (256) run at once, but a
//!   connection takes a place only once its **whole ClientHello** has arrived (the work
//!   starts there: key exchange, signature): connections that send nothing, or half a
//!   ClientHello, cost a small buffer and never delay real clients. A handshake still
//!   running when the drain starts is cut after the idle grace, so it never holds the
//!   drain. Failures are counted by reason
//!   (`lameduck_tls_handshake_failures_total{reason}`) and logged at debug only: a scanner
//!   must not flood the log. The certificate's expiry is
//!   `lameduck_tls_certificate_not_after_seconds` (Unix time).
//! - **Rotation**: [`Tls::reload`] reads both files again and swaps the pair in when their
//!   content changed and they match; new handshakes use it at once, connections already
//!   open keep theirs, and sessions made with the old pair are not resumed (each pair has
//!   a server configuration, and so a session cache, of its own). A pair that does not match (a certificate and key replaced a moment
//!   apart) or does not parse is refused with a log line, the old pair stays, and the next
//!   check tries again. The server checks every `reload_every` (10 s) by content, which
//!   follows a Kubernetes Secret's `..data` symlink swap, and on `POST /reload-tls` on the
//!   admin listener.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;

pub use crate::error::TlsError;
use crate::lifecycle::Shutdown;
use crate::metrics::TlsStats;

use super::builder::{
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
    DEFAULT_RELOAD_EVERY,
};

/// TLS settings for [`Builder::tls`](super::Builder::tls).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Longest a handshake may take, from the accept (10 s).
    pub handshake_timeout: Duration,
    /// Longest a new connection may take to send the first byte of its ClientHello (2 s;
    /// the handshake timeout, when that is shorter, cuts it first).
    pub first_byte_timeout: Duration,
    /// Most handshakes at once (256), counted from a complete ClientHello; more wait,
    /// within their timeout.
    pub max_handshakes: usize,
    /// How often the files are checked for a new pair (10 s); `None`: only on
    /// `POST /reload-tls`.
    pub reload_every: Option<Duration>,
}

impl TlsConfig {
    /// TLS with the pair in `cert` and `key` and the default limits.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            reload_every: Some(DEFAULT_RELOAD_EVERY),
        }
    }
}

impl TlsConfig {
    /// The limits in range: at least one handshake place, and timeouts above zero (a
    /// first-byte timeout longer than the handshake timeout is cut short by it).
    fn check(&self) -> Result<(), TlsError> {
        let bad = |name, problem: &str| {
            Err(TlsError::Setting {
                name,
                problem: problem.into(),
            })
        };
        if self.max_handshakes == 0 {
            return bad("max_handshakes", "must be at least 1");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be more than zero");
        }
        if self.first_byte_timeout.is_zero() {
            return bad("first_byte_timeout", "must be more than zero");
        }
        Ok(())
    }
}

/// Why a handshake failed, as counted on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not done within the handshake timeout (or no free place in it), or no first byte
    /// within the first-byte timeout.
    Timeout,
    /// The client closed the connection before the end.
    Eof,
    /// Not TLS, or TLS the server refuses (version, ciphers, bad messages).
    Protocol,
    /// Cut because the server drains.
    Drain,
    /// Another I/O error.
    Io,
}

impl Failure {
    fn as_str(self) -> &'static str {
        crate::metrics::TLS_FAILURES[self as usize]
    }
}

/// The pair every handshake of one server configuration gets.
#[derive(Debug)]
struct Pair(Arc<CertifiedKey>);

impl ResolvesServerCert for Pair {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A server configuration serving `pair`: TLS 1.3 and 1.2, ALPN h2 and http/1.1, and a
/// session cache of its own (so a rotation also ends resumption of the old pair's sessions).
fn server_config(
    config: &TlsConfig,
    pair: Arc<CertifiedKey>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::File {
            path: config.cert.clone(),
            problem: format!("TLS set-up: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Pair(pair)));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// How close to its expiry the certificate in use is warned about (7 days).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// What [`Tls::reload`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    /// A new pair is in use.
    Swapped,
    /// The files hold the pair in use.
    Unchanged,
}

/// The files' content last loaded or refused, and the refusal.
#[derive(Debug)]
struct Seen {
    cert: Vec<u8>,
    key: Vec<u8>,
    refused: Option<String>,
}

/// The warning for a certificate that expires at `not_after` (Unix seconds), seen at
/// `now`: expired, or expiring within [`EXPIRY_WARNING`]; `None` otherwise.
fn expiry_warning(not_after: i64, now: i64) -> Option<String> {
    let left = not_after - now;
    // Whole minutes: enough to act on, and stable in a message.
    let minutes =
        |s: i64| humantime::format_duration(Duration::from_secs((s.unsigned_abs() / 60) * 60));
    if left <= 0 {
        Some(format!(
            "the certificate in use expired {} ago",
            minutes(left)
        ))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        Some(format!(
            "the certificate in use expires in {}",
            minutes(left)
        ))
    } else {
        None
    }
}

/// The server's TLS: the server configuration (with the current pair), the limits and the
/// counts.
pub(crate) struct Tls {
    /// Replaced whole at each rotation.
    server: RwLock<Arc<rustls::ServerConfig>>,
    config: TlsConfig,
    /// The files' content last loaded (or refused), to notice a change.
    seen: Mutex<Seen>,
    handshakes: Arc<tokio::sync::Semaphore>,
    pub(crate) stats: Arc<TlsStats>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        problem: format!("cannot read: {e}"),
    })
}

/// When the leaf certificate `der` expires, in seconds since the Unix epoch: its
/// TBSCertificate's `validity.notAfter` (UTCTime or GeneralizedTime, UTC).
fn not_after(der: &[u8]) -> Option<i64> {
    /// The DER element at `at`: (tag, start of its content, content length).
    fn element(der: &[u8], at: usize) -> Option<(u8, usize, usize)> {
        let tag = *der.get(at)?;
        let first = *der.get(at + 1)? as usize;
        if first < 0x80 {
            return Some((tag, at + 2, first));
        }
        let n = first & 0x7f;
        let len = (0..n).try_fold(0usize, |len, i| {
            Some((len << 8) | *der.get(at + 2 + i)? as usize)
        })?;
        Some((tag, at + 2 + n, len))
    }
    let (_, tbs, _) = element(der, 0)?;
    let (_, mut at, _) = element(der, tbs)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity.
    let (tag, start, len) = element(der, at)?;
    if tag == 0xa0 {
        at = start + len;
    }
    for _ in 0..3 {
        let (_, start, len) = element(der, at)?;
        at = start + len;
    }
    let (_, validity, _) = element(der, at)?;
    let (_, start, len) = element(der, validity)?;
    let (tag, start, len) = element(der, start + len)?;
    let text = std::str::from_utf8(der.get(start..start + len)?).ok()?;
    asn1_time(tag, text)
}

/// An ASN.1 UTCTime (tag 0x17, `YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (0x18, `YYYYMMDDHHMMSSZ`) as seconds since the Unix epoch.
fn asn1_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits.get(..4)?.parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, sec) = (field(4)?, field(6)?, field(8)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// The pair in these files' contents, checked.
fn parse(config: &TlsConfig, cert: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |path: &Path, problem: String| TlsError::File {
        path: path.to_owned(),
        problem,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&config.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(bad(&config.cert, "holds no PEM certificate".into()));
    }
    let der = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| bad(&config.key, format!("holds no PEM private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad(&config.key, format!("unusable private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| TlsError::Mismatch {
        cert: config.cert.clone(),
        key: config.key.clone(),
        problem: e.to_string(),
    })?;
    Ok(Arc::new(pair))
}

impl Tls {
    /// Load the pair and make the server configuration.
    pub(crate) fn new(config: TlsConfig) -> Result<Self, TlsError> {
        config.check()?;
        let (cert, key) = (read(&config.cert)?, read(&config.key)?);
        let pair = parse(&config, &cert, &key)?;
        let stats = Arc::new(TlsStats::default());
        stats.set_not_after(pair.end_entity_cert().ok().and_then(|c| not_after(c)));
        Ok(Self {
            server: RwLock::new(server_config(&config, pair)?),
            handshakes: Arc::new(tokio::sync::Semaphore::new(config.max_handshakes)),
            config,
            seen: Mutex::new(Seen {
                cert,
                key,
                refused: None,
            }),
            stats,
        })
    }

    /// How often to check the files, if at all.
    pub(crate) fn reload_every(&self) -> Option<Duration> {
        self.config.reload_every
    }

    /// Read the files again; swap the pair in if they changed and are good. `Err`: the
    /// files hold a pair that is refused, newly (logged and counted) or still (the same
    /// files as the last refusal: not logged or counted again, but refused again).
    pub(crate) fn reload(&self) -> Result<Reloaded, String> {
        let (cert, key) = match (read(&self.config.cert), read(&self.config.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return Err(e.to_string()),
        };
        let mut seen = crate::sync::lock(&self.seen);
        if seen.cert == cert && seen.key == key {
            return match &seen.refused {
                Some(why) => Err(why.clone()),
                None => Ok(Reloaded::Unchanged),
            };
        }
        seen.cert = cert;
        seen.key = key;
        let parsed = parse(&self.config, &seen.cert, &seen.key).and_then(|pair| {
            let expires = pair.end_entity_cert().ok().and_then(|c| not_after(c));
            Ok((server_config(&self.config, pair)?, expires))
        });
        match parsed {
            Ok((next, expires)) => {
                seen.refused = None;
                self.stats.set_not_after(expires);
                *self
                    .server
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
                self.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.config.cert.display(), "TLS: new certificate in use for new connections");
                Ok(Reloaded::Swapped)
            }
            Err(e) => {
                // Tried again at the next check only if the files change again: a pair
                // replaced a moment apart changes the second file too.
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "TLS: new certificate refused; the current one stays");
                seen.refused = Some(e.to_string());
                Err(e.to_string())
            }
        }
    }

    /// A warning when the certificate in use has expired or expires within
    /// [`EXPIRY_WARNING`], logged at warn as well.
    pub(crate) fn expiry_warning(&self) -> Option<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let warning = expiry_warning(self.stats.not_after()?, now)?;
        tracing::warn!(cert = %self.config.cert.display(), "TLS: {warning}");
        Some(warning)
    }

    /// The handshake on `stream`, within the limits; `None` (counted) when it failed.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        shutdown: &Shutdown,
        idle_grace: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let first_byte_timeout = self.config.first_byte_timeout;
        let handshake = async {
            // The first byte, holding nothing: a silent connection is cut here.
            let mut byte = [0u8; 1];
            match tokio::time::timeout(first_byte_timeout, stream.peek(&mut byte)).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Ok(0)) => return Err(Failure::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(io_failure(&e)),
            }
            // The whole ClientHello, still holding no place: half of one costs a buffer.
            let start =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                    .await
                    .map_err(|e| io_failure(&e))?;
            // The work: a place for the key exchange and the rest of the handshake.
            let waiting = Gauge::up(&self.stats.waiting);
            let _place = self
                .handshakes
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Failure::Io)?;
            drop(waiting);
            let _in_progress = Gauge::up(&self.stats.in_progress);
            let config = self
                .server
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            start.into_stream(config).await.map_err(|e| io_failure(&e))
        };
        let drain_cut = async {
            shutdown.stop_soon().await;
            tokio::time::sleep(idle_grace).await;
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.config.handshake_timeout, handshake) => {
                r.unwrap_or(Err(Failure::Timeout))
            }
            _ = drain_cut => Err(Failure::Drain),
        };
        match outcome {
            Ok(s) => {
                self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                Some(s)
            }
            Err(f) => {
                self.stats.failures[f as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = f.as_str(), "TLS handshake failed");
                None
            }
        }
    }
}

/// How an I/O error of the handshake counts.
fn io_failure(e: &std::io::Error) -> Failure {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => Failure::Eof,
        std::io::ErrorKind::InvalidData => Failure::Protocol,
        _ => Failure::Io,
    }
}

/// One unit of a gauge, given back when dropped (the handshake's future may be dropped at
/// any await: a timeout, the drain).
struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicI64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_expired_or_expiring_within_7_days_are_warned_about() {
        let day = 86_400;
        assert_eq!(expiry_warning(1_000 + 8 * day, 1_000), None);
        assert_eq!(
            expiry_warning(1_000 + 2 * day + 59, 1_000).as_deref(),
            Some("the certificate in use expires in 2days")
        );
        assert_eq!(
            expiry_warning(1_000 - 3_600, 1_000).as_deref(),
            Some("the certificate in use expired 1h ago")
        );
        assert!(expiry_warning(1_000, 1_000).is_some_and(|w| w.contains("expired")));
    }

    #[test]
    fn asn1_times_are_read_as_unix_seconds() {
        assert_eq!(asn1_time(0x17, "250102030405Z"), Some(1_735_787_045));
        assert_eq!(asn1_time(0x17, "491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, "40960101000000Z"), Some(67_090_118_400));
        assert_eq!(asn1_time(0x18, "19700101000000Z"), Some(0));
        for bad in ["2501020304Z", "250102030405", "25010203040aZ"] {
            assert_eq!(asn1_time(0x17, bad), None, "{bad}");
        }
    }

    #[test]
    fn a_certificates_expiry_is_read_from_its_der() {
        // rcgen's certificates are valid until 4096-01-01 unless told otherwise.
        let ca = lameduck_testkit::tls::TestCa::new("not-after");
        let (der, _, _) = ca.leaf(7);
        assert_eq!(not_after(&der), Some(67_090_118_400));
        assert_eq!(not_after(&der[..40]), None, "a truncated certificate");
    }
}
