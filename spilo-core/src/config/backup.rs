//! `storage:` (where WAL and base backups go) and `backup:` (how: compression, schedule,
//! retention, the archiver's limits). Spilo's own sections; Patroni has neither.
//!
//! ```yaml
//! storage:
//!   type: s3                 # fs | s3 | the name of a storage plugin
//!   bucket: my-backups
//!   region: eu-central-1
//!   # endpoint: http://127.0.0.1:9000   (path-style addressing unless force_path_style: false)
//!   # sse: aws:kms
//!   # sse_kms_key_id: arn:aws:kms:…
//! backup:
//!   schedule: "0 1 * * *"
//!   compression_level: 3
//!   archive:
//!     timeout: 60
//! ```
//!
//! Keys are laid out as Spilo lays them out: everything of one cluster lives under
//! `spilo/{scope_prefix}{scope}{scope_suffix}/wal/{PostgreSQL major}/` (or under `prefix` when
//! it is set), WAL segments in `wal_005/`, base backups in `basebackups_005/`, as WAL-G names
//! them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::KeyProblem;

/// The backends built into spilo; any other `type` names a storage plugin.
pub const BUILTIN_STORAGE: &[&str] = &["fs", "s3"];

/// `storage:`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StorageConfig {
    /// `fs`, `s3`, or the name of a loaded storage plugin.
    #[serde(rename = "type")]
    pub kind: String,
    /// `fs`: the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `s3`: the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The key prefix of this cluster's WAL and backups (replaces Spilo's default layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `s3`: a custom endpoint URL (S3-compatible servers, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: path-style addressing (default: on when `endpoint` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// `s3`: server-side encryption, `AES256` or `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<String>,
    /// `s3`: the KMS key for `sse: aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// Spilo's `WAL_BUCKET_SCOPE_PREFIX`: put before the scope in the default layout.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope_prefix: String,
    /// Spilo's `WAL_BUCKET_SCOPE_SUFFIX`: put after the scope in the default layout.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope_suffix: String,
    /// Everything else: the backend's own settings (`storage_class`, `part_size`, a
    /// plugin's keys), passed on as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

impl StorageConfig {
    /// Where Spilo's layout keeps a cluster's WAL and backups of every PostgreSQL version:
    /// `spilo/{scope_prefix}{scope}{scope_suffix}/wal`.
    pub fn scope_root(&self, scope: &str) -> String {
        format!(
            "spilo/{}{scope}{}/wal",
            self.scope_prefix, self.scope_suffix
        )
    }

    /// The key prefix of a cluster's WAL and backups, without a trailing `/`.
    pub fn base_prefix(&self, scope: &str, pg_major: u32) -> String {
        match &self.prefix {
            Some(p) if !p.trim_matches('/').is_empty() => p.trim_matches('/').to_string(),
            _ => format!("{}/{pg_major}", self.scope_root(scope)),
        }
    }

