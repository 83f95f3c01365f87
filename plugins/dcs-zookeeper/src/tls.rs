//! TLS to ZooKeeper: the PEM files of [`ZkTls`] turned into the client library's options.
//!
//! zookeeper-client builds its rustls configuration with the process-wide default crypto
//! provider. The workspace compiles rustls with both `ring` (etcd's client) and `aws-lc-rs`
//! (zookeeper-client's futures-rustls), and rustls then refuses to pick one by itself and
//! panics; so `ring` is installed as the default before the first TLS client is made (a no-op
//! when the process installed one already).

use std::path::{Path, PathBuf};

use spilo_sdk::DcsError;
use zookeeper_client::TlsOptions;

use crate::probe::TlsProbe;
use crate::settings::ZkTls;

/// Where the system CA bundle is looked for when no `cacert` is configured (Debian/Ubuntu,
/// RHEL/Fedora, Alpine/BSD).
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why the TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A configured file could not be read.
    #[error("cannot read zookeeper.{key} file {}", path.display())]
    Read {
        /// The config key naming the file (`cacert`, `cert`, `key`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("zookeeper.{key} file {} holds no usable PEM {what}", path.display())]
    Pem {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was expected (`CA certificate`, `certificate and private key`).
        what: &'static str,
        /// What the client library said.
        #[source]
        source: zookeeper_client::Error,
    },
    /// Only one of `cert` and `key` is set.
    #[error("zookeeper.{missing} is required when zookeeper.{given} is set")]
    Incomplete {
        /// The key that is missing.
        missing: &'static str,
        /// The key that is set.
        given: &'static str,
    },
    /// No `cacert` and no system CA bundle found.
    #[error("zookeeper.cacert is not set and no system CA bundle was found (looked at {0})")]
    NoSystemBundle(String),
}

impl TlsSetupError {
    /// As a [`DcsError`] of the `connect` operation, with the whole cause chain.
    pub fn into_dcs_error(self) -> DcsError {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        DcsError::Refused {
            op: "connect",
            message,
        }
    }
}

fn read(key: &'static str, path: &Path) -> Result<String, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|source| TlsSetupError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The client library's TLS options for `tls`: the CA (or the system bundle), and the client
/// identity when `cert` and `key` are set; and the same as a [`TlsProbe`]. Host names are
/// verified against the certificates (an IP address against an IP subjectAltName).
pub(crate) fn options(tls: &ZkTls) -> Result<(TlsOptions, Option<TlsProbe>), TlsSetupError> {
    // Err only when a provider is installed already: either way there is one now.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca_key, ca_path) = match &tls.cacert {
        Some(path) => ("cacert", path.clone()),
        None => {
            let found = SYSTEM_CA_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| TlsSetupError::NoSystemBundle(SYSTEM_CA_BUNDLES.join(", ")))?;
            ("cacert", found)
        }
    };
    let ca = read(ca_key, &ca_path)?;
    let mut options = TlsOptions::new()
        .with_pem_ca(&ca)
        .map_err(|source| TlsSetupError::Pem {
            key: ca_key,
            path: ca_path.clone(),
            what: "CA certificate",
            source,
        })?;
    let probe = match (&tls.cert, &tls.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read("cert", cert_path)?;
            let key = read("key", key_path)?;
            options =
                options
                    .with_pem_identity(&cert, &key)
                    .map_err(|source| TlsSetupError::Pem {
                        key: "cert",
                        path: cert_path.clone(),
                        what: "certificate and private key (with zookeeper.key)",
                        source,
                    })?;
            TlsProbe::new(&ca, Some((&cert, &key)))
        }
        (Some(_), None) => {
            return Err(TlsSetupError::Incomplete {
                missing: "key",
                given: "cert",
            })
        }
        (None, Some(_)) => {
            return Err(TlsSetupError::Incomplete {
                missing: "cert",
                given: "key",
            })
        }
        (None, None) => TlsProbe::new(&ca, None),
    };
    Ok((options, probe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_bad_files_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = ZkTls {
            cacert: Some(dir.path().join("nope.pem")),
            ..ZkTls::default()
        };
        let e = options(&missing).expect_err("missing file accepted");
        assert!(
            e.to_string()
                .starts_with("cannot read zookeeper.cacert file"),
            "{e}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let bad = ZkTls {
            cacert: Some(garbage),
            ..ZkTls::default()
        };
        let e = options(&bad).expect_err("garbage CA accepted");
        assert!(e.to_string().contains("zookeeper.cacert file"), "{e}");
        let half = ZkTls {
            cacert: None,
            cert: Some(dir.path().join("c.pem")),
            key: None,
        };
        // Either the system bundle is missing or the key is: both are errors.
        assert!(options(&half).is_err());
        let msg = options(&half).expect_err("half identity").into_dcs_error();
        assert!(msg.to_string().contains("zookeeper."), "{msg}");
    }
}
