//! A standby cluster (`standby_cluster` in the dynamic configuration): what its leader follows
//! (the other cluster's primary, its archive, or both), the recovery settings it runs with, and
//! where `restore_command` reads WAL from.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::standby::{ArchiveSource, StandbyCluster};
use crate::postgres::conf::Upstream;

use super::Node;

impl Node {
    /// Reads `standby_cluster` from the dynamic configuration just applied; logs changes.
    pub(super) fn apply_standby(&mut self) {
        let now = match StandbyCluster::from_dynamic(&self.dynamic.extra) {
            Ok(None) => None,
            Ok(Some(s)) => Some(
                match s.check_place(self.cfg.storage.as_ref(), &self.cfg.scope) {
                    Ok(()) => Ok(s),
                    Err(e) => Err(e),
                },
            ),
            Err(e) => Some(Err(e)),
        };
        if now == self.standby {
            return;
        }
        match &now {
            None if self.standby.is_some() => tracing::info!(
                "standby_cluster removed from the configuration: this cluster no longer follows another one"
            ),
            None => {}
            Some(Ok(s)) => tracing::info!(
                host = s.host.as_deref().unwrap_or("-"),
                port = s.port(),
                archive = s.archive().map(|a| a.scope).as_deref().unwrap_or("-"),
                "this is a standby cluster: its leader follows another cluster"
            ),
            Some(Err(e)) => tracing::error!(
                "standby_cluster cannot be used ({e}): the cluster stays a standby cluster, its leader following nobody, until it is mended"
            ),
        }
        if self.archive_switch.is_none()
            && now
                .as_ref()
                .is_some_and(|s| s.as_ref().is_ok_and(|s| s.archive().is_some()))
        {
            tracing::warn!(
                "standby_cluster names an archive, and this node has no storage: section: \
                 spilo's wal-fetch needs one (its archive socket); the archive is not read"
            );
        }
        // The standby leader's settings change with the section: rewrite and reload.
        self.conf_dirty = true;
        self.standby = now;
    }

    /// The section, when it is usable.
    fn standby_ok(&self) -> Option<&StandbyCluster> {
        self.standby.as_ref().and_then(|s| s.as_ref().ok())
    }

    /// The other cluster's archive this one reads, while it is a standby cluster.
    pub(super) fn standby_archive(&self) -> Option<ArchiveSource> {
        self.standby_ok().and_then(StandbyCluster::archive)
    }

    /// Where the standby leader streams from: `standby_cluster.host`, when set.
    pub(super) fn standby_upstream(&self) -> Option<Upstream> {
        let s = self.standby_ok()?;
        Some(self.replication_upstream(s.host.clone()?, s.port(), s.primary_slot_name.clone()))
    }

    /// The standby leader's recovery settings from `standby_cluster`.
    pub(super) fn standby_params(&self, params: &mut BTreeMap<String, Value>) {
        let Some(s) = self.standby_ok() else { return };
        if let Some(c) = &s.restore_command {
            params.insert("restore_command".into(), Value::String(c.clone()));
        }
        if let Some(c) = &s.archive_cleanup_command {
            params.insert("archive_cleanup_command".into(), Value::String(c.clone()));
        }
        if let Some(d) = &s.recovery_min_apply_delay {
            params.insert("recovery_min_apply_delay".into(), d.clone());
        }
    }

    /// `archive_mode = always` on every node of a standby cluster whose leader archives
    /// (`backup.archive.standby_leader`): PostgreSQL archives only in recovery with it, and it
    /// needs a restart, so it is set from the start (the archiver decides who uploads).
    pub(super) fn standby_archive_mode(&self, params: &mut BTreeMap<String, Value>) {
        let archives = self
            .cfg
            .backup_settings()
            .is_some_and(|b| b.archive.standby_leader);
        if archives && self.standby.is_some() {
            params.insert("archive_mode".into(), Value::String("always".into()));
        }
    }

    /// Points `restore_command` at the archive this cluster should read now: the other
    /// cluster's while it is a standby cluster naming one, else its own. Retried each cycle
    /// until it works.
    pub(super) async fn switch_archive(&mut self) {
        let Some(switch) = self.archive_switch.clone() else {
            return;
        };
        let want = self.standby_archive();
        if self.archive_in_use.as_ref().map(|(a, _)| a) == Some(&want) {
            return;
        }
        match switch.read_from(want.as_ref()).await {
            Ok(backups) => {
                match &want {
                    Some(a) => tracing::info!(
                        scope = %a.scope,
                        "restore_command reads the standby cluster's source archive"
                    ),
                    None if self.archive_in_use.is_some() => {
                        tracing::info!("restore_command reads this cluster's own archive again")
                    }
                    None => {}
                }
                self.archive_in_use = Some((want, backups));
            }
            Err(e) => tracing::warn!(
                "cannot read the standby cluster's source archive: {e} (retried next cycle)"
            ),
        }
    }
}
