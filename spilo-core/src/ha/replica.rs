//! How a new replica is built (Patroni's `create_replica_methods`), as a pure planner: from the
//! configured methods, the newest backup in the store and the leader's WAL position it returns
//! the steps to try in order, each with its reason, and the methods it skipped with theirs. The
//! executor (`runner/jobs.rs`) tries the steps until one works.
//!
//! Spilo's rule for restoring a backup instead of copying the leader: the WAL written since the
//! backup started must be at most `threshold_megabytes` **and** at most `threshold_percentage`
//! of the backup's size; else replaying it would cost more than a fresh copy.

use crate::config::model::{RestoreMethod, METHOD_BASEBACKUP, METHOD_RESTORE};

/// Why the store (or a clone's source) could not answer, or a copy from it failed: the words
/// logged, with the underlying failure (storage, restore, I/O) as the source when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ArchiveError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ArchiveError {
    /// A failure with no underlying error.
    pub fn new(message: impl Into<String>) -> Self {
        ArchiveError {
            message: message.into(),
            source: None,
        }
    }

    /// `context: <the cause and its causes>` (only the causes when `context` is empty), the
    /// cause kept as the source.
    pub fn caused(
        context: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        let chain = crate::error_chain(&source);
        let context = context.to_string();
        ArchiveError {
            message: if context.is_empty() {
                chain
            } else {
                format!("{context}: {chain}")
            },
            source: Some(Box::new(source)),
        }
    }
}

/// The store a replica can be restored from (the daemon's `storage:`), as the executor reaches
/// it: a port like [`crate::postgres::LocalPostgres`], so the executor holds no storage code.
#[async_trait::async_trait]
pub trait ReplicaBackups: Send + Sync + 'static {
    /// The newest complete backup, if any.
    async fn newest(&self) -> Result<Option<BackupFacts>, ArchiveError>;
    /// Restores the backup `name` into the (empty) data directory `dir`; what it did, in words.
    async fn restore(&self, name: &str, dir: &std::path::Path) -> Result<String, ArchiveError>;
}

/// A point-in-time clone's source (`bootstrap.method: clone`), as the executor reaches it.
#[async_trait::async_trait]
pub trait ClusterClone: Send + Sync + 'static {
    /// Restores the source's backup for the target into the (empty) data directory `dir` and
    /// points `restore_command` at the source's archive; returns the recovery settings to
    /// start with and what was done, in words.
    async fn restore(
        &self,
        dir: &std::path::Path,
    ) -> Result<
        (
            std::collections::BTreeMap<String, serde_json::Value>,
            String,
        ),
        ArchiveError,
    >;
    /// Points `restore_command` back at this cluster's own archive; `reached`: the recovery
    /// reached its target and promoted.
    fn done(&self, reached: bool);
    /// The last failure reading the source's archive, if any (a hole, a damaged segment).
    fn problem(&self) -> Option<String>;
}

/// Where `restore_command` reads WAL from, switched by the executor while this cluster is a
/// standby cluster of another one (`standby_cluster.scope`/`storage`) and back when it is
/// promoted.
#[async_trait::async_trait]
pub trait ArchiveSwitch: Send + Sync + 'static {
    /// Reads from `source`'s archive (None: this cluster's own); returns that archive's backups
    /// (what a standby leader's first copy is restored from).
    async fn read_from(
        &self,
        source: Option<&crate::config::standby::ArchiveSource>,
    ) -> Result<std::sync::Arc<dyn ReplicaBackups>, ArchiveError>;
}

/// What the planner needs of a backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFacts {
    /// Its name.
    pub name: String,
    /// Its start position.
    pub start_lsn: u64,
    /// Bytes of its tar (the database's size then).
    pub size: u64,
    /// The timeline it was taken on.
    pub timeline: u64,
    /// The system identifier it records.
    pub system_identifier: Option<String>,
}

/// One way to build the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaStep {
    /// Restore this backup, then replay from the archive and stream.
    Restore {
        /// The backup.
        backup: String,
        /// Why it qualifies.
        reason: String,
    },
    /// `pg_basebackup` from the leader.
    BaseBackup,
}

impl ReplicaStep {
    /// The method's name.
    pub fn method(&self) -> &'static str {
        match self {
            ReplicaStep::Restore { .. } => METHOD_RESTORE,
            ReplicaStep::BaseBackup => METHOD_BASEBACKUP,
        }
    }
}

