//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Patroni's series keep Patroni's names so that existing dashboards work; every series carries
//! `scope` and `name` labels. Patroni declares the WAL positions and the timeline as counters;
//! here they are gauges, because a counter must end in `_total` to pass `promtool check metrics`
//! and the names must not change (the type does not matter to PromQL). spilo's own series start
//! with `spilo_`.

use std::fmt::Write as _;
use std::time::Instant;

use super::status::cluster_unlocked;
use crate::dcs::tags;
pub use crate::exposition::escape_label;
use crate::exposition::{num, Exposition, Family};
use crate::ha::state::{NodeState, Role, LOOP_BUCKETS};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// PostgreSQL states in the order of `patroni_postgres_state`'s values.
pub const POSTGRES_STATES: [&str; 15] = [
    "initializing new cluster",
    "initdb failed",
    "running custom bootstrap script",
    "custom bootstrap failed",
    "creating replica",
    "running",
    "starting",
    "starting after custom bootstrap",
    "start failed",
    "restarting",
    "restart failed",
    "stopping",
    "stopped",
    "stop failed",
    "crashed",
];

/// `patroni_postgres_state`'s value for `state` (-1 when unknown).
pub fn postgres_state_index(state: &str) -> i64 {
    POSTGRES_STATES
        .iter()
        .position(|s| *s == state)
        .map_or(-1, |i| i as i64)
}

