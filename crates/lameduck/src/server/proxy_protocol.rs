//! The PROXY protocol (`Builder::proxy_protocol`): a load balancer such as HAProxy
//! (`send-proxy-v2`) opens each connection with a header naming the client, so that the
//! request context, the access log and the application see the client's address, not the
//! balancer's. Version 2 (binary) and version 1 (text) are read, parsed by the `ppp` crate,
//! within the header read timeout; a connection without a valid header is closed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The longest version 1 line (the specification's limit).
const V1_MAX: usize = 107;
/// The longest version 2 header lameduck reads (addresses and a few TLVs).
const V2_MAX: usize = 16 + 1024;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// It did not arrive in time.
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
    /// The connection does not start with a PROXY protocol header, or it is malformed.
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    /// The connection failed while reading it.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Read the PROXY header at the start of `io` (nothing more), within `timeout`: the
/// client's address, or `None` when the proxy speaks for itself (`LOCAL`, `UNKNOWN`: its
/// health checks).
pub(crate) async fn read_header<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read(io))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read<T: AsyncRead + Unpin>(io: &mut T) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let invalid = |why: String| ProxyHeaderError::Invalid(why);
    let mut head = vec![0u8; 16];
    io.read_exact(&mut head[..12]).await?;
    if head[..12] == *V2_SIGNATURE {
        io.read_exact(&mut head[12..16]).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if 16 + len > V2_MAX {
            return Err(invalid(format!("a version 2 header of {len} bytes")));
        }
        head.resize(16 + len, 0);
        io.read_exact(&mut head[16..]).await?;
        let header = ppp::v2::Header::try_from(&head[..]).map_err(|e| invalid(e.to_string()))?;
        if header.command == ppp::v2::Command::Local {
            return Ok(None);
        }
        return Ok(match header.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::IPv6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        });
    }
    if !head.starts_with(b"PROXY ") {
        return Err(invalid("the connection does not start with one".into()));
    }
    head.truncate(12);
    while !head.ends_with(b"\r\n") {
        if head.len() >= V1_MAX {
            return Err(invalid("a version 1 line over 107 bytes".into()));
        }
        head.push(io.read_u8().await?);
    }
    let text = std::str::from_utf8(&head).map_err(|e| invalid(e.to_string()))?;
    let header = ppp::v1::Header::try_from(text).map_err(|e| invalid(e.to_string()))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v1::Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(source: &str, dest: &str) -> Vec<u8> {
        let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), dest.parse().unwrap());
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (s, d),
        )
        .build()
        .unwrap()
    }

    async fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut with_request = bytes.to_vec();
        with_request.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut io = &with_request[..];
        let r = read_header(&mut io, Duration::from_secs(1)).await;
        if r.is_ok() {
            assert_eq!(io, b"GET / HTTP/1.1\r\n", "exactly the header is read");
        }
        r
    }

    #[tokio::test]
    async fn both_versions_give_the_client_address_and_nothing_more_is_read() {
        let addr = parse(&v2("203.0.113.7:51000", "10.0.0.1:8080"))
            .await
            .unwrap();
        assert_eq!(addr, Some("203.0.113.7:51000".parse().unwrap()));
        let addr = parse(&v2("[2001:db8::1]:443", "[2001:db8::2]:8080"))
            .await
            .unwrap();
        assert_eq!(addr, Some("[2001:db8::1]:443".parse().unwrap()));
        let addr = parse(b"PROXY TCP4 198.51.100.9 10.0.0.1 40000 8080\r\n")
            .await
            .unwrap();
        assert_eq!(addr, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.unwrap(), None);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY ",
        ] {
            assert!(parse(bad).await.is_err(), "{bad:?}");
        }
        let mut silent = tokio::io::empty();
        assert!(read_header(&mut silent, Duration::from_millis(50))
            .await
            .is_err());
        let (mut stalled, _keep) = tokio::io::duplex(64);
        assert!(matches!(
            read_header(&mut stalled, Duration::from_millis(50)).await,
            Err(ProxyHeaderError::Timeout(_))
        ));
    }
}