/// What the planner knows.
#[derive(Clone, Debug)]
pub struct ReplicaInput<'a> {
    /// The methods in force, in order.
    pub methods: &'a [String],
    /// A store to restore from is configured.
    pub has_store: bool,
    /// The newest complete backup, if any was found.
    pub newest: Option<&'a BackupFacts>,
    /// The leader's WAL position, if known.
    pub leader_lsn: Option<u64>,
    /// The leader's timeline, if known.
    pub leader_timeline: Option<u64>,
    /// Where each earlier timeline of the leader's history ended (DCS `history`).
    pub history: &'a [(u64, u64)],
    /// The cluster's system identifier (DCS `initialize`), if known.
    pub system_identifier: Option<&'a str>,
    /// The `spilo_restore` thresholds.
    pub limits: &'a RestoreMethod,
    /// There is no leader to compare a backup with (a standby cluster's first copy of the
    /// other cluster): the newest backup of the right system is restored as it is.
    pub no_leader: bool,
    /// Something to run `pg_basebackup` against exists (a leader, or `standby_cluster.host`).
    pub can_basebackup: bool,
}

/// The steps to try, in order, and the methods skipped with why.
pub fn plan_replica(i: &ReplicaInput<'_>) -> (Vec<ReplicaStep>, Vec<String>) {
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for m in i.methods {
        match m.as_str() {
            METHOD_BASEBACKUP if !i.can_basebackup => {
                skipped.push(format!("{METHOD_BASEBACKUP}: no host to copy from"));
            }
            METHOD_BASEBACKUP => {
                if !steps.contains(&ReplicaStep::BaseBackup) {
                    steps.push(ReplicaStep::BaseBackup);
                }
            }
            METHOD_RESTORE => match restore_step(i) {
                Ok(s) => steps.push(s),
                Err(why) => skipped.push(format!("{METHOD_RESTORE}: {why}")),
            },
            other => skipped.push(format!("{other}: not supported")),
        }
    }
    // A list of methods spilo does not know at all (Spilo's `[wal_e, basebackup_fast_xlog]`,
    // a site's command) still builds the replica, as before these were interpreted.
    if i.can_basebackup
        && !i
            .methods
            .iter()
            .any(|m| m == METHOD_BASEBACKUP || m == METHOD_RESTORE)
    {
        skipped.push(format!(
            "no method spilo knows is listed: {METHOD_BASEBACKUP}"
        ));
        steps.push(ReplicaStep::BaseBackup);
    }
    (steps, skipped)
}

/// Why the newest backup does not build this replica (the method is skipped).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoRestore {
    /// No store configured.
    #[error("no storage: section")]
    NoStore,
    /// The store holds no complete backup.
    #[error("no complete backup in the store")]
    NoBackup,
    /// The backup is of another cluster.
    #[error("backup {backup} is of system {theirs}, this cluster is {ours}")]
    OtherSystem {
        /// The backup.
        backup: String,
        /// Its system identifier.
        theirs: String,
        /// This cluster's.
        ours: String,
    },
    /// The leader's position is unknown.
    #[error("the leader's WAL position is not known")]
    LeaderPositionUnknown,
    /// The backup starts past the leader's position.
    #[error("backup {0} starts past the leader's position (another history)")]
    PastTheLeader(String),
    /// The leader's timeline is unknown.
    #[error("the leader's timeline is not known")]
    LeaderTimelineUnknown,
    /// The backup is of a later timeline than the leader's.
    #[error("backup {backup} is of timeline {timeline}, the leader is on {leader}")]
    LaterTimeline {
        /// The backup.
        backup: String,
        /// Its timeline.
        timeline: u64,
        /// The leader's.
        leader: u64,
    },
    /// The backup started on a timeline after the leader's history left it.
    #[error("backup {backup} started on timeline {timeline} after the leader's history left it")]
    LeftTimeline {
        /// The backup.
        backup: String,
        /// Its timeline.
        timeline: u64,
    },
    /// The backup's timeline is not in the leader's history.
    #[error("backup {backup} is of timeline {timeline}, which the leader's history does not show")]
    UnknownTimeline {
        /// The backup.
        backup: String,
        /// Its timeline.
        timeline: u64,
    },
    /// More WAL to replay than `threshold_megabytes`.
    #[error(
        "backup {backup} is {mib} MiB of WAL behind the leader, more than threshold_megabytes {limit}"
    )]
    OverMegabytes {
        /// The backup.
        backup: String,
        /// MiB of WAL behind.
        mib: u64,
        /// `threshold_megabytes`.
        limit: u64,
    },
    /// More WAL to replay than `threshold_percentage` of the backup's size.
    #[error(
        "backup {backup} is {mib} MiB of WAL behind the leader, more than threshold_percentage {percentage} % of its {size_mib} MiB"
    )]
    OverPercentage {
        /// The backup.
        backup: String,
        /// MiB of WAL behind.
        mib: u64,
        /// `threshold_percentage`.
        percentage: u64,
        /// The backup's size in MiB.
        size_mib: u64,
    },
}

