//! Queries over one long-lived local connection (TCP to `postgresql.listen` as in Patroni, or
//! the UNIX socket with `use_unix_socket`; `search_path=pg_catalog`), each with a deadline.
//! Errors carry PostgreSQL's own report (severity, SQLSTATE, message, detail, hint) or the
//! connection's cause, never a bare "db error".

use std::time::Duration;

use tokio_postgres::NoTls;

use super::conf::LocalAddress;
use super::ctl::{PgError, Postgres};
use crate::ha::state::{PgStatus, ReplicationRow, Role};

const STATUS_SQL: &str = "SELECT pg_is_in_recovery(), \
    current_setting('server_version_num')::int, \
    pg_postmaster_start_time()::text, \
    CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_flush_lsn() - '0/0')::bigint END, \
    CASE WHEN pg_is_in_recovery() THEN NULL \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::bigint END, \
    (pg_last_wal_receive_lsn() - '0/0')::bigint, \
    (pg_last_wal_replay_lsn() - '0/0')::bigint, \
    pg_last_xact_replay_timestamp()::text, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
    (SELECT received_tli::bigint FROM pg_stat_wal_receiver LIMIT 1), \
    (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
    (SELECT (latest_end_lsn - '0/0')::bigint FROM pg_stat_wal_receiver LIMIT 1), \
    GREATEST((SELECT timeline_id::bigint FROM pg_control_checkpoint()), \
             (SELECT min_recovery_end_timeline::bigint FROM pg_control_recovery())), \
    (SELECT system_identifier::text FROM pg_control_system()), \
    (SELECT count(*) > 0 FROM pg_settings WHERE pending_restart), \
    coalesce(current_setting('spilo.fence', true), 'off') IN ('on', 'true', 'yes', '1') \
      AND 'spilo' = ANY(string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))";

const REPLICATION_SQL: &str =
    "SELECT usename::text, application_name, client_addr::text, state, sync_state, \
    sync_priority::bigint, (flush_lsn - '0/0')::bigint FROM pg_stat_replication";

fn qerr(e: tokio_postgres::Error) -> PgError {
    PgError::Query(describe(&e))
}

/// A `tokio_postgres::Error` as a line that says what happened: the server's report when there
/// is one (`FATAL 28000: no pg_hba.conf entry for host …`), else the error and its causes
/// (`error connecting to server: Connection refused (os error 111)`).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (DETAIL: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (HINT: {h})"));
        }
        return s;
    }
    crate::error_chain(e)
}

