//! What every command shares: the context (config, DCS, REST credentials), the error type,
//! confirmations and prompts, member selection and time parsing.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};

use hyper::Method;

use super::http::{endpoint_url, request_json, HttpError, Response};
use crate::config::{BasicAuth, Config};
use crate::dcs::{decode_cluster, Cluster, Dcs, Member};

/// A failed command. The message is printed as `spiloctl: <message>` and the exit code is 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError(pub String);

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CtlError {}

impl From<String> for CtlError {
    fn from(s: String) -> Self {
        CtlError(s)
    }
}

impl From<&str> for CtlError {
    fn from(s: &str) -> Self {
        CtlError(s.to_string())
    }
}

/// A command's result.
pub type CtlResult<T = ()> = Result<T, CtlError>;

/// Shorthand for an error result.
pub fn fail<T>(msg: impl Into<String>) -> CtlResult<T> {
    Err(CtlError(msg.into()))
}

/// Questions to the user. Without a terminal on stdin nothing is asked: confirmations count
/// as "no" (unless forced) and prompts take their default.
#[derive(Clone, Copy, Debug)]
pub struct Console {
    /// stdin is a terminal.
    pub interactive: bool,
}

impl Console {
    /// Asks only when stdin is a terminal.
    pub fn detect() -> Console {
        Console {
            interactive: std::io::stdin().is_terminal(),
        }
    }

    fn read_line(&self, prompt: &str) -> CtlResult<Option<String>> {
        if !self.interactive {
            return Ok(None);
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{prompt}");
        let _ = out.flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(line.trim().to_string())),
            Err(e) => fail(format!("cannot read the answer from stdin: {e}")),
        }
    }

    /// `question [y/N]`; `Ok(())` when forced or answered yes, else an "Aborted" error.
    pub fn confirm(&self, question: &str, force: bool) -> CtlResult {
        if force {
            return Ok(());
        }
        if !self.interactive {
            return fail(format!(
                "not confirmed (\"{question}\"): stdin is not a terminal; add --force to \
                 proceed without asking"
            ));
        }
        match self.read_line(&format!("{question} [y/N]: "))? {
            Some(a) if is_yes(&a) => Ok(()),
            _ => fail("Aborted"),
        }
    }

    /// `question [default]: `; the answer, or `default` when empty or not interactive.
    pub fn ask(&self, question: &str, default: &str) -> CtlResult<String> {
        match self.read_line(&format!("{question} [{default}]: "))? {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Ok(default.to_string()),
        }
    }
}

/// `y`/`yes` in any case.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Everything a command needs.
pub struct Ctx {
    /// The node configuration file's contents.
    pub cfg: Config,
    /// The cluster's keys.
    pub dcs: Arc<dyn Dcs>,
    /// Basic auth for mutating REST calls.
    pub auth: Option<BasicAuth>,
    /// The user.
    pub console: Console,
}

impl Ctx {
    /// A fresh read of the cluster.
    pub async fn cluster(&self) -> CtlResult<Cluster> {
        let snap = self
            .dcs
            .snapshot()
            .await
            .map_err(|e| CtlError(format!("cannot read the cluster from the DCS: {e}")))?;
        Ok(decode_cluster(&snap))
    }

    /// The cluster's name.
    pub fn scope(&self) -> &str {
        &self.cfg.scope
    }

    /// `method <member's api_url with path /endpoint>` with `body`, Basic auth and `timeout`.
    pub async fn rest(
        &self,
        member: &Member,
        method: Method,
        endpoint: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let url = endpoint_url(&member.data.api_url, endpoint)?;
        request_json(method, &url, body, self.auth.as_ref(), timeout).await
    }
}

/// REST credentials: `ctl.authentication` from the raw file, else `restapi.authentication`.
pub fn rest_auth(raw_yaml: &str, cfg: &Config) -> Option<BasicAuth> {
    ctl_auth(raw_yaml).or_else(|| cfg.restapi.authentication.clone())
}

/// `ctl.authentication.{username,password}` of a YAML document, if both are strings.
pub fn ctl_auth(raw_yaml: &str) -> Option<BasicAuth> {
    let doc: serde_yaml::Value = serde_yaml::from_str(raw_yaml).ok()?;
    let a = doc.get("ctl")?.get("authentication")?;
    Some(BasicAuth {
        username: a.get("username")?.as_str()?.to_string(),
        password: a.get("password")?.as_str()?.to_string(),
    })
}

/// Read the raw configuration file for [`rest_auth`] (an unreadable file yields "").
pub fn read_raw(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The default configuration file: `~/.config/patroni/patronictl.yaml`, as patronictl.
pub fn default_config_path() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".config/patroni/patronictl.yaml")
}

