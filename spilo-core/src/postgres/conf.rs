//! Pure rendering of the files spilo owns in the data directory: `postgresql.conf`,
//! `pg_hba.conf`, the passfile, and connection strings. No IO here.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// Parameters spilo always sets, and their defaults (the DCS/local values override the
/// defaults, except where a value would break replication).
const DEFAULTS: &[(&str, &str)] = &[
    ("wal_level", "replica"),
    ("hot_standby", "on"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("wal_log_hints", "on"),
    ("wal_keep_size", "128MB"),
];

/// Keys the daemon manages itself; values for them from the config are ignored.
const MANAGED: &[&str] = &[
    "listen_addresses",
    "port",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    "hba_file",
    "ident_file",
    "data_directory",
    "config_file",
];

/// A setting name PostgreSQL accepts in `postgresql.conf`: letters, digits, `_` and `.`
/// (for extension settings), not starting with a digit or a dot. Anything else could smuggle
/// a second line into the file.
pub fn valid_guc_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !k.starts_with(|c: char| c.is_ascii_digit() || c == '.')
}

/// Quote a value for `postgresql.conf`.
pub fn quote_conf(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Render a JSON config value as a GUC value.
pub fn guc_value(v: &Value) -> String {
    match v {
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote_conf(s),
        other => quote_conf(&other.to_string()),
    }
}

/// Quote one value of a libpq connection string.
pub fn quote_conninfo(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Where a replica streams from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Host of the upstream PostgreSQL.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Replication role.
    pub user: String,
    /// Our slot on the upstream, if slots are used.
    pub slot: Option<String>,
}

/// A libpq connection string without any password (the passfile supplies it).
pub fn conninfo(
    host: &str,
    port: u16,
    user: &str,
    dbname: Option<&str>,
    passfile: &Path,
    application_name: &str,
) -> String {
    let mut s = format!(
        "host={} port={} user={} passfile={} application_name={} connect_timeout=3",
        quote_conninfo(host),
        port,
        quote_conninfo(user),
        quote_conninfo(&passfile.display().to_string()),
        quote_conninfo(application_name)
    );
    if let Some(db) = dbname {
        s.push_str(&format!(" dbname={}", quote_conninfo(db)));
    }
    s
}

/// How PostgreSQL hands WAL files to the spilo daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archiving {
    /// `archive_command`: this command (`spilo wal-push … %p`), a process per file.
    Command(String),
    /// `archive_library = 'spilo'`: the spilo extension's archive module, in the archiver's
    /// own process, talking to the daemon's socket.
    Module {
        /// The daemon's archive socket (`spilo.archive_socket`).
        socket: String,
        /// Seconds the module waits for an answer (`spilo.archive_timeout`).
        timeout: u64,
    },
}

/// Everything needed to render `postgresql.conf`.
pub struct ConfInput<'a> {
    /// `listen_addresses`.
    pub listen_addresses: &'a str,
    /// `port`.
    pub port: u16,
    /// `cluster_name`.
    pub cluster_name: &'a str,
    /// Effective parameters (DCS, overridden by local).
    pub parameters: &'a BTreeMap<String, Value>,
    /// Replica: where to stream from (None on a primary, or a replica following nobody).
    pub upstream: Option<&'a Upstream>,
    /// The passfile.
    pub passfile: &'a Path,
    /// Member name (`application_name`).
    pub member: &'a str,
    /// Unix socket directory.
    pub socket_dir: &'a str,
    /// How spilo archives (a `storage:` section): it replaces
    /// `archive_mode`/`archive_command`/`archive_library` from the parameters.
    pub archive: Option<&'a Archiving>,
    /// spilo's `restore_command` (the same socket), unless the parameters set one.
    pub restore_command: Option<&'a str>,
}

