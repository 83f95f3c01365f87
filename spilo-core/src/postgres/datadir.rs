//! Files in the data directory that the daemon itself reads or writes (besides PostgreSQL's
//! configuration, see [`super::ctl`]): the timeline history PostgreSQL leaves in `pg_wal`, and
//! the state file the SQL extension reads. The HA loop (`ha/`) does no filesystem IO of its own;
//! it comes here.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

/// `pg_wal/<tl>.history` of `data_dir`: its text and when it was written.
pub fn read_timeline_history(
    data_dir: &Path,
    timeline: u64,
) -> std::io::Result<(String, Option<SystemTime>)> {
    let path = data_dir
        .join("pg_wal")
        .join(format!("{timeline:08X}.history"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    Ok((text, written))
}

/// Writes `body` to `<data_dir>/<name>` atomically: a temporary file `<name>.tmp`, fsync,
/// rename, fsync of the directory.
pub fn write_atomically(data_dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let path = data_dir.join(name);
    let tmp = data_dir.join(format!("{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Removes the temporary file an interrupted [`write_atomically`] of `name` left behind.
pub fn remove_leftover_temporary(data_dir: &Path, name: &str) {
    let _ = std::fs::remove_file(data_dir.join(format!("{name}.tmp")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_and_atomic_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pg_wal")).unwrap();
        std::fs::write(
            dir.path().join("pg_wal/0000000A.history"),
            "9\t0/5000000\tno recovery target specified\n",
        )
        .unwrap();
        let (text, written) = read_timeline_history(dir.path(), 10).unwrap();
        assert!(text.starts_with("9\t0/5000000"));
        assert!(written.is_some());
        let err = read_timeline_history(dir.path(), 11).unwrap_err();
        assert!(err.to_string().contains("0000000B.history"), "{err}");

        write_atomically(dir.path(), "f", b"one").unwrap();
        write_atomically(dir.path(), "f", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"two");
        std::fs::write(dir.path().join("f.tmp"), b"left").unwrap();
        remove_leftover_temporary(dir.path(), "f");
        assert!(!dir.path().join("f.tmp").exists());
    }
}
