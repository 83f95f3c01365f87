//! The local PostgreSQL as the HA executor sees it: a trait next to [`crate::dcs::Dcs`], so
//! that the executor can run over a simulated PostgreSQL as well as the real one
//! ([`Postgres`]). Every method is a semantic step (start, promote, checkpoint, create a slot),
//! never a SQL string, so a simulation can implement it without parsing SQL.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;

use super::conf::Upstream;
use super::ctl::{PgError, Postgres, StopMode};
use super::query::{quote_ident, quote_literal};
use crate::config::Credentials;
use crate::ha::state::PgStatus;

/// The roles a bootstrap creates after `initdb`.
#[derive(Clone, Debug)]
pub struct BootstrapRoles {
    /// The replication role.
    pub replication: Credentials,
    /// The rewind role, when it is not the superuser.
    pub rewind: Option<Credentials>,
    /// The superuser, to be made to match the configuration (a clone brings its source's).
    pub superuser: Option<Credentials>,
}

/// The local PostgreSQL: its data directory, its processes and the few statements the daemon
/// runs. Every call returns within its deadline (or the configured `pg_ctl` timeout).
#[async_trait]
pub trait LocalPostgres: Send + Sync + 'static {
    /// The data directory.
    fn data_dir(&self) -> &Path;
    /// The deadline of `pg_ctl` start, stop and promote.
    fn ctl_timeout(&self) -> Duration;
    /// The postmaster's pid, while one runs on the data directory.
    fn postmaster_pid(&self) -> Option<i32>;
    /// A cluster exists in the data directory.
    fn data_dir_initialized(&self) -> bool;
    /// The data directory is missing or empty.
    fn data_dir_empty(&self) -> bool;
    /// `pg_controldata`, key → value.
    async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError>;
    /// The running PostgreSQL's state (role, positions, replication).
    async fn query_status(&self, timeout: Duration) -> Result<PgStatus, PgError>;
    /// Writes `postgresql.conf`, `pg_hba.conf` and the standby signal.
    fn write_config(
        &self,
        parameters: &BTreeMap<String, Value>,
        hba: &[String],
        standby: bool,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError>;
    /// `initdb` with extra options.
    async fn initdb(&self, extra: &[String]) -> Result<(), PgError>;
    /// Creates the roles of a new cluster.
    async fn create_bootstrap_roles(
        &self,
        roles: &BootstrapRoles,
        timeout: Duration,
    ) -> Result<(), PgError>;
    /// `CREATE EXTENSION IF NOT EXISTS spilo`.
    async fn create_spilo_extension(&self, timeout: Duration) -> Result<(), PgError>;
    /// Starts the postmaster and waits until it accepts connections.
    async fn start(&self) -> Result<(), PgError>;
    /// Stops it.
    async fn stop(&self, mode: StopMode) -> Result<(), PgError>;
    /// SIGKILL to the postmaster (when an immediate stop hangs).
    fn kill_postmaster(&self);
    /// Ends recovery.
    async fn promote(&self) -> Result<(), PgError>;
    /// `CHECKPOINT`.
    async fn checkpoint(&self, timeout: Duration) -> Result<(), PgError>;
    /// `pg_reload_conf()`.
    async fn reload(&self, timeout: Duration) -> Result<(), PgError>;
    /// The physical replication slots.
    async fn physical_slots(&self, timeout: Duration) -> Result<Vec<String>, PgError>;
    /// Creates a physical replication slot.
    async fn create_physical_slot(&self, name: &str, timeout: Duration) -> Result<(), PgError>;
    /// `current_setting(name)`.
    async fn current_setting(&self, name: &str, timeout: Duration) -> Result<String, PgError>;
    /// Removes the data directory.
    fn remove_data_dir(&self) -> Result<(), PgError>;
    /// A new copy of the upstream's data directory.
    async fn basebackup(&self, host: &str, port: u16) -> Result<(), PgError>;
    /// Writes `recovery.signal` (after [`LocalPostgres::write_config`], which removes it): the
    /// next start runs a targeted archive recovery (a clone). Worlds without clones keep the
    /// default.
    fn write_recovery_signal(&self) -> Result<(), PgError> {
        Ok(())
    }
    /// `recovery.signal` is still there: PostgreSQL removes it when the targeted recovery
    /// ends.
    fn recovery_pending(&self) -> bool {
        false
    }
    /// Single-user crash recovery (before a rewind of a data directory that did not shut down
    /// cleanly).
    async fn single_user_recovery(&self) -> Result<(), PgError>;
    /// `pg_rewind` from the upstream; its output.
    async fn rewind(&self, host: &str, port: u16) -> Result<String, PgError>;
    /// `pg_wal/<tl>.history`: its text and when it was written.
    fn timeline_history(&self, timeline: u64) -> std::io::Result<(String, Option<SystemTime>)>;
    /// Writes the state file the SQL extension reads (`name` in the data directory),
    /// atomically. Blocking: call it off the loop's task.
    fn write_state_file(&self, name: &str, body: &[u8]) -> std::io::Result<()>;
    /// Removes what an interrupted [`LocalPostgres::write_state_file`] of `name` left.
    fn remove_state_file_leftover(&self, name: &str);
}