/// Why spiloctl's configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CtlConfigError {
    /// A node configuration (or a file that is not a client-only one) with a mistake.
    #[error("{0}")]
    Node(#[source] crate::config::ConfigError),
    /// A client-only file with a mistake.
    #[error("{}: {source}", path.display())]
    Client {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ClientConfigError,
    },
}

/// What is wrong with a client-only configuration document.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// No `scope`.
    #[error("scope: missing required key")]
    NoScope,
    /// No `etcd3` section.
    #[error("etcd3: missing required section (the DCS to read)")]
    NoEtcd3,
    /// A section that does not convert (or the result is not a configuration).
    #[error("{0}")]
    Convert(#[source] serde_json::Error),
}

/// The configuration for spiloctl: a node's full configuration file, or a client-only file
/// as patronictl takes (`scope`, `namespace`, `etcd3`, `ctl`, optionally `restapi`), which
/// gets placeholders for the node-only sections.
pub fn load_config(path: &Path) -> Result<Config, CtlConfigError> {
    let full = match crate::config::load_file(path) {
        Ok(l) => return Ok(l.config),
        Err(e) => e,
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Err(CtlConfigError::Node(full));
    };
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
        return Err(CtlConfigError::Node(full));
    };
    if doc.get("postgresql").is_some() || !doc.is_mapping() {
        // A node configuration with a mistake: its own error says what.
        return Err(CtlConfigError::Node(full));
    }
    client_config(&doc).map_err(|source| CtlConfigError::Client {
        path: path.to_path_buf(),
        source,
    })
}

/// A [`Config`] from a client-only document (see [`load_config`]).
pub fn client_config(doc: &serde_yaml::Value) -> Result<Config, ClientConfigError> {
    let scope = doc
        .get("scope")
        .and_then(serde_yaml::Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or(ClientConfigError::NoScope)?;
    let etcd3 = doc
        .get("etcd3")
        .filter(|v| v.is_mapping())
        .ok_or(ClientConfigError::NoEtcd3)?;
    let to_json =
        |v: &serde_yaml::Value| serde_json::to_value(v).map_err(ClientConfigError::Convert);
    let mut restapi = serde_json::json!({
        "listen": "127.0.0.1:8008",
        "connect_address": "127.0.0.1:8008",
    });
    if let Some(a) = doc.get("restapi").and_then(|r| r.get("authentication")) {
        restapi["authentication"] = to_json(a)?;
    }
    let mut cfg = serde_json::json!({
        "scope": scope,
        "name": doc.get("name").and_then(serde_yaml::Value::as_str).unwrap_or(scope),
        "restapi": restapi,
        "etcd3": to_json(etcd3)?,
        "postgresql": {
            "listen": "127.0.0.1:5432",
            "connect_address": "127.0.0.1:5432",
            "data_dir": "/nonexistent",
            "authentication": {"superuser": {"username": "postgres"},
                               "replication": {"username": "replicator"}},
        },
    });
    if let Some(ns) = doc.get("namespace").and_then(serde_yaml::Value::as_str) {
        cfg["namespace"] = ns.into();
    }
    serde_json::from_value(cfg).map_err(ClientConfigError::Convert)
}

/// Which members a command acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleFilter {
    /// The leader (primary or standby leader).
    Leader,
    /// The leader of a cluster that is not a standby cluster.
    Primary,
    /// The leader of a standby cluster.
    StandbyLeader,
    /// Every member but the leader.
    Replica,
    /// Every member but the leader (alias of replica).
    Standby,
    /// Every member.
    Any,
}

impl RoleFilter {
    /// The `role` filter for `POST /restart`, when the filter maps to one.
    pub fn restart_role(self) -> Option<&'static str> {
        match self {
            RoleFilter::Primary => Some("primary"),
            RoleFilter::StandbyLeader => Some("standby_leader"),
            RoleFilter::Replica | RoleFilter::Standby => Some("replica"),
            RoleFilter::Leader | RoleFilter::Any => None,
        }
    }
}

/// True when the `config` key says this is a standby cluster.
pub fn is_standby_cluster(c: &Cluster) -> bool {
    c.config_raw
        .as_ref()
        .and_then(|v| v.value.get("standby_cluster"))
        .is_some_and(|s| s.as_object().is_some_and(|o| !o.is_empty()))
}

