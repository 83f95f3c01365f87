//! Object keys: a cluster's WAL under `{base}/wal_005/`, its base backups under
//! `{base}/basebackups_005/` (WAL-G's names), each WAL file as `{name}.zst`.

/// The WAL directory under a cluster's base prefix.
pub const WAL_DIR: &str = "wal_005";
/// The base backup directory under a cluster's base prefix.
pub const BACKUP_DIR: &str = "basebackups_005";

/// What kind of file PostgreSQL hands to the archiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// A segment (`000000010000000000000001`).
    Segment,
    /// A partial segment left by a promotion (`….partial`).
    Partial,
    /// A timeline history file (`00000002.history`).
    History,
    /// A backup label (`….00000028.backup`).
    BackupLabel,
}

fn hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// Classifies a file name PostgreSQL may archive; `None` for anything else (which is refused
/// before any path is built from it).
pub fn classify(name: &str) -> Option<WalFile> {
    if hex(name, 24) {
        return Some(WalFile::Segment);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return hex(seg, 24).then_some(WalFile::Partial);
    }
    if let Some(tl) = name.strip_suffix(".history") {
        return hex(tl, 8).then_some(WalFile::History);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let (seg, off) = rest.split_once('.')?;
        return (hex(seg, 24) && hex(off, 8)).then_some(WalFile::BackupLabel);
    }
    None
}

/// The timeline a WAL file belongs to (its first 8 hex digits).
pub fn timeline(name: &str) -> Option<u32> {
    u32::from_str_radix(name.get(..8)?, 16).ok()
}

/// The key of a WAL file's object.
pub fn wal_key(base: &str, name: &str) -> String {
    format!("{base}/{WAL_DIR}/{name}.zst")
}

/// The WAL file name of a key under `{base}/wal_005/`, if it is one.
pub fn wal_name(key: &str) -> Option<&str> {
    let file = key.rsplit('/').next()?;
    let name = file.strip_suffix(".zst")?;
    classify(name).map(|_| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(classify("000000010000000000000001"), Some(WalFile::Segment));
        assert_eq!(classify("00000002.history"), Some(WalFile::History));
        assert_eq!(
            classify("000000010000000000000003.partial"),
            Some(WalFile::Partial)
        );
        assert_eq!(
            classify("000000010000000000000002.00000028.backup"),
            Some(WalFile::BackupLabel)
        );
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000g",
            "0000000100000000000000011",
            "000000010000000000000001/",
            "0000002.history",
            "000000010000000000000002.backup",
            "000000010000000000000001.zst",
        ] {
            assert_eq!(classify(bad), None, "{bad}");
        }
        assert_eq!(timeline("0000000A0000000000000001"), Some(10));
        let k = wal_key("spilo/demo/wal/15", "00000002.history");
        assert_eq!(k, "spilo/demo/wal/15/wal_005/00000002.history.zst");
        assert_eq!(wal_name(&k), Some("00000002.history"));
        assert_eq!(wal_name("spilo/demo/wal/15/wal_005/junk.zst"), None);
    }
}
