//! Derived values of a [`Config`].

use std::path::{Path, PathBuf};

use super::model::Config;
use super::validate::{split_host_port, DEFAULT_PG_PORT};

impl Config {
    /// The REST API URL advertised in the member key: `http://<restapi.connect_address>/patroni`.
    pub fn api_url(&self) -> String {
        format!("http://{}/patroni", self.restapi.connect_address.trim())
    }

    /// The connection URL advertised in the member key:
    /// `postgres://<postgresql.connect_address>/postgres`.
    pub fn conn_url(&self) -> String {
        format!(
            "postgres://{}/postgres",
            self.postgresql.connect_address.trim()
        )
    }

    /// The passfile spilo writes: `postgresql.pgpass` when configured, else
    /// `pgpass.<name>` next to the data directory.
    pub fn pgpass_path(&self) -> PathBuf {
        if let Some(p) = self
            .postgresql
            .pgpass
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            return p.clone();
        }
        let parent = match self.postgresql.data_dir.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => Path::new("/"),
        };
        parent.join(format!("pgpass.{}", self.name))
    }

    /// The port of `postgresql.listen` (5432 if it cannot be parsed, which a validated
    /// configuration rules out).
    pub fn listen_port(&self) -> u16 {
        split_host_port(&self.postgresql.listen).map_or(DEFAULT_PG_PORT, |(_, port)| port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        serde_yaml::from_str(
            "scope: demo\nname: n1\nrestapi: {listen: '0.0.0.0:8008', connect_address: '10.0.0.1:8008'}\n\
             postgresql:\n  listen: '127.0.0.1,10.0.0.1:5433'\n  connect_address: '10.0.0.1:5433'\n  data_dir: /var/lib/pg/data\n\
             \x20 authentication: {superuser: {username: postgres}, replication: {username: repl}}\n",
        )
        .unwrap()
    }

    #[test]
    fn urls_paths_and_ports() {
        let mut c = config();
        assert_eq!(c.api_url(), "http://10.0.0.1:8008/patroni");
        assert_eq!(c.conn_url(), "postgres://10.0.0.1:5433/postgres");
        assert_eq!(c.listen_port(), 5433);
        assert_eq!(c.pgpass_path(), PathBuf::from("/var/lib/pg/pgpass.n1"));
        c.postgresql.pgpass = Some("/tmp/pgpass".into());
        assert_eq!(c.pgpass_path(), PathBuf::from("/tmp/pgpass"));
        c.postgresql.listen = "nonsense".into();
        assert_eq!(c.listen_port(), 5432);
    }
}