    /// The settings handed to the backend: every key but `type`, `prefix` and the layout's
    /// scope affixes (spilo builds whole keys itself).
    pub fn backend_settings(&self) -> Value {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put(
            "path",
            self.path.as_ref().map(|p| p.display().to_string().into()),
        );
        put("bucket", self.bucket.clone().map(Value::from));
        put("endpoint", self.endpoint.clone().map(Value::from));
        put("region", self.region.clone().map(Value::from));
        put("force_path_style", self.force_path_style.map(Value::from));
        put("sse", self.sse.clone().map(Value::from));
        put(
            "sse_kms_key_id",
            self.sse_kms_key_id.clone().map(Value::from),
        );
        for (k, v) in &self.other {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// `backup:`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// When base backups run (cron: minute hour day-of-month month day-of-week, UTC); empty
    /// for none. Spilo's default.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// When the restore drill runs (cron, UTC; empty: never): a streaming replica (else the
    /// leader) restores the newest backup into a scratch directory, starts it and reads every
    /// relation; the result is a metric.
    #[serde(default)]
    pub verify_schedule: String,
    /// zstd level of WAL and backups (1–19).
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// Take scheduled backups from a replica rather than the primary.
    #[serde(default)]
    pub from_replica: bool,
    /// Uploads in flight at once (WAL segments ahead of PostgreSQL, backup parts).
    #[serde(default = "default_concurrency")]
    pub upload_concurrency: u32,
    /// What to keep.
    #[serde(default)]
    pub retain: Retain,
    /// The WAL archiver.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// Client-side encryption of WAL and backups (ChaCha20-Poly1305).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// `backup.encryption`: where the 256-bit key is (64 hex digits or base64 of 32 bytes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// A file holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// An environment variable holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_env: Option<String>,
}

/// Why the `backup.encryption` key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Both or neither of `key_file` and `key_env`.
    #[error("backup.encryption: give exactly one of key_file and key_env")]
    NotExactlyOne,
    /// The key file cannot be read.
    #[error("backup.encryption.key_file {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeyFileError,
    },
    /// The variable is not set (or not Unicode).
    #[error("backup.encryption.key_env: {var} is not set")]
    Env {
        /// The variable.
        var: String,
        /// Why.
        #[source]
        source: std::env::VarError,
    },
    /// An `aws:kms:` value KMS did not open.
    #[error(transparent)]
    Kms(#[from] crate::secret::SecretError),
    /// Not a key.
    #[error(transparent)]
    Key(#[from] crate::backup::crypt::CryptError),
}

/// Why a key file's text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Opening or reading it failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// Too large to be a key.
    #[error("larger than {0} KiB: not a key")]
    TooLarge(u64),
}

/// A `backup.retain.pitr_window` that is not a window.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not a number followed by d, h or m (or too large to count in seconds).
    #[error("'{0}' is not a window such as 7d, 36h or 90m")]
    NotAWindow(String),
    /// Zero, or more than 100 years.
    #[error("'{0}' must be between 1 minute and 100 years")]
    OutOfRange(String),
}

impl EncryptionConfig {
    /// Reads the key. A value written `aws:kms:<base64>` is opened with KMS as every secret of
    /// `cfg` is (`aws.region`, else `storage.region`, else AWS's chain; the instance role from
    /// `aws.imds_endpoint`) and may hold the key's text or 32 raw bytes (a KMS data key, as
    /// `spiloctl aws kms generate-key` makes).
    pub async fn load(
        &self,
        cfg: &super::model::Config,
    ) -> Result<crate::backup::crypt::SecretKey, KeyError> {
        use crate::backup::crypt::SecretKey;
        let (text, origin, place) = match (&self.key_file, &self.key_env) {
            (Some(f), None) => (
                read_small(f).map_err(|source| KeyError::File {
                    path: f.clone(),
                    source,
                })?,
                f.display().to_string(),
                format!("backup.encryption.key_file {}", f.display()),
            ),
            (None, Some(v)) => (
                std::env::var(v).map_err(|source| KeyError::Env {
                    var: v.clone(),
                    source,
                })?,
                v.clone(),
                format!("backup.encryption.key_env {v}"),
            ),
            _ => return Err(KeyError::NotExactlyOne),
        };
        if crate::secret::is_secret(&text) {
            let plain = crate::secret::open_bytes(&text, &place, cfg).await?;
            return Ok(SecretKey::from_opened(&plain, &place)?);
        }
        Ok(SecretKey::parse(&text, &origin)?)
    }
}

/// A key file's text, refusing anything larger than a key or a KMS secret could be (a
/// misnamed device or log file).
fn read_small(path: &std::path::Path) -> Result<String, KeyFileError> {
    use std::io::Read as _;
    const MAX: u64 = 64 * 1024;
    let f = std::fs::File::open(path).map_err(KeyFileError::Io)?;
    let mut text = String::new();
    f.take(MAX + 1)
        .read_to_string(&mut text)
        .map_err(KeyFileError::Io)?;
    if text.len() as u64 > MAX {
        return Err(KeyFileError::TooLarge(MAX / 1024));
    }
    Ok(text)
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            schedule: default_schedule(),
            verify_schedule: String::new(),
            compression_level: default_level(),
            from_replica: false,
            upload_concurrency: default_concurrency(),
            retain: Retain::default(),
            archive: ArchiveConfig::default(),
            encryption: None,
        }
    }
}

