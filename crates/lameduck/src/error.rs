//! The library's error type.

use std::net::SocketAddr;

/// Errors from starting a server. Each names the input at fault; the underlying error, if
/// any, is its [`source`](std::error::Error::source), not repeated in its message (print
/// the chain, as `anyhow`'s `{:#}` does, to see both once).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listener could not be bound (address in use, no permission, bad address).
    #[error("failed to bind {which} listener on {addr}")]
    Bind {
        /// `"HTTP"` or `"admin"`.
        which: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),
    /// Inherited sockets (`LISTEN_FDS`) are malformed or unusable.
    #[error("socket activation: {0}")]
    Activation(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The TLS certificate or key cannot be used.
    #[cfg(feature = "tls")]
    #[error("TLS")]
    Tls(#[from] TlsError),
}

#[cfg(feature = "tls")]
/// A certificate and key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or parsed.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The key is not the certificate's.
    #[error("{} does not match the certificate in {}: {problem}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: std::path::PathBuf,
        /// The key file.
        key: std::path::PathBuf,
        /// rustls's words.
        problem: String,
    },
    /// A limit of [`TlsConfig`](crate::server::TlsConfig) is out of range.
    #[error("TLS setting {name}: {problem}")]
    Setting {
        /// The setting (`max_handshakes`, `first_byte_timeout`, ...).
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// A panic's message, when its payload is a string (as `panic!` with a message makes).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic payload)")
}
