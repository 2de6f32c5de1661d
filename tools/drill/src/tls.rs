//! `https://` targets: rustls (ring) with the CA given by `--ca`, or no verification with
//! `--insecure`. The drill trusts only what it is given: an `https://` target needs one of
//! the two. ALPN offers `h2` in `--mode h2` and `http/1.1` otherwise.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// How an `https://` target is reached: the client and the name it verifies.
#[derive(Clone)]
pub struct TlsTarget {
    /// The client (its ALPN set for the mode).
    pub connector: TlsConnector,
    /// The server name sent and verified.
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client for `host` under `--ca`/`--insecure`, offering HTTP/2 (`h2`) or HTTP/1.1.
///
/// # Errors
/// Neither `--ca` nor `--insecure`; a CA file that cannot be read or holds no certificate;
/// a host that is not a valid server name.
pub fn target(
    host: &str,
    ca: Option<&Path>,
    insecure: bool,
    h2: bool,
) -> anyhow::Result<TlsTarget> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?;
    let mut config = match (ca, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        (Some(path), false) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("--ca {}: cannot read", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--ca {}: not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("--ca {}: holds no PEM certificate", path.display());
            }
            for c in certs {
                roots
                    .add(c)
                    .with_context(|| format!("--ca {}: unusable certificate", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, false) => {
            bail!("https:// targets need --ca PATH (the CA to trust) or --insecure")
        }
    };
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let name = ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host} is not a valid TLS server name"))?;
    Ok(TlsTarget {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// `--insecure`: any certificate is accepted; signatures are still checked, so the
/// handshake is a real one.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