/// Render `postgresql.conf`. It includes `postgresql.base.conf` (what initdb wrote).
pub fn render_postgresql_conf(i: &ConfInput<'_>) -> String {
    let mut out = String::from(
        "# Written by spilo at every start; edits here are lost. Set parameters in the spilo\n\
         # configuration (postgresql.parameters) or the DCS (spiloctl / PATCH /config).\n\
         include_if_exists 'postgresql.base.conf'\n",
    );
    let mut params: BTreeMap<String, String> = DEFAULTS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in i.parameters {
        if MANAGED.contains(&k.as_str()) {
            continue;
        }
        if !valid_guc_name(k) {
            tracing::warn!(parameter = %k, "ignoring a parameter whose name is not a valid setting name");
            continue;
        }
        let value = guc_value(v);
        if value.contains(['\n', '\r', '\0']) {
            tracing::warn!(parameter = %k, "ignoring a parameter whose value contains a line break");
            continue;
        }
        params.insert(k.clone(), value);
    }
    // A replica needs hot_standby for reads and replica-level WAL for everything spilo does.
    if params
        .get("wal_level")
        .map(|v| v.trim_matches('\'') == "minimal")
        .unwrap_or(false)
    {
        params.insert("wal_level".into(), "replica".into());
    }
    params
        .entry("cluster_name".into())
        .or_insert_with(|| quote_conf(i.cluster_name));
    params
        .entry("unix_socket_directories".into())
        .or_insert_with(|| quote_conf(i.socket_dir));
    params.insert("listen_addresses".into(), quote_conf(i.listen_addresses));
    params.insert("port".into(), i.port.to_string());
    if let Some(up) = i.upstream {
        params.insert(
            "primary_conninfo".into(),
            quote_conf(&conninfo(
                &up.host, up.port, &up.user, None, i.passfile, i.member,
            )),
        );
        if let Some(slot) = &up.slot {
            params.insert("primary_slot_name".into(), quote_conf(slot));
        }
    }
    params.insert("recovery_target_timeline".into(), quote_conf("latest"));
    if let Some(how) = i.archive {
        // `always` (a standby cluster whose leader archives) stays; anything else is `on`.
        let always = i
            .parameters
            .get("archive_mode")
            .is_some_and(|v| guc_value(v).trim_matches('\'') == "always");
        params.insert(
            "archive_mode".into(),
            if always { "always" } else { "on" }.into(),
        );
        match how {
            Archiving::Command(cmd) => {
                params.insert("archive_command".into(), quote_conf(cmd));
                params.remove("archive_library");
            }
            Archiving::Module { socket, timeout } => {
                // PostgreSQL 16 refuses both at once; 15 would ignore the command.
                params.remove("archive_command");
                params.insert("archive_library".into(), quote_conf("spilo"));
                params.insert("spilo.archive_socket".into(), quote_conf(socket));
                params.insert("spilo.archive_timeout".into(), timeout.to_string());
            }
        }
    }
    if let Some(cmd) = i.restore_command {
        params
            .entry("restore_command".into())
            .or_insert_with(|| quote_conf(cmd));
    }
    for (k, v) in params {
        // Values that are already quoted (from DEFAULTS or guc_value) are written as they are;
        // bare defaults like `replica` are written unquoted, which PostgreSQL accepts.
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// Render `pg_hba.conf` from the configured lines, adding local replication and superuser
/// access over the unix socket when the configuration has no `local` line of its own.
pub fn render_pg_hba(lines: &[String]) -> String {
    let mut out = String::from(
        "# Written by spilo; edits here are lost. Configure postgresql.pg_hba instead.\n",
    );
    for l in lines {
        out.push_str(l.trim());
        out.push('\n');
    }
    if lines.is_empty() {
        out.push_str("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
    }
    out
}

/// Escape one field of a passfile line.
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// Render the passfile: one wildcard line per role with a password.
pub fn render_pgpass(roles: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (user, pw) in roles {
        if let Some(pw) = pw {
            out.push_str(&format!(
                "*:*:*:{}:{}\n",
                pgpass_field(user),
                pgpass_field(pw)
            ));
        }
    }
    out
}

/// How the daemon reaches its own PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAddress {
    /// Over TCP to this host (Patroni's default: `postgresql.listen`'s address, or `localhost`
    /// when PostgreSQL listens on every address or on loopback).
    Tcp(String),
    /// Over the UNIX socket in this directory (`postgresql.use_unix_socket: true`).
    Socket(String),
}

impl std::fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LocalAddress::Tcp(h) => write!(f, "TCP {h}"),
            LocalAddress::Socket(d) => write!(f, "UNIX socket in {d}"),
        }
    }
}

/// The host for a TCP connection to the local PostgreSQL, as Patroni picks it: `localhost`
/// when any of the listen addresses is a wildcard or loopback (`*`, `0.0.0.0`, `::`,
/// `127.0.0.1`, `::1`, `localhost`), else the first listen address. `localhost` resolves to
/// every loopback address and each is tried in turn, so a `pg_hba.conf` that admits only IPv4
/// (Patroni's example configs) still lets the daemon in.
pub fn local_tcp_host(listen_addresses: &str) -> String {
    let hosts: Vec<&str> = listen_addresses
        .split(',')
        .map(|h| h.trim().trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty())
        .collect();
    let loopback_or_any = |h: &&str| {
        matches!(*h, "*" | "0.0.0.0" | "::" | "127.0.0.1" | "::1")
            || h.eq_ignore_ascii_case("localhost")
    };
    if hosts.is_empty() || hosts.iter().any(loopback_or_any) {
        return "localhost".into();
    }
    hosts[0].to_string()
}