impl Postgres {
    async fn client(
        &self,
        timeout: Duration,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, PgError> {
        let mut guard = self.client.lock().await;
        let usable = guard.as_ref().map(|c| !c.is_closed()).unwrap_or(false);
        if !usable {
            let mut cfg = tokio_postgres::Config::new();
            match &self.s.local {
                LocalAddress::Tcp(host) => cfg.host(host),
                LocalAddress::Socket(dir) => cfg.host_path(dir),
            };
            cfg.port(self.s.port)
                .user(&self.s.superuser.0)
                .dbname("postgres")
                .application_name("spilo")
                .options("-c search_path=pg_catalog -c statement_timeout=10000")
                .connect_timeout(timeout);
            if let Some(pw) = &self.s.superuser.1 {
                cfg.password(pw);
            }
            let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
                .await
                .map_err(|_| PgError::Query("connect timed out".into()))?
                .map_err(qerr)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "local PostgreSQL connection ended");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }

    /// Observe the running PostgreSQL. `state`/`role` fields are left for the caller.
    pub async fn query_status(&self, timeout: Duration) -> Result<PgStatus, PgError> {
        let fut = async {
            let guard = self.client(timeout).await?;
            let c = guard
                .as_ref()
                .ok_or_else(|| PgError::Query("no connection".into()))?;
            let r = c.query_one(STATUS_SQL, &[]).await.map_err(qerr)?;
            let in_recovery: bool = r.try_get(0).map_err(qerr)?;
            let u = |i: usize| -> Option<u64> {
                r.try_get::<_, Option<i64>>(i)
                    .ok()
                    .flatten()
                    .map(|v| v as u64)
            };
            let mut st = PgStatus {
                running: true,
                role: if in_recovery {
                    Role::Replica
                } else {
                    Role::Primary
                },
                server_version: r.try_get::<_, Option<i32>>(1).ok().flatten().map(i64::from),
                postmaster_start_time: r.try_get(2).ok().flatten(),
                wal_flush: u(3),
                received: u(5),
                replayed: u(6),
                replayed_timestamp: r.try_get(7).ok().flatten(),
                replay_paused: r.try_get(8).unwrap_or(false),
                latest_end_lsn: u(11),
                sysid: r.try_get(13).ok().flatten(),
                pending_restart: r
                    .try_get::<_, Option<bool>>(14)
                    .ok()
                    .flatten()
                    .unwrap_or(false),
                fence_armed: r
                    .try_get::<_, Option<bool>>(15)
                    .ok()
                    .flatten()
                    .unwrap_or(false),
                ..PgStatus::default()
            };
            if in_recovery {
                st.timeline = u(9).or(u(12));
                let receiver: Option<String> = r.try_get(10).ok().flatten();
                st.replication_state = Some(if receiver.as_deref() == Some("streaming") {
                    "streaming".into()
                } else {
                    "in archive recovery".into()
                });
            } else {
                st.timeline = u(4);
                let rows = c.query(REPLICATION_SQL, &[]).await.map_err(qerr)?;
                st.replication = rows
                    .iter()
                    .map(|row| ReplicationRow {
                        usename: row
                            .try_get::<_, Option<String>>(0)
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        application_name: row
                            .try_get::<_, Option<String>>(1)
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        client_addr: row.try_get(2).ok().flatten(),
                        state: row
                            .try_get::<_, Option<String>>(3)
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        sync_state: row
                            .try_get::<_, Option<String>>(4)
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                        sync_priority: row.try_get::<_, Option<i64>>(5).ok().flatten().unwrap_or(0),
                        flush_lsn: row
                            .try_get::<_, Option<i64>>(6)
                            .ok()
                            .flatten()
                            .map(|v| v as u64),
                    })
                    .collect();
            }
            Ok::<_, PgError>(st)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(st)) => Ok(st),
            Ok(Err(e)) => {
                *self.client.lock().await = None;
                Err(e)
            }
            Err(_) => {
                *self.client.lock().await = None;
                Err(PgError::Query(format!(
                    "status query timed out after {timeout:?}"
                )))
            }
        }
    }

    /// Run statements (no results) with a deadline.
    pub async fn execute(&self, sql: &str, timeout: Duration) -> Result<(), PgError> {
        let fut = async {
            let guard = self.client(timeout).await?;
            let c = guard
                .as_ref()
                .ok_or_else(|| PgError::Query("no connection".into()))?;
            c.batch_execute(sql).await.map_err(qerr)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PgError::Query(format!("statement timed out after {timeout:?}: {sql}")))?
    }

    /// Names of existing physical replication slots.
    pub async fn physical_slots(&self, timeout: Duration) -> Result<Vec<String>, PgError> {
        let fut = async {
            let guard = self.client(timeout).await?;
            let c = guard
                .as_ref()
                .ok_or_else(|| PgError::Query("no connection".into()))?;
            let rows = c
                .query(
                    "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'",
                    &[],
                )
                .await
                .map_err(qerr)?;
            Ok::<_, PgError>(
                rows.iter()
                    .filter_map(|r| r.try_get::<_, String>(0).ok())
                    .collect(),
            )
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PgError::Query("slot query timed out".into()))?
    }
}

impl Postgres {
    /// `current_setting(name)`.
    pub async fn current_setting(&self, name: &str, timeout: Duration) -> Result<String, PgError> {
        let fut = async {
            let guard = self.client(timeout).await?;
            let c = guard
                .as_ref()
                .ok_or_else(|| PgError::Query("no connection".into()))?;
            let row = c
                .query_one("SELECT current_setting($1)", &[&name])
                .await
                .map_err(qerr)?;
            row.try_get::<_, String>(0).map_err(qerr)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| PgError::Query("current_setting timed out".into()))?
    }
}

/// Quote a SQL literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quote a SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