/// The members called `names` (all members when empty) that pass `role`, in the cluster's
/// order. An unknown name is an error that lists the known ones.
pub fn select_members<'a>(
    c: &'a Cluster,
    names: &[String],
    role: RoleFilter,
) -> CtlResult<Vec<&'a Member>> {
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| c.member(n).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = c.members.iter().map(|m| m.name.as_str()).collect();
        return fail(format!(
            "unknown member{} {}; the cluster's members are: {}",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let standby = is_standby_cluster(c);
    let picked: Vec<&Member> = c
        .members
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .filter(|m| {
            let is_leader = Some(m.name.as_str()) == leader;
            match role {
                RoleFilter::Any => true,
                RoleFilter::Leader => is_leader,
                RoleFilter::Primary => is_leader && !standby,
                RoleFilter::StandbyLeader => is_leader && standby,
                RoleFilter::Replica | RoleFilter::Standby => !is_leader,
            }
        })
        .collect();
    Ok(picked)
}

/// The names of `members`, comma-joined.
pub fn names(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time given on the command line (`2024-05-01T14:30`, `2024-05-01 14:30:00+02:00`, RFC 3339)
/// as RFC 3339; `now` or empty means "not scheduled". A time without an offset is local time.
/// The time must be after `now`.
pub fn parse_schedule(s: &str, now: DateTime<FixedOffset>) -> CtlResult<Option<String>> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("now") {
        return Ok(None);
    }
    let t = parse_time(s).ok_or_else(|| {
        CtlError(format!(
            "invalid time {s:?}: expected e.g. 2024-05-01T14:30 or 2024-05-01T14:30:00+02:00"
        ))
    })?;
    if t <= now {
        return fail(format!("the scheduled time {s} is in the past"));
    }
    Ok(Some(t.to_rfc3339()))
}

fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    let norm = s.replacen(' ', "T", 1);
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M:%S%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(&norm, f) {
            return Some(t);
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&norm, f) {
            return Local
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.fixed_offset());
        }
    }
    None
}

/// Now, with the local offset.
pub fn now() -> DateTime<FixedOffset> {
    Local::now().fixed_offset()
}

/// `loop_wait` of the dynamic configuration (10 without one).
pub fn loop_wait(c: &Cluster) -> u64 {
    c.config.as_ref().map(|v| v.value.loop_wait).unwrap_or(10)
}

/// The REST timeout for quick calls.
pub const REST_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of an answer as one line of text: a JSON string unquoted, else the trimmed text.
pub fn answer_text(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::String(s)) => s,
        _ => body.trim().to_string(),
    }
}