/// A Patroni-style version number: `4.1.4` → `040104` (two digits per component).
pub fn zero_padded_version(v: &str) -> String {
    let mut parts = v
        .split('.')
        .map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .chain(std::iter::repeat(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    format!("{a:02}{b:02}{c:02}")
}

/// Seconds since the epoch of a PostgreSQL text timestamp
/// (`2024-08-28 19:39:26.352526+00`, `…+00:00`, ISO-8601 with `T`); `None` when it does not
/// parse.
pub fn parse_pg_timestamp(text: &str) -> Option<f64> {
    crate::timestamp::parse_assuming_utc(text)
        .map(|ts| ts.timestamp() as f64 + f64::from(ts.timestamp_subsec_micros()) / 1e6)
}

/// The `/metrics` body for `s` at `now`.
pub fn render(s: &NodeState, now: Instant) -> String {
    let pg = &s.pg;
    let mut e = Exposition::new(
        format!(
            "scope=\"{}\",name=\"{}\"",
            escape_label(&s.scope),
            escape_label(&s.name)
        ),
        6 * 1024,
    );
    let primary = pg.role.is_primary();
    let replica = pg.role == Role::Replica;

    e.header(
        "patroni_version",
        "gauge",
        "Patroni version this node is compatible with, zero-padded (4.1.4 = 040104).",
    );
    e.sample(
        "patroni_version",
        "",
        &zero_padded_version(crate::PATRONI_COMPAT_VERSION),
    );
    e.flag(
        "patroni_postgres_running",
        "1 if PostgreSQL is running, 0 otherwise.",
        pg.running,
    );
    e.gauge(
        "patroni_postmaster_start_time",
        "Epoch seconds when PostgreSQL was started (0 when unknown).",
        pg.postmaster_start_time
            .as_deref()
            .and_then(parse_pg_timestamp)
            .unwrap_or(0.0),
    );
    e.flag(
        "patroni_primary",
        "1 if this node is the primary, 0 otherwise.",
        primary,
    );
    e.flag(
        "patroni_replica",
        "1 if this node is a replica, 0 otherwise.",
        replica,
    );
    e.flag(
        "patroni_standby_leader",
        "1 if this node is the standby leader, 0 otherwise.",
        pg.role == Role::StandbyLeader,
    );
    let (sync, quorum) = sync_roles(s);
    e.flag(
        "patroni_sync_standby",
        "1 if this node is a synchronous standby, 0 otherwise.",
        sync,
    );
    e.flag(
        "patroni_quorum_standby",
        "1 if this node is a quorum standby, 0 otherwise.",
        quorum,
    );
    let pos = |on: bool, v: Option<u64>| if on { v.unwrap_or(0) as f64 } else { 0.0 };
    e.gauge(
        "patroni_xlog_location",
        "Current WAL location (flush LSN in bytes) on the primary, 0 elsewhere.",
        pos(primary, pg.wal_flush),
    );
    e.gauge(
        "patroni_xlog_received_location",
        "Current WAL receive location (bytes) on a replica, 0 elsewhere.",
        pos(!primary, pg.received),
    );
    e.gauge(
        "patroni_xlog_replayed_location",
        "Current WAL replay location (bytes) on a replica, 0 elsewhere.",
        pos(!primary, pg.replayed),
    );
    e.gauge(
        "patroni_xlog_replayed_timestamp",
        "Epoch seconds of the last replayed transaction (0 when unknown).",
        if primary {
            0.0
        } else {
            pg.replayed_timestamp
                .as_deref()
                .and_then(parse_pg_timestamp)
                .unwrap_or(0.0)
        },
    );
    e.flag(
        "patroni_xlog_paused",
        "1 if WAL replay is paused, 0 otherwise.",
        !primary && pg.replay_paused,
    );
    e.gauge(
        "patroni_postgres_server_version",
        "PostgreSQL server_version_num (0 when unknown).",
        pg.server_version.unwrap_or(0) as f64,
    );
    e.flag(
        "patroni_cluster_unlocked",
        "1 if the cluster has no leader key, 0 otherwise.",
        cluster_unlocked(s),
    );
    e.gauge(
        "patroni_postgres_timeline",
        "PostgreSQL timeline (0 when unknown).",
        pg.timeline.unwrap_or(0) as f64,
    );
    e.gauge(
        "patroni_dcs_last_seen",
        "Epoch seconds of the last successful DCS read (0 before the first).",
        s.dcs_last_seen.unwrap_or(0) as f64,
    );
    e.flag(
        "patroni_pending_restart",
        "1 if PostgreSQL must be restarted to apply settings, 0 otherwise.",
        pg.pending_restart,
    );
    e.flag(
        "patroni_is_paused",
        "1 if the cluster is in maintenance mode (paused), 0 otherwise.",
        s.paused(),
    );
    e.flag(
        "patroni_postgres_streaming",
        "1 if the replica streams WAL from its upstream, 0 otherwise.",
        pg.replication_state.as_deref() == Some("streaming"),
    );
    e.flag(
        "patroni_postgres_in_archive_recovery",
        "1 if the replica replays WAL from the archive, 0 otherwise.",
        pg.replication_state.as_deref() == Some("in archive recovery"),
    );
    e.flag(
        "patroni_failsafe_mode_is_active",
        "1 if failsafe mode is active, 0 otherwise (failsafe mode is not implemented).",
        false,
    );
    e.header(
        "patroni_postgres_state",
        "gauge",
        "PostgreSQL state as an index into the list of states (-1 when unknown).",
    );
    let values: Vec<String> = POSTGRES_STATES
        .iter()
        .enumerate()
        .map(|(i, st)| format!("{i}={}", st.replace(' ', "_")))
        .collect();
    let _ = writeln!(e.out, "# Values: {}", values.join(", "));
    e.sample(
        "patroni_postgres_state",
        "",
        &postgres_state_index(pg.state.as_str()).to_string(),
    );
    e.gauge(
        "patroni_failover_priority",
        "Failover priority of this node (0 with nofailover).",
        tags::failover_priority(&s.tags) as f64,
    );

    // spilo's own.
    let st = &s.stats;
    e.header(
        "spilo_loop_duration_seconds",
        "histogram",
        "Duration of HA loop cycles.",
    );
    let mut cumulative = 0u64;
    for (bound, count) in LOOP_BUCKETS.iter().zip(st.buckets.iter()) {
        cumulative += count;
        e.sample(
            "spilo_loop_duration_seconds_bucket",
            &format!(",le=\"{}\"", num(*bound)),
            &cumulative.to_string(),
        );
    }
    e.sample(
        "spilo_loop_duration_seconds_bucket",
        ",le=\"+Inf\"",
        &st.cycles.to_string(),
    );
    e.sample("spilo_loop_duration_seconds_sum", "", &num(st.sum_secs));
    e.sample(
        "spilo_loop_duration_seconds_count",
        "",
        &st.cycles.to_string(),
    );
    e.header(
        "spilo_dcs_round_trip_seconds",
        "gauge",
        "Duration of the last DCS keep-alive and read.",
    );
    if let Some(rtt) = st.dcs_rtt_secs {
        e.sample("spilo_dcs_round_trip_seconds", "", &num(rtt));
    }
    e.header(
        "spilo_dcs_errors_total",
        "counter",
        "DCS operations that failed.",
    );
    e.sample("spilo_dcs_errors_total", "", &st.dcs_errors.to_string());
    let [calls, errors, cut_off, dropped, callbacks, callback_errors] = s.hook_stats;
    for (name, help, v) in [
        ("spilo_hook_calls_total", "Lua hook handler calls.", calls),
        (
            "spilo_hook_errors_total",
            "Lua hook handler calls that raised an error or returned a bad answer.",
            errors,
        ),
        (
            "spilo_hook_timeouts_total",
            "Lua hook handler calls cut off at their time, instruction or memory limit.",
            cut_off,
        ),
        (
            "spilo_hook_dropped_total",
            "Hook events dropped because the hook queue was full.",
            dropped,
        ),
        ("spilo_callbacks_total", "Shell callbacks run.", callbacks),
        (
            "spilo_callback_errors_total",
            "Shell callbacks that failed, exited non-zero or timed out.",
            callback_errors,
        ),
    ] {
        e.counter(name, help, v);
    }
    if let Some(a) = &s.archive {
        archive_metrics(&mut e, a);
    }
    if !s.load_balancers.is_empty() {
        lb_metrics(&mut e, &s.load_balancers);
    }
    if !s.proxies.is_empty() {
        let proxies: Vec<&crate::proxy::stats::ProxyStats> =
            s.proxies.iter().map(|p| p.as_ref()).collect();
        crate::proxy::stats::write(&mut e, &proxies);
    }
    let remaining = match s.leader_renewed_at {
        Some(t) if s.holds_lock(now) => {
            (s.lease_ttl().as_secs_f64() - now.saturating_duration_since(t).as_secs_f64()).max(0.0)
        }
        _ => 0.0,
    };
    e.gauge(
        "spilo_lease_remaining_seconds",
        "Seconds left on the leader lease held by this node (0 when not holding it).",
        remaining,
    );
    e.gauge(
        "spilo_term",
        "The leader term of the last DCS view (0 when unknown or no leader).",
        crate::api::status::leader_term(s).map_or(0.0, |t| t.0 as f64),
    );
    let (phase, in_phase) = s.phase.get(now);
    e.header(
        "spilo_loop_phase",
        "gauge",
        "1 for the phase the HA loop is in, 0 for the others.",
    );
    for p in crate::ha::phase::Phase::ALL {
        e.sample(
            "spilo_loop_phase",
            &format!(",phase=\"{}\"", p.name()),
            if p == phase { "1" } else { "0" },
        );
    }
    e.gauge(
        "spilo_loop_phase_seconds",
        "Seconds the HA loop has been in its current phase.",
        in_phase.as_secs_f64(),
    );
    e.header(
        "spilo_last_decision_info",
        "gauge",
        "The last decision of the HA loop: its actions' and reasons' kinds (the words are in /patroni).",
    );
    let kinds = |k: &[&str], none: &str| {
        if k.is_empty() {
            none.to_string()
        } else {
            k.join(",")
        }
    };
    e.sample(
        "spilo_last_decision_info",
        &format!(
            ",action=\"{}\",reason=\"{}\"",
            escape_label(&kinds(&s.decision.action_kinds, "none")),
            escape_label(&kinds(&s.decision.reason_kinds, "none"))
        ),
        "1",
    );
    e.out
}

/// Whether this node is a synchronous / quorum standby according to the `sync` key while
/// `synchronous_mode` is on (always false while spilo does not maintain that key).
fn sync_roles(s: &NodeState) -> (bool, bool) {
    let mode = s.dynamic.extra.get("synchronous_mode");
    let quorum_mode = mode.and_then(|v| v.as_str()) == Some("quorum");
    let on = quorum_mode
        || match mode {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(t)) => {
                matches!(t.to_ascii_lowercase().as_str(), "on" | "true" | "yes")
            }
            _ => false,
        };
    if !on || s.pg.role != Role::Replica {
        return (false, false);
    }
    let listed = s
        .cluster
        .as_ref()
        .and_then(|c| c.sync.as_ref())
        .and_then(|v| v.value.sync_standby.as_deref())
        .is_some_and(|list| {
            list.split(',')
                .any(|n| n.trim().eq_ignore_ascii_case(&s.name))
        });
    (listed && !quorum_mode, listed && quorum_mode)
}

/// The load balancers' counters, one series per load balancer (`lb` label: its name).
fn lb_metrics(e: &mut Exposition, lbs: &[std::sync::Arc<crate::lb::driver::LbStats>]) {
    use crate::lb::driver::LbStats;
    use std::sync::atomic::Ordering::Relaxed;
    let families: [Family<LbStats>; 6] = [
        Family {
            name: "spilo_lb_changes_total",
            kind: "counter",
            help: "Load-balancer changes this node made (a side routed anew).",
            get: |l| l.changes.load(Relaxed),
        },
        Family {
            name: "spilo_lb_failures_total",
            kind: "counter",
            help: "Load-balancer calls that failed (retried on a later attempt).",
            get: |l| l.failures.load(Relaxed),
        },
        Family {
            name: "spilo_lb_stale_term_total",
            kind: "counter",
            help: "Load-balancer calls refused because a newer leader term owns the load balancer.",
            get: |l| l.stale.load(Relaxed),
        },
        Family {
            name: "spilo_lb_repairs_total",
            kind: "counter",
            help:
                "Reconcile passes that found the load balancer routing otherwise and repaired it.",
            get: |l| l.repairs.load(Relaxed),
        },
        Family {
            name: "spilo_lb_in_sync",
            kind: "gauge",
            help: "1 while the load balancer routes what this node last asked for.",
            get: |l| u64::from(l.in_sync.load(Relaxed)),
        },
        Family {
            name: "spilo_lb_last_change_timestamp_seconds",
            kind: "gauge",
            help: "Unix time of this node's last successful load-balancer change (0: none).",
            get: |l| l.last_change_unix.load(Relaxed),
        },
    ];
    let sources: Vec<(String, &LbStats)> = lbs
        .iter()
        .map(|l| (format!(",lb=\"{}\"", escape_label(&l.label)), l.as_ref()))
        .collect();
    e.table(&families, &sources);
}

/// The WAL archiver's counters (only on nodes with a `storage:` section).
fn archive_metrics(e: &mut Exposition, a: &crate::backup::archiver::ArchiveStats) {
    use crate::backup::archiver::Cause;
    use std::sync::atomic::Ordering::Relaxed;
    for (name, help, v) in [
        (
            "spilo_wal_archived_total",
            "WAL files reported archived to PostgreSQL (each stored durably first).",
            a.archived.load(Relaxed),
        ),
        (
            "spilo_wal_archived_ahead_total",
            "Of those, files already uploaded ahead of PostgreSQL's request.",
            a.ahead_hits.load(Relaxed),
        ),
        (
            "spilo_wal_archive_duplicates_total",
            "Files found already stored with the same content (a retried upload).",
            a.duplicates.load(Relaxed),
        ),
        (
            "spilo_wal_archive_bytes_total",
            "Bytes of WAL uploaded, before compression.",
            a.bytes_in.load(Relaxed),
        ),
        (
            "spilo_wal_archive_stored_bytes_total",
            "Bytes stored for uploaded WAL, after compression.",
            a.bytes_out.load(Relaxed),
        ),
        (
            "spilo_wal_fetched_total",
            "WAL files restored from the archive for restore_command.",
            a.fetched.load(Relaxed),
        ),
        (
            "spilo_wal_fetch_prefetched_total",
            "Of those, files the prefetch had already downloaded.",
            a.fetch_prefetched.load(Relaxed),
        ),
        (
            "spilo_wal_fetch_missing_total",
            "restore_command requests for files the archive does not hold.",
            a.fetch_missing.load(Relaxed),
        ),
        (
            "spilo_wal_fetch_failures_total",
            "restore_command requests that failed (store, object, timeout).",
            a.fetch_failures.load(Relaxed),
        ),
        (
            "spilo_wal_fetch_bytes_total",
            "Bytes of WAL restored from the archive.",
            a.fetch_bytes.load(Relaxed),
        ),
        (
            "spilo_backups_total",
            "Base backups this node took.",
            a.backups.load(Relaxed),
        ),
        (
            "spilo_backup_failures_total",
            "Base backups that failed on this node.",
            a.backup_failures.load(Relaxed),
        ),
        (
            "spilo_backup_verify_failures_total",
            "Scheduled restore drills (backup.verify_schedule) that failed on this node.",
            a.verify_failures.load(Relaxed),
        ),
    ] {
        e.counter(name, help, v);
    }
    e.header(
        "spilo_wal_archive_failures_total",
        "counter",
        "WAL archive requests that failed, by cause.",
    );
    for c in Cause::ALL {
        e.sample(
            "spilo_wal_archive_failures_total",
            &format!(",cause=\"{}\"", c.label()),
            &a.failures_of(c).to_string(),
        );
    }
    e.gauge(
        "spilo_wal_archive_waiting",
        "WAL files PostgreSQL has marked ready that are not archived yet.",
        a.ready.load(Relaxed) as f64,
    );
    let last = a.last_success_unix.load(Relaxed);
    e.gauge(
        "spilo_wal_archive_last_success_timestamp_seconds",
        "Unix time of the last WAL file archived (0: none yet).",
        last as f64,
    );
    e.gauge(
        "spilo_pg_wal_bytes",
        "Size of pg_wal at the archiver's last look.",
        a.pg_wal_bytes.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_last_timestamp_seconds",
        "Unix time the last base backup this node took finished (0: none).",
        a.backup_last_unix.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_last_size_bytes",
        "Size of the last base backup before compression.",
        a.backup_last_bytes.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_last_stored_bytes",
        "Stored size of the last base backup.",
        a.backup_last_stored_bytes.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_last_duration_seconds",
        "Duration of the last base backup.",
        a.backup_last_millis.load(Relaxed) as f64 / 1000.0,
    );
    e.gauge(
        "spilo_backup_verify_last_timestamp_seconds",
        "Unix time the last scheduled restore drill on this node ended (0: none).",
        a.verify_last_unix.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_verify_last_success",
        "1 if the last scheduled restore drill on this node passed, 0 if it failed or none ran.",
        a.verify_last_ok.load(Relaxed) as f64,
    );
    e.gauge(
        "spilo_backup_verify_last_duration_seconds",
        "Duration of the last scheduled restore drill on this node.",
        a.verify_last_millis.load(Relaxed) as f64 / 1000.0,
    );
    e.flag(
        "spilo_pg_wal_over_warning",
        "pg_wal is past backup.archive.pg_wal_warning_mb (WAL is not archived fast enough).",
        a.pg_wal_over.load(Relaxed),
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::api::status::tests::{primary, replica};
    use crate::ha::state::DecisionReport;

    const PROMTOOL: &str = "/usr/bin/promtool";

    /// Run `promtool check metrics` on `text`; `None` when promtool is not installed.
    fn promtool(text: &str) -> Option<(bool, String)> {
        if !std::path::Path::new(PROMTOOL).exists() {
            eprintln!("{PROMTOOL} not installed; skipping the promtool check");
            return None;
        }
        #[allow(clippy::disallowed_methods)] // the test runs promtool, the metrics format's checker
        let mut child = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.status.success(), msg))
    }

    fn value(text: &str, series: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(series) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .to_string()
    }

    fn busy_primary() -> (NodeState, Instant) {
        let now = crate::clock::now();
        let mut s = primary(now);
        s.leader_renewed_at = now.checked_sub(Duration::from_secs(4));
        s.pg.pending_restart = true;
        s.stats.observe(0.003);
        s.stats.observe(0.02);
        s.stats.observe(7.0);
        s.stats.dcs_rtt_secs = Some(0.0042);
        s.stats.dcs_errors = 2;
        s.hook_stats = [7, 2, 1, 0, 3, 1];
        s.decision = DecisionReport {
            actions: vec!["update leader status at 0/3000060".into()],
            reasons: vec!["I hold the leader lock".into()],
            at: "2024-01-01T00:00:00+00:00".into(),
            action_kinds: vec!["leader_housekeeping"],
            reason_kinds: vec!["leader_lock_held"],
        };
        s.scope = "de\"mo".into();
        (s, now)
    }

    #[test]
    fn helpers() {
        assert_eq!(zero_padded_version("4.1.4"), "040104");
        assert_eq!(zero_padded_version("3.0"), "030000");
        assert_eq!(zero_padded_version("10.2.3rc1"), "100203");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(postgres_state_index("running"), 5);
        assert_eq!(postgres_state_index("crashed"), 14);
        assert_eq!(postgres_state_index("weird"), -1);
        let want = 1_724_873_966.352526;
        for t in [
            "2024-08-28 19:39:26.352526+00:00",
            "2024-08-28 19:39:26.352526+00",
            "2024-08-28T21:39:26.352526+02:00",
            "2024-08-28 19:39:26.352526",
        ] {
            let got = parse_pg_timestamp(t).unwrap();
            assert!((got - want).abs() < 1e-5, "{t}: {got}");
        }
        assert_eq!(
            parse_pg_timestamp("2024-08-28 19:39:26+00"),
            Some(1_724_873_966.0)
        );
        assert_eq!(parse_pg_timestamp("yesterday"), None);
    }

    #[test]
    fn the_term_series_is_the_leader_term() {
        let (mut s, now) = busy_primary();
        let mut c = (**s.cluster.as_ref().expect("a view")).clone();
        if let Some(l) = c.leader.as_mut() {
            l.term = Some(spilo_sdk::Term(88));
        }
        s.cluster = Some(std::sync::Arc::new(c));
        assert_eq!(value(&render(&s, now), "spilo_term{"), "88");
    }

    #[test]
    fn primary_series() {
        let (s, now) = busy_primary();
        let text = render(&s, now);
        let labels = "{scope=\"de\\\"mo\",name=\"pg0\"}";
        assert!(
            text.contains(&format!("patroni_version{labels} 040104\n")),
            "{text}"
        );
        assert_eq!(value(&text, "patroni_primary{"), "1");
        assert_eq!(value(&text, "patroni_replica{"), "0");
        assert_eq!(value(&text, "patroni_postgres_running{"), "1");
        assert_eq!(
            value(&text, "spilo_term{"),
            "0",
            "no term known in this view"
        );
        assert_eq!(
            value(&text, "patroni_xlog_location{"),
            (0x0500_0000u64).to_string()
        );
        assert_eq!(value(&text, "patroni_xlog_replayed_location{"), "0");
        assert_eq!(value(&text, "patroni_postgres_server_version{"), "160004");
        assert_eq!(value(&text, "patroni_postgres_timeline{"), "3");
        assert_eq!(value(&text, "patroni_cluster_unlocked{"), "0");
        assert_eq!(value(&text, "patroni_pending_restart{"), "1");
        assert_eq!(value(&text, "patroni_postgres_state{"), "5");
        assert_eq!(value(&text, "patroni_failover_priority{"), "1");
        assert_eq!(value(&text, "patroni_dcs_last_seen{"), "1700000000");
        assert_eq!(
            value(&text, "patroni_postmaster_start_time{"),
            "1724873966.352526"
        );
        assert!(text.contains("# Values: 0=initializing_new_cluster, 1=initdb_failed"));
        // Histogram: cumulative buckets, +Inf = count.
        assert!(text.contains(
            "spilo_loop_duration_seconds_bucket{scope=\"de\\\"mo\",name=\"pg0\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(",le=\"0.025\"} 2\n"));
        assert!(text.contains(",le=\"5\"} 2\n"));
        assert!(text.contains(",le=\"+Inf\"} 3\n"));
        assert_eq!(value(&text, "spilo_loop_duration_seconds_count{"), "3");
        let sum: f64 = value(&text, "spilo_loop_duration_seconds_sum{")
            .parse()
            .unwrap();
        assert!((sum - 7.023).abs() < 1e-9, "{sum}");
        assert_eq!(value(&text, "spilo_dcs_round_trip_seconds{"), "0.0042");
        assert_eq!(value(&text, "spilo_dcs_errors_total{"), "2");
        assert_eq!(value(&text, "spilo_hook_errors_total{"), "2");
        assert_eq!(value(&text, "spilo_hook_timeouts_total{"), "1");
        let lease: f64 = value(&text, "spilo_lease_remaining_seconds{")
            .parse()
            .unwrap();
        assert!((25.0..=26.1).contains(&lease), "{lease}");
        assert!(text.contains(",phase=\"start\"} 1\n"), "{text}");
        assert!(text.contains(",phase=\"act\"} 0\n"), "{text}");
        assert_eq!(text.matches("spilo_loop_phase{").count(), 12);
        assert!(text.contains("action=\"leader_housekeeping\",reason=\"leader_lock_held\"} 1\n"));
        // Every family has HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }

    #[test]
    fn replica_series() {
        let now = crate::clock::now();
        let mut s = replica(now, 0x0400_0000);
        s.pg.replayed_timestamp = Some("2024-08-28 19:40:00+00".into());
        s.pg.replay_paused = true;
        s.tags
            .insert("nofailover".into(), serde_json::Value::Bool(true));
        let text = render(&s, now);
        assert_eq!(value(&text, "patroni_replica{"), "1");
        assert_eq!(value(&text, "patroni_primary{"), "0");
        assert_eq!(value(&text, "patroni_xlog_location{"), "0");
        assert_eq!(
            value(&text, "patroni_xlog_replayed_location{"),
            (0x0400_0000u64).to_string()
        );
        assert_eq!(
            value(&text, "patroni_xlog_replayed_timestamp{"),
            "1724874000"
        );
        assert_eq!(value(&text, "patroni_xlog_paused{"), "1");
        assert_eq!(value(&text, "patroni_postgres_streaming{"), "1");
        assert_eq!(value(&text, "patroni_postgres_in_archive_recovery{"), "0");
        assert_eq!(value(&text, "patroni_failover_priority{"), "0");
        assert_eq!(value(&text, "spilo_lease_remaining_seconds{"), "0");
        assert!(
            !text.contains("spilo_dcs_round_trip_seconds{"),
            "unknown RTT has no sample"
        );
    }

    #[test]
    fn output_passes_promtool() {
        let (busy, now) = busy_primary();
        let states = [busy, replica(now, 1), NodeState::new("fresh", "demo", "")];
        // The check bites: a counter without `_total` fails it.
        if let Some((ok, _)) = promtool("# HELP x_bytes X.\n# TYPE x_bytes counter\nx_bytes 1\n") {
            assert!(!ok);
        }
        for s in &states {
            let text = render(s, now);
            if let Some((ok, msg)) = promtool(&text) {
                assert!(ok, "promtool check metrics failed:\n{msg}\n---\n{text}");
            }
        }
    }
}