fn restore_step(i: &ReplicaInput<'_>) -> Result<ReplicaStep, NoRestore> {
    if !i.has_store {
        return Err(NoRestore::NoStore);
    }
    let Some(b) = i.newest else {
        return Err(NoRestore::NoBackup);
    };
    if let (Some(ours), Some(theirs)) = (i.system_identifier, b.system_identifier.as_deref()) {
        if ours != theirs {
            return Err(NoRestore::OtherSystem {
                backup: b.name.clone(),
                theirs: theirs.to_string(),
                ours: ours.to_string(),
            });
        }
    }
    if i.no_leader {
        return Ok(ReplicaStep::Restore {
            backup: b.name.clone(),
            reason: format!(
                "no leader to compare with: the newest backup, {} (timeline {})",
                b.name, b.timeline
            ),
        });
    }
    let Some(leader) = i.leader_lsn else {
        return Err(NoRestore::LeaderPositionUnknown);
    };
    // The backup must lie on the leader's history: not past its position, not on a timeline
    // it left before the backup started (a diverged former primary's WAL).
    if b.start_lsn > leader {
        return Err(NoRestore::PastTheLeader(b.name.clone()));
    }
    match i.leader_timeline {
        None => return Err(NoRestore::LeaderTimelineUnknown),
        Some(tl) if b.timeline > tl => {
            return Err(NoRestore::LaterTimeline {
                backup: b.name.clone(),
                timeline: b.timeline,
                leader: tl,
            })
        }
        Some(tl) if b.timeline < tl => match i.history.iter().find(|(t, _)| *t == b.timeline) {
            Some((_, end)) if b.start_lsn < *end => {}
            Some(_) => {
                return Err(NoRestore::LeftTimeline {
                    backup: b.name.clone(),
                    timeline: b.timeline,
                })
            }
            None => {
                return Err(NoRestore::UnknownTimeline {
                    backup: b.name.clone(),
                    timeline: b.timeline,
                })
            }
        },
        Some(_) => {}
    }
    let behind = leader - b.start_lsn;
    let mib = behind / (1 << 20);
    let limit_bytes = i.limits.threshold_megabytes.saturating_mul(1 << 20);
    // behind ≤ pct % of size, without overflow: behind × 100 ≤ pct × size.
    let pct_ok =
        u128::from(behind) * 100 <= u128::from(i.limits.threshold_percentage) * u128::from(b.size);
    if behind > limit_bytes {
        return Err(NoRestore::OverMegabytes {
            backup: b.name.clone(),
            mib,
            limit: i.limits.threshold_megabytes,
        });
    }
    if !pct_ok {
        return Err(NoRestore::OverPercentage {
            backup: b.name.clone(),
            mib,
            percentage: i.limits.threshold_percentage,
            size_mib: b.size / (1 << 20),
        });
    }
    Ok(ReplicaStep::Restore {
        backup: b.name.clone(),
        reason: format!(
            "{mib} MiB of WAL behind the leader, within {} MiB and {} % of its {} MiB",
            i.limits.threshold_megabytes,
            i.limits.threshold_percentage,
            b.size / (1 << 20)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_off_the_leaders_history_is_not_used() {
        let limits = RestoreMethod::default();
        let methods = vec!["spilo_restore".to_string()];
        let on = |tl: u64, start: u64, leader_tl: u64, history: &[(u64, u64)]| {
            let b = BackupFacts {
                name: "b".into(),
                start_lsn: start,
                size: 1 << 30,
                timeline: tl,
                system_identifier: None,
            };
            let (steps, why) = plan_replica(&ReplicaInput {
                methods: &methods,
                has_store: true,
                newest: Some(&b),
                leader_lsn: Some(10_000),
                leader_timeline: Some(leader_tl),
                history,
                system_identifier: None,
                limits: &limits,
                no_leader: false,
                can_basebackup: true,
            });
            (steps.len(), why.join("; "))
        };
        // Timeline 1 ended at 5000: a backup there before it is on the history, after it not.
        assert_eq!(on(1, 4000, 2, &[(1, 5000)]).0, 1);
        assert!(on(1, 6000, 2, &[(1, 5000)])
            .1
            .contains("after the leader's history left it"));
        assert!(on(1, 4000, 2, &[]).1.contains("does not show"));
        assert!(on(3, 4000, 2, &[(1, 5000)]).1.contains("timeline 3"));
        assert_eq!(on(2, 6000, 2, &[(1, 5000)]).0, 1);
    }

    fn facts(start: u64, size: u64) -> BackupFacts {
        BackupFacts {
            name: "base_1".into(),
            start_lsn: start,
            size,
            timeline: 1,
            system_identifier: Some("42".into()),
        }
    }

    fn plan(
        methods: &[&str],
        newest: Option<&BackupFacts>,
        leader: Option<u64>,
    ) -> (Vec<&'static str>, Vec<String>) {
        let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        let limits = RestoreMethod {
            threshold_megabytes: 100,
            threshold_percentage: 30,
            no_leader: true,
        };
        let (steps, skipped) = plan_replica(&ReplicaInput {
            methods: &methods,
            has_store: true,
            newest,
            leader_lsn: leader,
            leader_timeline: Some(1),
            history: &[],
            system_identifier: Some("42"),
            limits: &limits,
            no_leader: false,
            can_basebackup: true,
        });
        (steps.iter().map(ReplicaStep::method).collect(), skipped)
    }

    #[test]
    fn restores_only_within_both_thresholds() {
        let mib = 1u64 << 20;
        let both = ["spilo_restore", "basebackup"];
        // 10 MiB behind a 1000 MiB backup: within 100 MiB and 30 %.
        let b = facts(0, 1000 * mib);
        assert_eq!(plan(&both, Some(&b), Some(10 * mib)).0, both);
        // 150 MiB behind: over threshold_megabytes.
        let (steps, why) = plan(&both, Some(&b), Some(150 * mib));
        assert_eq!(steps, ["basebackup"]);
        assert!(why[0].contains("threshold_megabytes"), "{why:?}");
        // 40 MiB behind a 100 MiB backup: over 30 %.
        let small = facts(0, 100 * mib);
        let (steps, why) = plan(&both, Some(&small), Some(40 * mib));
        assert_eq!(steps, ["basebackup"]);
        assert!(why[0].contains("threshold_percentage"), "{why:?}");
        // Exactly at both limits still qualifies.
        let edge = facts(0, 100 * mib);
        assert_eq!(plan(&both, Some(&edge), Some(30 * mib)).0, both);
    }

    #[test]
    fn skips_what_it_cannot_use_and_keeps_the_order() {
        let b = facts(0, 1 << 30);
        let (steps, why) = plan(&["spilo_restore", "basebackup"], None, Some(0));
        assert_eq!(steps, ["basebackup"]);
        assert!(why[0].contains("no complete backup"), "{why:?}");
        let (steps, why) = plan(&["spilo_restore"], Some(&b), None);
        assert!(steps.is_empty());
        assert!(why[0].contains("not known"), "{why:?}");
        let other = BackupFacts {
            system_identifier: Some("7".into()),
            ..b.clone()
        };
        let (_, why) = plan(&["spilo_restore"], Some(&other), Some(0));
        assert!(why[0].contains("system 7"), "{why:?}");
        let (steps, why) = plan(
            &["wal_e", "basebackup", "basebackup", "spilo_restore"],
            Some(&b),
            Some(1),
        );
        assert_eq!(steps, ["basebackup", "spilo_restore"]);
        assert_eq!(why, ["wal_e: not supported"]);
        // A backup starting past the leader's position is of another history.
        let (steps, why) = plan(&["spilo_restore"], Some(&facts(500, 1 << 30)), Some(10));
        assert!(
            steps.is_empty() && why[0].contains("past the leader"),
            "{why:?}"
        );
        // Only methods spilo does not know: pg_basebackup, as before.
        let (steps, why) = plan(&["wal_e", "basebackup_fast_xlog"], Some(&b), Some(1));
        assert_eq!(steps, ["basebackup"]);
        assert_eq!(why.len(), 3, "{why:?}");
    }

    #[test]
    fn without_a_leader_the_newest_backup_is_restored_and_basebackup_needs_a_host() {
        let limits = RestoreMethod {
            threshold_megabytes: 0,
            threshold_percentage: 0,
            no_leader: true,
        };
        let b = BackupFacts {
            name: "base_000000010000000000000002".into(),
            start_lsn: 2 << 24,
            size: 1,
            timeline: 1,
            system_identifier: Some("42".into()),
        };
        let methods = vec!["spilo_restore".to_string(), "basebackup".to_string()];
        let input = ReplicaInput {
            methods: &methods,
            has_store: true,
            newest: Some(&b),
            leader_lsn: None,
            leader_timeline: None,
            history: &[],
            system_identifier: None,
            limits: &limits,
            no_leader: true,
            can_basebackup: false,
        };
        let (steps, skipped) = plan_replica(&input);
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(steps[0].method(), "spilo_restore");
        assert_eq!(skipped, ["basebackup: no host to copy from"]);
        // No backup and no host: nothing to try, and the reasons say why.
        let (steps, skipped) = plan_replica(&ReplicaInput {
            newest: None,
            ..input.clone()
        });
        assert!(steps.is_empty());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        // Unknown methods only, and no host: nothing either (no silent pg_basebackup).
        let unknown = vec!["wal_e".to_string()];
        let (steps, _) = plan_replica(&ReplicaInput {
            methods: &unknown,
            ..input
        });
        assert!(steps.is_empty());
    }
}
