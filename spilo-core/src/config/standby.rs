//! `standby_cluster` (dynamic configuration, Patroni's section): this cluster follows another
//! one — its primary over streaming replication (`host`, `port`, `primary_slot_name`), its
//! archive (spilo's `scope` and `storage`, the form of `bootstrap.clone`, or a site's
//! `restore_command`), or both — and its leader is a *standby leader* that never promotes
//! while the section is there. Removing the section promotes the cluster.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backup::StorageConfig;

/// The parsed `standby_cluster` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyCluster {
    /// The source cluster's primary (or any member of it) to stream from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its port (default 5432).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The slot on the source the standby leader streams through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_slot_name: Option<String>,
    /// How the standby leader's copy is made (`spilo_restore` from the source's archive,
    /// `basebackup` from `host`); default: both that apply, in that order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_replica_methods: Option<Vec<String>>,
    /// A site's own `restore_command` for the standby leader (instead of spilo's `wal-fetch`
    /// from the source's archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    /// `recovery_min_apply_delay` on the standby leader (a delayed standby cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_min_apply_delay: Option<Value>,
    /// `archive_cleanup_command` on the standby leader (Patroni's key; passed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_cleanup_command: Option<String>,
    /// spilo: the source cluster's scope, whose archive (backups and WAL) this cluster reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// spilo: the store holding the source's archive (the form of `storage:`); default: this
    /// cluster's own store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageConfig>,
}

/// Why a `standby_cluster` section is refused; the message names the key.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StandbyError {
    /// The section is not a mapping.
    #[error("standby_cluster: {0} is not a mapping")]
    NotAMapping(Value),
    /// A key is unknown or has the wrong type.
    #[error("standby_cluster: {0}")]
    Malformed(#[source] std::sync::Arc<serde_json::Error>),
    /// `host` is not a host name.
    #[error("standby_cluster.host: '{0}' is not a host name")]
    BadHost(String),
    /// `port: 0`.
    #[error("standby_cluster.port: 0 is not a port")]
    PortZero,
    /// `primary_slot_name` is not a replication slot name.
    #[error(
        "standby_cluster.primary_slot_name: '{0}' is not a slot name (lower-case letters, digits and _, at most 63)"
    )]
    BadSlotName(String),
    /// A command (`restore_command`, `archive_cleanup_command`) that is not one line.
    #[error("standby_cluster.{0}: must be one non-empty line")]
    NotOneLine(&'static str),
    /// `recovery_min_apply_delay` is not a duration.
    #[error("standby_cluster.recovery_min_apply_delay: {0} is not a duration ('5min', 300000)")]
    BadDelay(Value),
    /// `scope` is not a scope.
    #[error("standby_cluster.scope: '{0}' is not a scope")]
    BadScope(String),
    /// A `storage` with neither `scope` nor a prefix.
    #[error(
        "standby_cluster.storage: needs standby_cluster.scope (the source cluster whose archive it holds) or a storage.prefix"
    )]
    StorageWithoutScope,
    /// A bad key of `storage`.
    #[error("standby_cluster.{key}: {message}")]
    Storage {
        /// The key under `standby_cluster` (`storage.bucket`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Nothing to follow.
    #[error(
        "standby_cluster: names no source (host to stream from, scope of an archive, or restore_command)"
    )]
    NoSource,
    /// An archive in this cluster's own store, and there is none.
    #[error(
        "standby_cluster.scope: names an archive in this cluster's own store, and there is no storage: section"
    )]
    NoOwnStore,
    /// The source archive is this cluster's own prefix.
    #[error(
        "standby_cluster.scope: the source '{scope}' resolves to this cluster's own prefix {prefix}: once promoted, this cluster would archive into its source"
    )]
    OwnPrefix {
        /// The source's scope.
        scope: String,
        /// The prefix both resolve to.
        prefix: String,
    },
}

/// Equal when they say the same (the daemon logs a changed section's error once).
impl PartialEq for StandbyError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// Where a standby cluster reads the source's archive from.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveSource {
    /// The source's scope.
    pub scope: String,
    /// Its store (None: this cluster's own).
    pub storage: Option<StorageConfig>,
}