/// A runtime for one command (its error printed, exit 1).
pub fn runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("spiloctl: {e}");
            std::process::ExitCode::from(1)
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::dcs::{Leader, MemberData, Versioned};

    pub(crate) use crate::dcs::memory::MemDcs;

    /// A non-interactive context over `dcs`.
    pub(crate) fn ctx(dcs: Arc<MemDcs>) -> Ctx {
        let cfg: Config = serde_yaml::from_str(
            "scope: s\nname: n1\nrestapi: {listen: '127.0.0.1:8008', connect_address: '127.0.0.1:8008'}\n\
             postgresql:\n  listen: '127.0.0.1:5432'\n  connect_address: '127.0.0.1:5432'\n  data_dir: /tmp/d\n\
             \x20 authentication: {superuser: {username: postgres}, replication: {username: repl}}\n",
        )
        .unwrap();
        Ctx {
            cfg,
            dcs,
            auth: None,
            console: Console { interactive: false },
        }
    }

    /// An `http://` URL on which nothing listens.
    pub(crate) fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/patroni")
    }

    /// A cluster with `names` as members and `leader` holding the lock.
    pub(crate) fn cluster(names: &[&str], leader: Option<&str>) -> Cluster {
        Cluster {
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: 7,
                owned_by_us: false,
                term: None,
            }),
            members: names
                .iter()
                .map(|n| Member {
                    name: n.to_string(),
                    data: MemberData {
                        api_url: format!("http://127.0.0.1:8008/{n}"),
                        state: "running".into(),
                        ..MemberData::default()
                    },
                    version: 1,
                    owned_by_us: false,
                })
                .collect(),
            ..Cluster::default()
        }
    }

    #[test]
    fn member_selection_and_roles() {
        let c = cluster(&["a", "b", "c"], Some("b"));
        let sel = |n: &[&str], r| {
            let n: Vec<String> = n.iter().map(|s| s.to_string()).collect();
            select_members(&c, &n, r).map(|v| names(&v))
        };
        assert_eq!(sel(&[], RoleFilter::Any).unwrap(), "a, b, c");
        assert_eq!(sel(&[], RoleFilter::Leader).unwrap(), "b");
        assert_eq!(sel(&[], RoleFilter::Primary).unwrap(), "b");
        assert_eq!(sel(&[], RoleFilter::StandbyLeader).unwrap(), "");
        assert_eq!(sel(&[], RoleFilter::Replica).unwrap(), "a, c");
        assert_eq!(sel(&["c", "b"], RoleFilter::Standby).unwrap(), "c");
        let err = sel(&["x", "a", "y"], RoleFilter::Any).unwrap_err();
        assert_eq!(
            err.0,
            "unknown members x, y; the cluster's members are: a, b, c"
        );

        let mut standby = c.clone();
        standby.config_raw = Some(Versioned {
            value: json!({"standby_cluster": {"host": "h"}}),
            version: 1,
        });
        let v = select_members(&standby, &[], RoleFilter::StandbyLeader).unwrap();
        assert_eq!(names(&v), "b");
        assert!(select_members(&standby, &[], RoleFilter::Primary)
            .unwrap()
            .is_empty());
        assert_eq!(RoleFilter::Standby.restart_role(), Some("replica"));
        assert_eq!(RoleFilter::Leader.restart_role(), None);
    }

    #[test]
    fn schedules() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00+00:00").unwrap();
        assert_eq!(parse_schedule("now", now).unwrap(), None);
        assert_eq!(parse_schedule("  ", now).unwrap(), None);
        assert_eq!(
            parse_schedule("2024-05-01T14:30:00+02:00", now).unwrap(),
            Some("2024-05-01T14:30:00+02:00".into())
        );
        assert_eq!(
            parse_schedule("2024-05-01 13:00+00:00", now).unwrap(),
            Some("2024-05-01T13:00:00+00:00".into())
        );
        assert!(parse_schedule("2024-05-01T11:00:00Z", now)
            .unwrap_err()
            .0
            .contains("in the past"));
        assert!(parse_schedule("tomorrow", now)
            .unwrap_err()
            .0
            .contains("invalid time"));
        // Without an offset: local time, in the future relative to a far past "now".
        let past = DateTime::parse_from_rfc3339("2000-01-01T00:00:00+00:00").unwrap();
        let t = parse_schedule("2030-01-02T03:04", past).unwrap().unwrap();
        assert!(t.starts_with("2030-01-02T03:04:00"), "{t}");
    }

    #[test]
    fn client_only_configs() {
        let doc: serde_yaml::Value = serde_yaml::from_str(
            "scope: demo\nnamespace: /svc\netcd3: {hosts: '127.0.0.1:2379'}\n\
             ctl: {authentication: {username: u, password: p}}\n",
        )
        .unwrap();
        let c = client_config(&doc).unwrap();
        assert_eq!((c.scope.as_str(), c.name.as_str()), ("demo", "demo"));
        assert_eq!(c.namespace, "/svc");
        assert_eq!(c.etcd3.unwrap().endpoints(), vec!["127.0.0.1:2379"]);
        assert!(c.restapi.authentication.is_none());
        let doc: serde_yaml::Value = serde_yaml::from_str(
            "scope: demo\netcd3: {host: 'h:1'}\nrestapi: {authentication: {username: a, password: b}}\n",
        )
        .unwrap();
        let c = client_config(&doc).unwrap();
        assert_eq!(c.namespace, crate::config::DEFAULT_NAMESPACE);
        assert_eq!(c.restapi.authentication.unwrap().username, "a");
        let no_scope: serde_yaml::Value = serde_yaml::from_str("etcd3: {host: 'h:1'}").unwrap();
        assert!(client_config(&no_scope)
            .unwrap_err()
            .to_string()
            .contains("scope"));
        let no_dcs: serde_yaml::Value = serde_yaml::from_str("scope: x").unwrap();
        assert!(client_config(&no_dcs)
            .unwrap_err()
            .to_string()
            .contains("etcd3"));
        assert!(default_config_path().ends_with(".config/patroni/patronictl.yaml"));
    }

    #[test]
    fn answers_and_auth() {
        assert!(is_yes("Y") && is_yes(" yes ") && !is_yes("") && !is_yes("n"));
        assert_eq!(answer_text("\"quoted\"\n"), "quoted");
        assert_eq!(answer_text(" plain text \n"), "plain text");
        assert_eq!(answer_text("{\"a\":1}"), "{\"a\":1}");
        let a = ctl_auth("ctl:\n  authentication:\n    username: u\n    password: p\n").unwrap();
        assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p"));
        assert!(ctl_auth("ctl: {}\n").is_none());
        assert!(ctl_auth("not: [valid").is_none());
        let c = Console { interactive: false };
        assert!(c.confirm("Sure?", true).is_ok());
        assert!(c.confirm("Sure?", false).unwrap_err().0.contains("--force"));
        assert_eq!(c.ask("Q", "dflt").unwrap(), "dflt");
    }
}