/// The first usable directory of `unix_socket_directories` (an absolute path; Linux abstract
/// sockets, `@…`, cannot be connected to by path).
pub fn local_socket_dir(unix_socket_directories: &str) -> Option<String> {
    unix_socket_directories
        .split(',')
        .map(|d| d.trim().trim_matches('\'').trim_matches('"'))
        .find(|d| d.starts_with('/'))
        .map(str::to_string)
}

/// Split `host:port` (host may be `*`, a comma list, or `[v6]`).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (h, p) = s.trim().rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    Some((h.to_string(), p.parse().ok()?))
}

/// A `bootstrap.initdb` entry spilo refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InitdbOptionError {
    /// An option spilo sets itself.
    #[error("bootstrap.initdb: option '{0}' is set by spilo")]
    SetBySpilo(String),
    /// Neither a flag nor a mapping of options.
    #[error("bootstrap.initdb: unsupported entry {0}")]
    Unsupported(Value),
}

/// initdb arguments from `bootstrap.initdb` (`data-checksums` or `{encoding: UTF8}`);
/// options spilo sets itself are refused.
pub fn initdb_args(opts: &[Value]) -> Result<Vec<String>, InitdbOptionError> {
    const FORBIDDEN: &[&str] = &[
        "pgdata",
        "nosync",
        "pwfile",
        "sync-only",
        "version",
        "username",
        "D",
        "U",
    ];
    let mut args = Vec::new();
    for o in opts {
        match o {
            Value::String(flag) => {
                if FORBIDDEN.contains(&flag.as_str()) {
                    return Err(InitdbOptionError::SetBySpilo(flag.clone()));
                }
                args.push(format!("--{flag}"));
            }
            Value::Object(m) => {
                for (k, v) in m {
                    if FORBIDDEN.contains(&k.as_str()) {
                        return Err(InitdbOptionError::SetBySpilo(k.clone()));
                    }
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    args.push(format!("--{k}={v}"));
                }
            }
            other => return Err(InitdbOptionError::Unsupported(other.clone())),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_tcp_host_follows_patronis_rule() {
        assert_eq!(local_tcp_host("*"), "localhost");
        assert_eq!(local_tcp_host("0.0.0.0"), "localhost");
        assert_eq!(local_tcp_host("127.0.0.1"), "localhost");
        assert_eq!(local_tcp_host("::"), "localhost");
        assert_eq!(local_tcp_host("10.0.0.5, 127.0.0.1"), "localhost");
        assert_eq!(local_tcp_host("10.0.0.5,10.0.0.6"), "10.0.0.5");
        assert_eq!(local_tcp_host("db1.example.com"), "db1.example.com");
        assert_eq!(local_tcp_host("[fd00::5]"), "fd00::5");
        assert_eq!(local_tcp_host(""), "localhost");
    }

    #[test]
    fn the_local_socket_is_the_first_absolute_directory() {
        assert_eq!(
            local_socket_dir("@abstract, /var/run/postgresql,/tmp").as_deref(),
            Some("/var/run/postgresql")
        );
        assert_eq!(local_socket_dir("'/tmp'").as_deref(), Some("/tmp"));
        assert_eq!(local_socket_dir("@x"), None);
        assert_eq!(local_socket_dir(""), None);
    }

    #[test]
    fn conf_quotes_and_manages_keys() {
        let mut p = BTreeMap::new();
        p.insert("shared_buffers".into(), Value::from("32MB"));
        p.insert("max_connections".into(), Value::from(50));
        p.insert("port".into(), Value::from(1));
        p.insert("fsync".into(), Value::Bool(false));
        let up = Upstream {
            host: "10.0.0.1".into(),
            port: 5433,
            user: "rep'l".into(),
            slot: Some("node1".into()),
        };
        let conf = render_postgresql_conf(&ConfInput {
            listen_addresses: "127.0.0.1",
            port: 5432,
            cluster_name: "demo",
            parameters: &p,
            upstream: Some(&up),
            passfile: Path::new("/tmp/pgpass"),
            member: "node2",
            socket_dir: "/tmp",
            archive: None,
            restore_command: None,
        });
        assert!(conf.contains("port = 5432\n"), "{conf}");
        assert!(!conf.contains("port = 1\n"));
        assert!(conf.contains("shared_buffers = '32MB'"));
        assert!(conf.contains("max_connections = 50"));
        assert!(conf.contains("fsync = off"));
        assert!(conf.contains("primary_slot_name = 'node1'"));
        assert!(conf.contains("user=''rep\\\\''l''"), "{conf}");
        assert!(conf.contains("application_name=''node2''"));
        assert!(!conf.contains("password"));
    }

    /// `postgresql.conf` of a primary (no upstream) with these parameters.
    fn render_primary(
        p: &BTreeMap<String, Value>,
        archive: Option<&Archiving>,
        restore_command: Option<&str>,
    ) -> String {
        render_postgresql_conf(&ConfInput {
            listen_addresses: "*",
            port: 5432,
            cluster_name: "c",
            parameters: p,
            upstream: None,
            passfile: Path::new("/tmp/p"),
            member: "n",
            socket_dir: "/tmp",
            archive,
            restore_command,
        })
    }

    #[test]
    fn parameter_names_and_values_cannot_inject_lines() {
        let mut p = BTreeMap::new();
        p.insert(
            "archive_command = 'rm -rf /'\nwork_mem".into(),
            Value::from("1MB"),
        );
        p.insert("work_mem".into(), Value::from("4MB\narchive_command = 'x'"));
        p.insert("auto_explain.log_min_duration".into(), Value::from(5));
        let conf = render_primary(&p, None, None);
        assert!(!conf.contains("archive_command"), "{conf}");
        assert!(!conf.contains("work_mem"), "{conf}");
        assert!(conf.contains("auto_explain.log_min_duration = 5"));
        assert!(!valid_guc_name("1abc") && !valid_guc_name("") && valid_guc_name("shared_buffers"));
    }

    #[test]
    fn spilo_archiving_replaces_the_users_archive_settings() {
        let mut p = BTreeMap::new();
        p.insert("archive_mode".into(), Value::from("off"));
        p.insert("archive_command".into(), Value::from("cp %p /elsewhere/%f"));
        p.insert("archive_library".into(), Value::from("basic_archive"));
        p.insert("archive_timeout".into(), Value::from(60));
        let conf = render_primary(
            &p,
            Some(&Archiving::Command(
                "/opt/spilo wal-push --socket '/tmp/a b.sock' %p".into(),
            )),
            Some("/opt/spilo wal-fetch --socket '/tmp/a b.sock' %f %p"),
        );
        assert!(
            conf.contains(
                "restore_command = '/opt/spilo wal-fetch --socket ''/tmp/a b.sock'' %f %p'\n"
            ),
            "{conf}"
        );
        assert!(conf.contains("archive_mode = on\n"), "{conf}");
        assert!(
            conf.contains(
                "archive_command = '/opt/spilo wal-push --socket ''/tmp/a b.sock'' %p'\n"
            ),
            "{conf}"
        );
        assert!(!conf.contains("archive_library"), "{conf}");
        assert!(conf.contains("archive_timeout = 60\n"), "{conf}");
        // `always` (a standby cluster whose leader archives) is kept.
        p.insert("archive_mode".into(), Value::from("always"));
        let conf = render_primary(
            &p,
            Some(&Archiving::Command("/opt/spilo wal-push %p".into())),
            None,
        );
        assert!(conf.contains("archive_mode = always\n"), "{conf}");
    }

    #[test]
    fn the_archive_module_replaces_any_archive_command() {
        let mut p = BTreeMap::new();
        p.insert("archive_command".into(), Value::from("cp %p /elsewhere/%f"));
        p.insert("archive_library".into(), Value::from("basic_archive"));
        p.insert(
            "spilo.archive_socket".into(),
            Value::from("/elsewhere.sock"),
        );
        let how = Archiving::Module {
            socket: "/tmp/it's.sock".into(),
            timeout: 65,
        };
        let conf = render_primary(&p, Some(&how), None);
        assert!(conf.contains("archive_mode = on\n"), "{conf}");
        assert!(conf.contains("archive_library = 'spilo'\n"), "{conf}");
        assert!(
            conf.contains("spilo.archive_socket = '/tmp/it''s.sock'\n"),
            "{conf}"
        );
        assert!(conf.contains("spilo.archive_timeout = 65\n"), "{conf}");
        assert!(!conf.contains("archive_command"), "{conf}");
        assert!(!conf.contains("elsewhere"), "{conf}");
    }

    #[test]
    fn pgpass_escapes() {
        let s = render_pgpass(&[("rep", Some("a:b\\c")), ("nopw", None)]);
        assert_eq!(s, "*:*:*:rep:a\\:b\\\\c\n");
    }

    #[test]
    fn initdb_options() {
        let v: Vec<Value> =
            serde_json::from_str(r#"["data-checksums", {"encoding": "UTF8"}]"#).unwrap();
        assert_eq!(
            initdb_args(&v).unwrap(),
            vec!["--data-checksums", "--encoding=UTF8"]
        );
        let bad: Vec<Value> = serde_json::from_str(r#"["pwfile"]"#).unwrap();
        assert!(initdb_args(&bad)
            .unwrap_err()
            .to_string()
            .contains("pwfile"));
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:5432"),
            Some(("127.0.0.1".into(), 5432))
        );
        assert_eq!(split_host_port("[::1]:5432"), Some(("::1".into(), 5432)));
        assert_eq!(split_host_port("nope"), None);
    }
}
