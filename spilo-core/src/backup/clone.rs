//! Point-in-time clones (`bootstrap.method: clone`): a new cluster made from another cluster's
//! base backup and archived WAL, recovered to a target and promoted. The backup is chosen by
//! its recorded stop time and position (never by object modification time); the WAL is read
//! from the source's prefix through the daemon's fetcher; the clone archives only into its own
//! prefix (the configuration refuses a source that resolves to it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::base::Manifest;
use super::crypt::SecretKey;
use super::fetch::{Fetcher, Source};
use crate::config::backup::{CloneConfig, CloneTarget, StorageConfig};
use crate::dcs::codec::format_lsn;
use crate::ha::replica::ArchiveError;

/// Why no backup of the source suits a clone's target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoBackup {
    /// The source has none.
    #[error("the source has no complete backup")]
    Empty,
    /// None finished before `target_time`.
    #[error("no backup of the source finished before {target} (the oldest finished at {oldest})")]
    NoneBefore {
        /// The target time.
        target: String,
        /// When the oldest finished (or `an unknown time`).
        oldest: String,
    },
    /// None ends at or before `target_lsn`.
    #[error("no backup of the source ends at or before {0}")]
    NoneUpTo(String),
    /// None at all for the target.
    #[error("no backup")]
    None,
}

/// The backup to restore for `target`: the newest that finished before it (by its recorded
/// stop time or stop position); for a restore point, a transaction or `immediate`, the newest.
pub fn choose_backup<'a>(
    backups: &'a [Manifest],
    target: &CloneTarget,
) -> Result<&'a Manifest, NoBackup> {
    let newest = |ok: &dyn Fn(&Manifest) -> bool| {
        backups
            .iter()
            .filter(|m| ok(m))
            .max_by_key(|m| (m.stop(), m.finish_time.clone()))
    };
    if backups.is_empty() {
        return Err(NoBackup::Empty);
    }
    match target {
        CloneTarget::Time(t) => newest(&|m: &Manifest| m.finished().is_some_and(|f| f <= *t))
            .ok_or_else(|| NoBackup::NoneBefore {
                target: t.to_string(),
                oldest: backups
                    .iter()
                    .filter_map(Manifest::finished)
                    .min()
                    .map(|f| f.to_rfc3339())
                    .unwrap_or_else(|| "an unknown time".into()),
            }),
        CloneTarget::Lsn(l) => {
            newest(&|m: &Manifest| m.stop() <= *l).ok_or_else(|| NoBackup::NoneUpTo(format_lsn(*l)))
        }
        CloneTarget::Name(_) | CloneTarget::Xid(_) | CloneTarget::Immediate => {
            newest(&|_: &Manifest| true).ok_or(NoBackup::None)
        }
    }
}

/// Where the archived segments end (16 MiB segments): the end of the highest segment.
pub fn archive_end(wal: &[super::catalog::WalEntry]) -> u64 {
    wal.iter()
        .filter(|w| super::layout::classify(&w.name) == Some(super::layout::WalFile::Segment))
        .filter_map(|w| {
            let log = u64::from_str_radix(&w.name[8..16], 16).ok()?;
            let seg = u64::from_str_radix(&w.name[16..24], 16).ok()?;
            Some((log << 32) + (seg + 1) * (16 << 20))
        })
        .max()
        .unwrap_or(0)
}

/// The recovery settings a clone starts with (removed again once it is promoted).
pub fn recovery_settings(c: &CloneConfig, target: &CloneTarget) -> BTreeMap<String, Value> {
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_string(), Value::from(v));
    };
    match target {
        CloneTarget::Time(t) => set("recovery_target_time", t.to_rfc3339()),
        CloneTarget::Lsn(l) => set("recovery_target_lsn", format_lsn(*l)),
        CloneTarget::Name(n) => set("recovery_target_name", n.clone()),
        CloneTarget::Xid(x) => set("recovery_target_xid", x.to_string()),
        CloneTarget::Immediate => set("recovery_target", "immediate".into()),
    }
    if *target != CloneTarget::Immediate {
        set(
            "recovery_target_inclusive",
            if c.inclusive { "on" } else { "off" }.into(),
        );
    }
    set("recovery_target_timeline", c.target_timeline.clone());
    set("recovery_target_action", "promote".into());
    p
}