/// `backup.retain`: one meaning per knob; a backup is kept when any rule keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Retain {
    /// Keep the newest N full backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Keep backups younger than this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<u32>,
    /// Keep every point of this window restorable (`7d`, `36h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_window: Option<String>,
}

/// `backup.archive`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Seconds one segment's upload (and one `wal-push`) may take before it fails and
    /// PostgreSQL retries it.
    #[serde(default = "default_archive_timeout")]
    pub timeout: u64,
    /// Segments uploaded ahead of PostgreSQL's requests (0: only what PostgreSQL asks for).
    #[serde(default = "default_readahead")]
    pub readahead: u32,
    /// The daemon's archive socket (default: derived from the data directory, in `/tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Warn (log and `/metrics`) when `pg_wal` grows past this many megabytes; 0: off.
    #[serde(default)]
    pub pg_wal_warning_mb: u64,
    /// How PostgreSQL hands each WAL file to the daemon: `module` (`archive_library =
    /// 'spilo'`, the spilo extension's archive module, in PostgreSQL's archiver process),
    /// `command` (`archive_command = 'spilo wal-push …'`, a process per file), or `auto` (the
    /// module when PostgreSQL 15 has the spilo extension's library, else the command).
    #[serde(default)]
    pub method: ArchiveMethod,
    /// In a standby cluster, its standby leader archives too (`archive_mode = always`), into
    /// this cluster's own prefix: after a promotion its archive reaches back past the
    /// promotion, and backups taken meanwhile can be restored. Its replicas then answer
    /// PostgreSQL's archive requests once the archive holds the same bytes.
    #[serde(default)]
    pub standby_leader: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            timeout: default_archive_timeout(),
            readahead: default_readahead(),
            socket: None,
            pg_wal_warning_mb: 0,
            method: ArchiveMethod::default(),
            standby_leader: false,
        }
    }
}

/// `backup.archive.method`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMethod {
    /// The module when PostgreSQL can load it, else the command.
    #[default]
    Auto,
    /// The spilo extension's archive module (refused at start when PostgreSQL lacks it).
    Module,
    /// `spilo wal-push` as `archive_command`.
    Command,
}

fn default_schedule() -> String {
    "0 1 * * *".into()
}
fn default_level() -> i32 {
    3
}
fn default_concurrency() -> u32 {
    4
}
fn default_archive_timeout() -> u64 {
    60
}
fn default_readahead() -> u32 {
    8
}