#[async_trait]
impl LocalPostgres for Postgres {
    fn data_dir(&self) -> &Path {
        &self.s.data_dir
    }
    fn ctl_timeout(&self) -> Duration {
        self.s.ctl_timeout
    }
    fn postmaster_pid(&self) -> Option<i32> {
        Postgres::postmaster_pid(self)
    }
    fn data_dir_initialized(&self) -> bool {
        Postgres::data_dir_initialized(self)
    }
    fn data_dir_empty(&self) -> bool {
        Postgres::data_dir_empty(self)
    }
    async fn controldata(&self) -> Result<BTreeMap<String, String>, PgError> {
        Postgres::controldata(self).await
    }
    async fn query_status(&self, timeout: Duration) -> Result<PgStatus, PgError> {
        Postgres::query_status(self, timeout).await
    }
    fn write_config(
        &self,
        parameters: &BTreeMap<String, Value>,
        hba: &[String],
        standby: bool,
        upstream: Option<&Upstream>,
    ) -> Result<(), PgError> {
        Postgres::write_config(self, parameters, hba, standby, upstream)
    }
    async fn initdb(&self, extra: &[String]) -> Result<(), PgError> {
        Postgres::initdb(self, extra).await
    }
    async fn create_bootstrap_roles(
        &self,
        roles: &BootstrapRoles,
        timeout: Duration,
    ) -> Result<(), PgError> {
        // The fence (spilo.fence) would refuse these writes: no state file exists yet.
        let repl = &roles.replication;
        // Created, or altered when they exist (a clone brings its source's roles along).
        let ensure = |name: &str, attrs: &str, pw: Option<&str>| {
            let (u, p) = (quote_ident(name), quote_literal(pw.unwrap_or("")));
            // A dollar-quote tag that occurs in neither the name nor the password.
            let tag = (0u32..)
                .map(|i| format!("$spilo{i}$"))
                .find(|t| !u.contains(t.as_str()) && !p.contains(t.as_str()))
                .unwrap_or_default();
            format!(
                "DO {tag} BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {n}) \
                 THEN ALTER ROLE {u} WITH {attrs} PASSWORD {p}; \
                 ELSE CREATE ROLE {u} WITH {attrs} PASSWORD {p}; END IF; END {tag};",
                n = quote_literal(name)
            )
        };
        let mut sql = format!(
            "BEGIN; SET LOCAL spilo.fence = off; SET LOCAL synchronous_commit = 'local'; {}",
            ensure(
                &repl.username,
                "LOGIN REPLICATION",
                repl.password.as_deref()
            )
        );
        if let Some(su) = &roles.superuser {
            sql.push_str(&ensure(
                &su.username,
                "LOGIN SUPERUSER",
                su.password.as_deref(),
            ));
        }
        if let Some(r) = &roles.rewind {
            sql.push_str(&ensure(&r.username, "LOGIN", r.password.as_deref()));
            sql.push_str(&format!(
                "\
                 GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO {u}; \
                 GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO {u}; \
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO {u}; \
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {u};",
                u = quote_ident(&r.username),
            ));
        }
        sql.push_str("COMMIT;");
        self.execute(&sql, timeout).await
    }
    async fn create_spilo_extension(&self, timeout: Duration) -> Result<(), PgError> {
        self.execute(
            "BEGIN; SET LOCAL spilo.fence = off; CREATE EXTENSION IF NOT EXISTS spilo; COMMIT;",
            timeout,
        )
        .await
    }
    async fn start(&self) -> Result<(), PgError> {
        Postgres::start(self).await
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        Postgres::stop(self, mode).await
    }
    fn kill_postmaster(&self) {
        Postgres::kill_postmaster(self)
    }
    async fn promote(&self) -> Result<(), PgError> {
        Postgres::promote(self).await
    }
    async fn checkpoint(&self, timeout: Duration) -> Result<(), PgError> {
        self.execute("CHECKPOINT", timeout).await
    }
    async fn reload(&self, timeout: Duration) -> Result<(), PgError> {
        self.execute("SELECT pg_reload_conf()", timeout).await
    }
    async fn physical_slots(&self, timeout: Duration) -> Result<Vec<String>, PgError> {
        Postgres::physical_slots(self, timeout).await
    }
    async fn create_physical_slot(&self, name: &str, timeout: Duration) -> Result<(), PgError> {
        let sql = format!(
            "SELECT pg_create_physical_replication_slot({})",
            quote_literal(name)
        );
        self.execute(&sql, timeout).await
    }
    async fn current_setting(&self, name: &str, timeout: Duration) -> Result<String, PgError> {
        Postgres::current_setting(self, name, timeout).await
    }
    fn recovery_pending(&self) -> bool {
        self.data_dir().join("recovery.signal").exists()
    }
    fn write_recovery_signal(&self) -> Result<(), PgError> {
        let sig = self.data_dir().join("recovery.signal");
        std::fs::write(&sig, b"").map_err(|source| PgError::Io {
            path: sig.clone(),
            source,
        })
    }
    fn remove_data_dir(&self) -> Result<(), PgError> {
        Postgres::remove_data_dir(self)
    }
    async fn basebackup(&self, host: &str, port: u16) -> Result<(), PgError> {
        Postgres::basebackup(self, host, port).await
    }
    async fn single_user_recovery(&self) -> Result<(), PgError> {
        Postgres::single_user_recovery(self).await
    }
    async fn rewind(&self, host: &str, port: u16) -> Result<String, PgError> {
        Postgres::rewind(self, host, port).await
    }
    fn timeline_history(&self, timeline: u64) -> std::io::Result<(String, Option<SystemTime>)> {
        super::datadir::read_timeline_history(&self.s.data_dir, timeline)
    }
    fn write_state_file(&self, name: &str, body: &[u8]) -> std::io::Result<()> {
        super::datadir::write_atomically(&self.s.data_dir, name, body)
    }
    fn remove_state_file_leftover(&self, name: &str) {
        super::datadir::remove_leftover_temporary(&self.s.data_dir, name)
    }
}