/// The daemon's clone source.
pub struct Cloner {
    /// `bootstrap.clone`.
    pub cfg: CloneConfig,
    /// Where the source's backups and WAL are.
    pub source: StorageConfig,
    /// PostgreSQL major version (the layout's).
    pub major: u32,
    /// The `backup.encryption` key (the source's objects are opened with it).
    pub key: Option<SecretKey>,
    /// The fetcher serving `restore_command`.
    pub fetcher: Fetcher,
    /// Where the clone reports its progress (`GET /patroni`, `spiloctl clone --follow`).
    pub stats: Option<Arc<super::archiver::ArchiveStats>>,
}

#[async_trait::async_trait]
impl crate::ha::replica::ClusterClone for Cloner {
    async fn restore(&self, dir: &Path) -> Result<(BTreeMap<String, Value>, String), ArchiveError> {
        let target = self
            .cfg
            .target()
            .map_err(|p| ArchiveError::new(p.to_string()))?;
        let storage = super::open_storage(&self.source)
            .await
            .map_err(|e| ArchiveError::caused("the source's store", e))?;
        let base = self.source.base_prefix(&self.cfg.scope, self.major);
        let (backups, _) = super::catalog::backups(&*storage, &base)
            .await
            .map_err(|e| {
                ArchiveError::caused(format!("listing the source's backups under {base}"), e)
            })?;
        let m = choose_backup(&backups, &target)
            .map_err(|e| ArchiveError::caused("", e))?
            .clone();
        // What can be known before downloading anything: a target past the archive's end.
        match &target {
            CloneTarget::Time(t) if *t > chrono::Utc::now() => {
                return Err(ArchiveError::new(format!(
                    "target_time {t} is in the future"
                )));
            }
            CloneTarget::Lsn(l) => {
                let wal = super::catalog::wal(&*storage, &base)
                    .await
                    .map_err(|e| ArchiveError::caused("listing the source's WAL", e))?;
                let end = archive_end(&wal);
                if *l > end {
                    return Err(ArchiveError::new(format!(
                        "target_lsn {} is past the end of the source's archive ({})",
                        format_lsn(*l),
                        format_lsn(end)
                    )));
                }
            }
            _ => {}
        }
        let t0 = crate::clock::now();
        let r = super::restore::restore_reported(
            self.stats.as_deref(),
            storage.clone(),
            &base,
            &m,
            self.key.as_ref(),
            dir,
            2,
        )
        .await
        .map_err(|e| ArchiveError::caused("", e))?;
        let secs = crate::clock::now()
            .saturating_duration_since(t0)
            .as_secs_f64();
        self.fetcher.set_source(Some(Source {
            storage: Arc::clone(&storage),
            base: base.clone(),
        }));
        Ok((
            recovery_settings(&self.cfg, &target),
            format!(
                "cloning {} from {base}: backup {} (finished {}, stop {}) restored, {} MiB in {secs:.1} s; \
                 replaying its WAL to {target:?}",
                self.cfg.scope,
                m.name,
                m.finish_time,
                m.stop_lsn,
                r.bytes >> 20
            ),
        ))
    }

    fn done(&self, reached: bool) {
        self.fetcher.set_source(None);
        if let Some(s) = &self.stats {
            if reached {
                s.restore.enter(3);
            } else {
                s.restore.fail(
                    &self
                        .fetcher
                        .last_failure()
                        .unwrap_or_else(|| "the recovery did not reach its target".into()),
                );
            }
        }
    }

    fn problem(&self) -> Option<String> {
        self.fetcher.last_failure()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, finish: &str, stop: u64) -> Manifest {
        Manifest {
            name: name.into(),
            start_time: finish.into(),
            finish_time: finish.into(),
            start_lsn: format_lsn(stop.saturating_sub(100)),
            stop_lsn: format_lsn(stop),
            timeline: 1,
            system_identifier: None,
            pg_version: 15,
            size: 1,
            compressed_size: 1,
            duration_secs: 1.0,
            member: "n".into(),
            from_replica: false,
            sha256: String::new(),
            blake3: String::new(),
            xxh3_128: String::new(),
            objects: vec![],
            format: "tar.zst".into(),
            spilo_version: "t".into(),
        }
    }