/// Checks `storage:` and `backup:`; the error is `(key, message)`.
pub fn check(
    storage: Option<&StorageConfig>,
    backup: Option<&BackupConfig>,
    plugin_names: &[&str],
) -> Result<(), KeyProblem> {
    let err = |k: &str, m: String| Err(KeyProblem::new(k.to_string(), m));
    if let Some(s) = storage {
        match s.kind.as_str() {
            "fs" => match &s.path {
                None => return err("storage.path", "required for type fs".into()),
                Some(p) if !p.is_absolute() => {
                    return err(
                        "storage.path",
                        format!("'{}' must be an absolute path", p.display()),
                    )
                }
                _ => {}
            },
            "s3" => {
                let Some(b) = &s.bucket else {
                    return err("storage.bucket", "required for type s3".into());
                };
                if b.len() < 3 || b.len() > 63 || b.contains('/') || b.trim() != b {
                    return err(
                        "storage.bucket",
                        format!("'{b}' is not a bucket name (3–63 characters, no '/')"),
                    );
                }
                if let Some(e) = &s.endpoint {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return err(
                            "storage.endpoint",
                            format!("'{e}' must be an http:// or https:// URL"),
                        );
                    }
                }
                match s.sse.as_deref() {
                    None | Some("AES256") => {
                        if s.sse_kms_key_id.is_some() {
                            return err(
                                "storage.sse_kms_key_id",
                                "needs sse: aws:kms".to_string(),
                            );
                        }
                    }
                    Some("aws:kms") => {}
                    Some(other) => {
                        return err(
                            "storage.sse",
                            format!("'{other}' is not AES256 or aws:kms"),
                        )
                    }
                }
            }
            other if plugin_names.contains(&other) => {}
            other => {
                return err(
                    "storage.type",
                    format!(
                        "'{other}' is neither a built-in backend ({}) nor a storage plugin listed under plugins",
                        BUILTIN_STORAGE.join(", ")
                    ),
                )
            }
        }
        for k in [&s.scope_prefix, &s.scope_suffix] {
            if k.contains("..") || k.starts_with('/') {
                return err(
                    "storage.scope_prefix",
                    format!("'{k}' must not contain '..' or start with '/'"),
                );
            }
        }
        if let Some(p) = &s.prefix {
            if p.split('/').any(|c| c == "..") {
                return err("storage.prefix", format!("'{p}' must not contain '..'"));
            }
        }
    }
    let Some(b) = backup else { return Ok(()) };
    if storage.is_none() {
        return err(
            "backup",
            "needs a storage: section (where the backups go)".into(),
        );
    }
    if !b.schedule.trim().is_empty() {
        if let Err(e) = crate::backup::schedule::Schedule::parse(&b.schedule) {
            return err("backup.schedule", e.to_string());
        }
    }
    if !b.verify_schedule.trim().is_empty() {
        if let Err(e) = crate::backup::schedule::Schedule::parse(&b.verify_schedule) {
            return err("backup.verify_schedule", e.to_string());
        }
    }
    if !(1..=19).contains(&b.compression_level) {
        return err(
            "backup.compression_level",
            format!("{} is not between 1 and 19", b.compression_level),
        );
    }
    if !(1..=64).contains(&b.upload_concurrency) {
        return err(
            "backup.upload_concurrency",
            format!("{} is not between 1 and 64", b.upload_concurrency),
        );
    }
    if !(1..=3600).contains(&b.archive.timeout) {
        return err(
            "backup.archive.timeout",
            format!("{} seconds is not between 1 and 3600", b.archive.timeout),
        );
    }
    if b.archive.readahead > 256 {
        return err(
            "backup.archive.readahead",
            format!("{} is more than 256 segments", b.archive.readahead),
        );
    }
    if b.archive.pg_wal_warning_mb > 1 << 30 {
        return err(
            "backup.archive.pg_wal_warning_mb",
            format!("{} is absurd", b.archive.pg_wal_warning_mb),
        );
    }
    if let Some(s) = &b.archive.socket {
        if !s.is_absolute() || s.as_os_str().len() > 100 {
            return err(
                "backup.archive.socket",
                format!(
                    "'{}' must be an absolute path of at most 100 bytes",
                    s.display()
                ),
            );
        }
    }
    if let Some(w) = &b.retain.pitr_window {
        if let Err(e) = parse_window(w) {
            return err("backup.retain.pitr_window", e.to_string());
        }
    }
    if let Some(e) = &b.encryption {
        if e.key_file.is_some() == e.key_env.is_some() {
            return err(
                "backup.encryption",
                "give exactly one of key_file and key_env".into(),
            );
        }
        if let Some(f) = &e.key_file {
            if !f.is_absolute() {
                return err(
                    "backup.encryption.key_file",
                    format!("'{}' must be an absolute path", f.display()),
                );
            }
        }
    }
    if b.retain.count == Some(0) {
        return err(
            "backup.retain.count",
            "0 would delete every backup; the newest is always kept (use 1)".into(),
        );
    }
    if b.retain.age.is_some_and(|a| a > 36_500) {
        return err("backup.retain.age", "more than 100 years".into());
    }
    Ok(())
}