impl StandbyCluster {
    /// The section in a dynamic configuration's other keys: `Ok(None)` when absent or null,
    /// an error naming the key when it is malformed.
    pub fn from_dynamic(
        extra: &std::collections::BTreeMap<String, Value>,
    ) -> Result<Option<StandbyCluster>, StandbyError> {
        match extra.get("standby_cluster") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Self::parse(v).map(Some),
        }
    }

    /// Parses and checks one section.
    pub fn parse(v: &Value) -> Result<StandbyCluster, StandbyError> {
        if !v.is_object() {
            return Err(StandbyError::NotAMapping(v.clone()));
        }
        let s: StandbyCluster = serde_json::from_value(v.clone())
            .map_err(|e| StandbyError::Malformed(std::sync::Arc::new(e)))?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), StandbyError> {
        let text_ok = |s: &str| !s.trim().is_empty() && !s.contains(['\n', '\r', '\0']);
        if let Some(h) = &self.host {
            if !text_ok(h) || h.contains([' ', '\'']) {
                return Err(StandbyError::BadHost(h.clone()));
            }
        }
        if self.port == Some(0) {
            return Err(StandbyError::PortZero);
        }
        if let Some(s) = &self.primary_slot_name {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(StandbyError::BadSlotName(s.clone()));
            }
        }
        for (k, v) in [
            ("restore_command", &self.restore_command),
            ("archive_cleanup_command", &self.archive_cleanup_command),
        ] {
            if let Some(c) = v {
                if !text_ok(c) {
                    return Err(StandbyError::NotOneLine(k));
                }
            }
        }
        if let Some(d) = &self.recovery_min_apply_delay {
            let ok = match d {
                Value::Number(n) => n.as_u64().is_some(),
                Value::String(s) => text_ok(s) && s.len() < 64,
                _ => false,
            };
            if !ok {
                return Err(StandbyError::BadDelay(d.clone()));
            }
        }
        if let Some(sc) = &self.scope {
            if sc.trim().is_empty() || sc.contains(['/', '\n']) {
                return Err(StandbyError::BadScope(sc.clone()));
            }
        }
        let prefixed = self
            .storage
            .as_ref()
            .and_then(|s| s.prefix.as_deref())
            .is_some_and(|p| !p.trim_matches('/').is_empty());
        if self.storage.is_some() && self.scope.is_none() && !prefixed {
            return Err(StandbyError::StorageWithoutScope);
        }
        if let Some(st) = &self.storage {
            super::backup::check(Some(st), None, &[]).map_err(|p| StandbyError::Storage {
                key: p.key,
                message: p.message,
            })?;
        }
        if self.host.is_none() && self.archive().is_none() && self.restore_command.is_none() {
            return Err(StandbyError::NoSource);
        }
        Ok(())
    }

    /// The source's archive, when the section names one.
    pub fn archive(&self) -> Option<ArchiveSource> {
        if self.scope.is_none() && self.storage.is_none() {
            return None;
        }
        Some(ArchiveSource {
            scope: self.scope.clone().unwrap_or_default(),
            storage: self.storage.clone(),
        })
    }

    /// The port to stream from.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(super::DEFAULT_PG_PORT)
    }

    /// The methods that build the standby leader, in order: as listed, or the source's
    /// archive first (when there is one) then `pg_basebackup` from `host` (when set).
    pub fn methods(&self) -> Vec<String> {
        if let Some(m) = &self.create_replica_methods {
            return m.clone();
        }
        let mut out = Vec::new();
        if self.archive().is_some() {
            out.push(super::METHOD_RESTORE.to_string());
        }
        if self.host.is_some() {
            out.push(super::METHOD_BASEBACKUP.to_string());
        }
        out
    }

    /// Refuses a source archive that is this cluster's own prefix: once promoted, this
    /// cluster archives there, into its source (spilo#1122).
    pub fn check_place(
        &self,
        own: Option<&StorageConfig>,
        own_scope: &str,
    ) -> Result<(), StandbyError> {
        let Some(a) = self.archive() else {
            return Ok(());
        };
        let Some(own) = own else {
            if a.storage.is_none() {
                return Err(StandbyError::NoOwnStore);
            }
            return Ok(());
        };
        let source = a.storage.as_ref().unwrap_or(own);
        if super::backup::same_place(source, own)
            && source.base_prefix(&a.scope, 0) == own.base_prefix(own_scope, 0)
        {
            return Err(StandbyError::OwnPrefix {
                scope: a.scope.clone(),
                prefix: own.base_prefix(own_scope, 0),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fs(path: &str) -> StorageConfig {
        serde_json::from_value(json!({"type": "fs", "path": path})).expect("storage")
    }

    #[test]
    fn a_section_is_parsed_with_patroni_and_spilo_keys() {
        let s = StandbyCluster::parse(&json!({
            "host": "10.0.0.5", "port": 5433, "primary_slot_name": "standby_b",
            "recovery_min_apply_delay": "5min", "scope": "orders",
            "storage": {"type": "fs", "path": "/backups"}
        }))
        .expect("valid");
        assert_eq!(s.port(), 5433);
        assert_eq!(s.methods(), vec!["spilo_restore", "basebackup"]);
        assert_eq!(s.archive().expect("archive").scope, "orders");
        let streaming_only = StandbyCluster::parse(&json!({"host": "h"})).expect("valid");
        assert_eq!(streaming_only.port(), 5432);
        assert_eq!(streaming_only.methods(), vec!["basebackup"]);
        assert!(streaming_only.archive().is_none());
    }

    #[test]
    fn absent_and_null_mean_no_standby_cluster() {
        let mut extra = std::collections::BTreeMap::new();
        assert_eq!(StandbyCluster::from_dynamic(&extra), Ok(None));
        extra.insert("standby_cluster".to_string(), Value::Null);
        assert_eq!(StandbyCluster::from_dynamic(&extra), Ok(None));
        extra.insert("standby_cluster".to_string(), json!({"host": "h"}));
        assert!(StandbyCluster::from_dynamic(&extra).expect("ok").is_some());
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        for (v, key) in [
            (json!("h"), "standby_cluster:"),
            (json!({}), "names no source"),
            (json!({"host": "h", "port": 0}), "standby_cluster.port"),
            (json!({"host": "h", "port": 70000}), "standby_cluster"),
            (json!({"host": "a b"}), "standby_cluster.host"),
            (
                json!({"host": "h", "primary_slot_name": "Bad-Slot"}),
                "primary_slot_name",
            ),
            (json!({"restore_command": "cp\n%f"}), "restore_command"),
            (
                json!({"host": "h", "recovery_min_apply_delay": [1]}),
                "recovery_min_apply_delay",
            ),
            (json!({"host": "h", "hots": "x"}), "unknown field"),
            (
                json!({"storage": {"type": "fs", "path": "/b"}, "host": "h"}),
                "needs standby_cluster.scope",
            ),
            (
                json!({"scope": "a", "storage": {"type": "fs", "path": "rel"}}),
                "standby_cluster.storage.path",
            ),
        ] {
            let e = StandbyCluster::parse(&v)
                .expect_err(&v.to_string())
                .to_string();
            assert!(e.contains(key), "{v}: {e}");
        }
    }

    #[test]
    fn the_source_archive_may_not_be_this_clusters_own_prefix() {
        let own = fs("/backups");
        let same = StandbyCluster::parse(&json!({"scope": "b"})).expect("valid");
        let e = same
            .check_place(Some(&own), "b")
            .expect_err("own prefix")
            .to_string();
        assert!(e.contains("would archive into its source"), "{e}");
        let other = StandbyCluster::parse(&json!({"scope": "a"})).expect("valid");
        assert!(other.check_place(Some(&own), "b").is_ok());
        let elsewhere = StandbyCluster::parse(
            &json!({"scope": "b", "storage": {"type": "fs", "path": "/elsewhere"}}),
        )
        .expect("valid");
        assert!(elsewhere.check_place(Some(&own), "b").is_ok());
        let e = other
            .check_place(None, "b")
            .expect_err("no own store")
            .to_string();
        assert!(e.contains("no storage: section"), "{e}");
    }
}
