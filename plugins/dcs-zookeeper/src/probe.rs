//! A one-off TLS handshake with the first server, run next to the first connection attempt:
//! zookeeper-client retries a failing TLS handshake until its deadline and reports only a
//! timeout, so when the connection fails the probe's answer says why ("invalid peer
//! certificate: UnknownIssuer", "received fatal alert: CertificateRequired", …).
//!
//! The handshake uses the same CA and client identity as the client. With TLS 1.3 a server
//! that requires a client certificate rejects a missing one only after the handshake, with an
//! alert; so after the handshake the probe reads briefly: an alert is an error, silence (the
//! server waits for the ZooKeeper connect request) means the handshake was accepted.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long the probe waits for an alert after the handshake.
const ALERT_WAIT: Duration = Duration::from_millis(500);

/// A rustls client configuration equivalent to the client library's.
#[derive(Clone, Debug)]
pub(crate) struct TlsProbe {
    config: Arc<ClientConfig>,
}

impl TlsProbe {
    /// From the PEM text of the CA and of the optional client certificate and key; `None`
    /// when they do not parse (the client library reports that itself).
    pub(crate) fn new(ca: &str, identity: Option<(&str, &str)>) -> Option<TlsProbe> {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
            roots.add(cert.ok()?).ok()?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain = rustls_pemfile::certs(&mut cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                let key = rustls_pemfile::private_key(&mut key.as_bytes()).ok()??;
                builder.with_client_auth_cert(chain, key).ok()?
            }
            None => builder.with_no_client_auth(),
        };
        Some(TlsProbe {
            config: Arc::new(config),
        })
    }

    /// Handshakes with `host_port`; `Some(why)` when the handshake (or the server right
    /// after it) refuses, `None` when it was accepted. The caller bounds the wait.
    pub(crate) async fn why_refused(&self, host_port: &str) -> Option<String> {
        let (host, _) = host_port.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).ok()?;
        let tcp = match TcpStream::connect(host_port).await {
            Ok(tcp) => tcp,
            Err(e) => return Some(format!("TCP connection to {host_port}: {e}")),
        };
        let connector = TlsConnector::from(self.config.clone());
        let mut tls = match connector.connect(name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return Some(format!("TLS handshake with {host_port}: {e}")),
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(ALERT_WAIT, tls.read(&mut byte)).await {
            Ok(Err(e)) => Some(format!("TLS handshake with {host_port}: {e}")),
            Ok(Ok(0)) => Some(format!(
                "{host_port} closed the connection right after the TLS handshake"
            )),
            Ok(Ok(_)) | Err(_) => None,
        }
    }
}