/// A window such as `7d`, `36h`, `90m` in seconds.
pub fn parse_window(w: &str) -> Result<u64, WindowError> {
    let w = w.trim();
    let bad = || WindowError::NotAWindow(w.to_string());
    let (num, unit) = w.split_at(w.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if secs == 0 || secs > 100 * 365 * 86_400 {
        return Err(WindowError::OutOfRange(w.to_string()));
    }
    Ok(secs)
}

/// Whether two stores are the same place, however they are written: paths resolved, trailing
/// slashes and endpoints aside (one bucket name is one place as far as this check goes).
pub fn same_place(a: &StorageConfig, b: &StorageConfig) -> bool {
    let place = |s: &StorageConfig| {
        let path = s.path.as_ref().map(|p| {
            std::fs::canonicalize(p).unwrap_or_else(|_| {
                std::path::PathBuf::from(p.display().to_string().trim_end_matches('/'))
            })
        });
        (s.kind.clone(), path, s.bucket.clone())
    };
    place(a) == place(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(path: &str) -> StorageConfig {
        serde_json::from_value(serde_json::json!({"type": "fs", "path": path})).unwrap()
    }

    #[test]
    fn spilo_layout_and_explicit_prefix() {
        let mut s = fs("/b");
        assert_eq!(s.base_prefix("demo", 15), "spilo/demo/wal/15");
        s.scope_prefix = "team-".into();
        s.scope_suffix = "-x".into();
        assert_eq!(s.base_prefix("demo", 15), "spilo/team-demo-x/wal/15");
        s.prefix = Some("/custom/path/".into());
        assert_eq!(s.base_prefix("demo", 15), "custom/path");
    }

    #[test]
    fn bad_sections_name_the_key() {
        let no_path: StorageConfig =
            serde_json::from_value(serde_json::json!({"type": "fs"})).unwrap();
        assert_eq!(
            check(Some(&no_path), None, &[]).unwrap_err().key,
            "storage.path"
        );
        let s3: StorageConfig =
            serde_json::from_value(serde_json::json!({"type": "s3", "bucket": "ab"})).unwrap();
        assert_eq!(
            check(Some(&s3), None, &[]).unwrap_err().key,
            "storage.bucket"
        );
        let odd: StorageConfig =
            serde_json::from_value(serde_json::json!({"type": "ftp"})).unwrap();
        let KeyProblem { key: k, message: m } = check(Some(&odd), None, &[]).unwrap_err();
        assert_eq!(k, "storage.type");
        assert!(m.contains("'ftp'"), "{m}");
        assert!(check(Some(&odd), None, &["ftp"]).is_ok());
        let drill = BackupConfig {
            verify_schedule: "61 * * * *".into(),
            ..BackupConfig::default()
        };
        assert_eq!(
            check(Some(&fs("/b")), Some(&drill), &[]).unwrap_err().key,
            "backup.verify_schedule"
        );
        let b = BackupConfig {
            compression_level: 40,
            ..BackupConfig::default()
        };
        assert_eq!(
            check(Some(&fs("/b")), Some(&b), &[]).unwrap_err().key,
            "backup.compression_level"
        );
        assert_eq!(
            check(None, Some(&BackupConfig::default()), &[])
                .unwrap_err()
                .key,
            "backup"
        );
        let mut b = BackupConfig::default();
        b.archive.timeout = u64::MAX;
        assert_eq!(
            check(Some(&fs("/b")), Some(&b), &[]).unwrap_err().key,
            "backup.archive.timeout"
        );
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("7d"), Ok(7 * 86_400));
        assert_eq!(parse_window("36h"), Ok(36 * 3_600));
        assert!(parse_window("7").is_err());
        assert!(parse_window("d").is_err());
        assert!(parse_window("0d").is_err());
        assert!(parse_window("99999999999999999999d").is_err());
        assert!(parse_window("18446744073709551615d").is_err());
    }
}

/// `bootstrap.clone`: a point-in-time clone of cluster `scope` from its backups and archived WAL
/// (Patroni's shape for a bootstrap method). Exactly one target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CloneConfig {
    /// The source cluster's scope.
    pub scope: String,
    /// Where its backups and WAL are (the form of the top-level `storage:`); default: this
    /// cluster's own `storage:` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageConfig>,
    /// Recover to this time (with a time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    /// Recover to this WAL position (`0/3000028`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
    /// Recover to this restore point (`pg_create_restore_point`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
    /// Recover to this transaction id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_xid: Option<u64>,
    /// Recover only until the backup is consistent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub target_immediate: bool,
    /// `latest` (the default), `current`, or a timeline number.
    #[serde(default = "latest")]
    pub target_timeline: String,
    /// Stop just after the target (the default) or just before it.
    #[serde(default = "yes")]
    pub inclusive: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn latest() -> String {
    "latest".into()
}

fn yes() -> bool {
    true
}

/// Where a clone's recovery stops.
#[derive(Clone, Debug, PartialEq)]
pub enum CloneTarget {
    /// A time.
    Time(chrono::DateTime<chrono::FixedOffset>),
    /// A WAL position.
    Lsn(u64),
    /// A restore point.
    Name(String),
    /// A transaction.
    Xid(u64),
    /// The end of the backup.
    Immediate,
}

impl CloneConfig {
    /// The one target, checked.
    pub fn target(&self) -> Result<CloneTarget, KeyProblem> {
        let key = |k: &str| format!("bootstrap.clone.{k}");
        let given = [
            self.target_time.is_some(),
            self.target_lsn.is_some(),
            self.target_name.is_some(),
            self.target_xid.is_some(),
            self.target_immediate,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(KeyProblem::new(
                "bootstrap.clone",
                format!(
                    "give exactly one of target_time, target_lsn, target_name, target_xid, \
                     target_immediate ({given} given)"
                ),
            ));
        }
        if let Some(t) = &self.target_time {
            return match crate::timestamp::parse_timestamp(t) {
                Ok(ts) => Ok(CloneTarget::Time(ts)),
                Err(crate::timestamp::TimestampError::NoTimezone) => Err(KeyProblem::new(
                    key("target_time"),
                    format!("'{t}' has no time zone (write it as 2026-12-04T10:00:00+00:00)"),
                )),
                Err(_) => Err(KeyProblem::new(
                    key("target_time"),
                    format!("'{t}' is not a timestamp"),
                )),
            };
        }
        if let Some(l) = &self.target_lsn {
            return crate::dcs::codec::parse_lsn(l)
                .map(CloneTarget::Lsn)
                .ok_or_else(|| {
                    KeyProblem::new(
                        key("target_lsn"),
                        format!("'{l}' is not a WAL position like 0/3000028"),
                    )
                });
        }
        if let Some(n) = &self.target_name {
            if n.is_empty() || n.len() > 63 || n.contains(['\n', '\r', '\0']) {
                return Err(KeyProblem::new(
                    key("target_name"),
                    "not a restore point name",
                ));
            }
            return Ok(CloneTarget::Name(n.clone()));
        }
        if let Some(x) = self.target_xid {
            return Ok(CloneTarget::Xid(x));
        }
        Ok(CloneTarget::Immediate)
    }

    /// Checks the section; `own` is this cluster's storage and scope.
    pub fn check(&self, own: Option<&StorageConfig>, own_scope: &str) -> Result<(), KeyProblem> {
        if self.scope.trim().is_empty() || self.scope.contains(['/', '\n']) {
            return Err(KeyProblem::new(
                "bootstrap.clone.scope",
                format!("'{}' is not a scope", self.scope),
            ));
        }
        self.target()?;
        let tl = self.target_timeline.as_str();
        if tl != "latest" && tl != "current" && tl.parse::<u32>().map_or(true, |n| n == 0) {
            return Err(KeyProblem::new(
                "bootstrap.clone.target_timeline",
                format!("'{tl}' is not latest, current or a timeline number"),
            ));
        }
        let Some(own) = own else {
            return Err(KeyProblem::new(
                "bootstrap.clone",
                "a clone needs this cluster's own storage: section (it archives there, never into the source's)",
            ));
        };
        let source = self.storage.as_ref().unwrap_or(own);
        if same_place(source, own)
            && source.base_prefix(&self.scope, 0) == own.base_prefix(own_scope, 0)
        {
            return Err(KeyProblem::new(
                "bootstrap.clone.scope",
                format!(
                    "the source '{}' resolves to this cluster's own prefix {}: a clone would write into its source",
                    self.scope,
                    own.base_prefix(own_scope, 0)
                ),
            ));
        }
        Ok(())
    }
}
