//! Errors of configuration loading and validation.

use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded or is not acceptable.
///
/// Every variant renders as one line naming where the bad value came from (`origin`: the file
/// path, the environment variable or `built-in defaults`) and the dotted key path, e.g.
/// `node.yml: postgresql.data_dir: missing required key`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The document is not valid YAML, or a value has the wrong type or is missing.
    #[error("{origin}: {}{message}", key_prefix(key))]
    Parse {
        /// File path or environment variable name.
        origin: String,
        /// Dotted key path (`bootstrap.dcs.ttl`); empty for document-level errors.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("{origin}: {}{message}", key_prefix(key))]
    Invalid {
        /// File path or environment variable name.
        origin: String,
        /// Dotted key path (`restapi.listen`); empty for whole-document errors.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A value that is not acceptable, by its dotted key path: what a section's checks return
/// (the loader adds where the value came from and makes it a [`ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct KeyProblem {
    /// Dotted key path (`storage.bucket`, `load_balancers[0].timeout`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl KeyProblem {
    /// The problem of `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> KeyProblem {
        KeyProblem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    /// The dotted key path the error is about (empty when it concerns the whole document or
    /// the file could not be read).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Read { .. } => "",
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => key,
        }
    }

    /// Where the offending value came from: the file path or the environment variable name.
    pub fn origin(&self) -> String {
        match self {
            ConfigError::Read { path, .. } => path.display().to_string(),
            ConfigError::Parse { origin, .. } | ConfigError::Invalid { origin, .. } => {
                origin.clone()
            }
        }
    }

    /// An [`ConfigError::Invalid`] error.
    pub(crate) fn invalid(origin: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            message: one_line(&message.into()),
        }
    }

    /// A [`ConfigError::Parse`] error.
    pub(crate) fn parse(origin: &str, key: &str, message: impl Into<String>) -> Self {
        ConfigError::Parse {
            origin: origin.to_string(),
            key: key.to_string(),
            message: one_line(&message.into()),
        }
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// Collapses whitespace runs containing newlines so that messages stay on one line.
pub(crate) fn one_line(s: &str) -> String {
    if !s.contains('\n') && !s.contains('\r') {
        return s.to_string();
    }
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_with_origin_and_key() {
        let e = ConfigError::invalid("node.yml", "restapi.listen", "bad\naddress");
        assert_eq!(e.to_string(), "node.yml: restapi.listen: bad address");
        let e = ConfigError::parse("node.yml", "", "not yaml");
        assert_eq!(e.to_string(), "node.yml: not yaml");
        let e = ConfigError::Read {
            path: PathBuf::from("/nope.yml"),
            source: io::Error::new(io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            e.to_string(),
            "/nope.yml: cannot read the configuration file: No such file"
        );
        assert_eq!(e.origin(), "/nope.yml");
    }
}