    fn at(t: &str) -> CloneTarget {
        CloneTarget::Time(crate::timestamp::parse_timestamp(t).expect("time"))
    }

    #[test]
    fn chooses_by_recorded_stop_time_and_position() {
        let b = [
            manifest("b1", "2026-12-01T01:00:00Z", 1000),
            manifest("b3", "2026-12-03T01:00:00Z", 3000),
            manifest("b2", "2026-12-02T01:00:00Z", 2000),
        ];
        assert_eq!(
            choose_backup(&b, &at("2026-12-02T12:00:00+00:00"))
                .unwrap()
                .name,
            "b2"
        );
        assert_eq!(
            choose_backup(&b, &at("2026-12-02T01:00:00Z")).unwrap().name,
            "b2"
        );
        assert_eq!(
            choose_backup(&b, &at("2026-12-09T00:00:00+05:00"))
                .unwrap()
                .name,
            "b3"
        );
        let e = choose_backup(&b, &at("2026-11-30T00:00:00Z"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("2026-12-01T01:00:00"), "{e}");
        assert_eq!(
            choose_backup(&b, &CloneTarget::Lsn(2999)).unwrap().name,
            "b2"
        );
        assert!(choose_backup(&b, &CloneTarget::Lsn(999)).is_err());
        assert_eq!(
            choose_backup(&b, &CloneTarget::Immediate).unwrap().name,
            "b3"
        );
        assert!(choose_backup(&[], &CloneTarget::Immediate).is_err());
    }

    #[test]
    fn the_archive_ends_after_its_highest_segment() {
        let w = |n: &str| super::super::catalog::WalEntry {
            name: n.into(),
            size: 1,
        };
        let wal = [
            w("000000010000000000000003"),
            w("00000002.history"),
            w("000000020000000100000002"),
            w("000000010000000000000004.partial"),
        ];
        assert_eq!(archive_end(&wal), (1 << 32) + 3 * (16 << 20));
        assert_eq!(archive_end(&[]), 0);
    }

    #[test]
    fn recovery_settings_name_the_target_and_promote() {
        let c: CloneConfig = serde_yaml::from_str(
            "scope: src\ntarget_time: '2026-12-02 10:00:00+01'\ninclusive: false\n",
        )
        .expect("yaml");
        let t = c.target().expect("target");
        let p = recovery_settings(&c, &t);
        assert_eq!(p["recovery_target_time"], "2026-12-02T10:00:00+01:00");
        assert_eq!(p["recovery_target_inclusive"], "off");
        assert_eq!(p["recovery_target_timeline"], "latest");
        assert_eq!(p["recovery_target_action"], "promote");
        let c: CloneConfig =
            serde_yaml::from_str("scope: src\ntarget_immediate: true\n").expect("yaml");
        let p = recovery_settings(&c, &c.target().expect("target"));
        assert_eq!(p["recovery_target"], "immediate");
        assert!(!p.contains_key("recovery_target_inclusive"));
    }

    #[test]
    fn bad_clone_sections_are_named() {
        let own: StorageConfig =
            serde_yaml::from_str("type: fs\npath: /srv/store\n").expect("storage");
        for (yaml, says) in [
            ("scope: src\n", "exactly one of"),
            (
                "scope: src\ntarget_time: x\ntarget_lsn: 0/1\n",
                "exactly one of",
            ),
            (
                "scope: src\ntarget_time: '2026-12-02 10:00:00'\n",
                "no time zone",
            ),
            ("scope: src\ntarget_lsn: zz\n", "not a WAL position"),
            (
                "scope: src\ntarget_immediate: true\ntarget_timeline: '0'\n",
                "target_timeline",
            ),
            (
                "scope: me\ntarget_immediate: true\n",
                "write into its source",
            ),
            ("scope: ''\ntarget_immediate: true\n", "not a scope"),
        ] {
            let c: CloneConfig = serde_yaml::from_str(yaml).expect("yaml");
            let p = c.check(Some(&own), "me").unwrap_err();
            assert!(p.to_string().contains(says), "{yaml}: {p}");
        }
        let c: CloneConfig =
            serde_yaml::from_str("scope: src\ntarget_immediate: true\n").expect("yaml");
        assert!(c.check(Some(&own), "me").is_ok());
        assert!(c.check(None, "me").is_err());
    }
}
