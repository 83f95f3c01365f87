//! The catalog: what is stored for a cluster (complete backups by their manifests, archived WAL
//! files), the point-in-time window they cover, and retention — which backups and WAL files
//! the rules keep ([`plan_retention`], pure) and deleting the rest ([`prune`]).

use std::collections::BTreeSet;

use serde::Serialize;
use spilo_sdk::storage::{get_all, Storage, StorageError};

use super::base::{sentinel_key, Manifest};
use super::layout::{self, BACKUP_DIR, WAL_DIR};
use crate::config::backup::Retain;

/// A stored object that is not what it should be (a manifest that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// Lists every key under `prefix/` with its size.
pub async fn list_all(s: &dyn Storage, prefix: &str) -> Result<Vec<(String, u64)>, StorageError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list(&format!("{prefix}/"), after.as_deref(), 1000)
            .await?;
        let last = page.objects.last().map(|(k, _)| k.clone());
        out.extend(page.objects);
        match (page.more, last) {
            (true, Some(l)) => after = Some(l),
            _ => return Ok(out),
        }
    }
}

/// The complete backups (those with a manifest), oldest first, and the manifests that could
/// not be read.
pub async fn backups(
    s: &dyn Storage,
    base: &str,
) -> Result<(Vec<Manifest>, Vec<Problem>), StorageError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (key, size) in list_all(s, &format!("{base}/{BACKUP_DIR}")).await? {
        if !key.ends_with("_backup_stop_sentinel.json") {
            continue;
        }
        if size > 1 << 20 {
            problems.push(Problem {
                key,
                problem: format!("{size} bytes is too large for a manifest"),
            });
            continue;
        }
        let body = get_all(s, &key, 1 << 16).await?;
        match serde_json::from_slice::<Manifest>(&body) {
            Ok(m) => out.push(m),
            Err(e) => problems.push(Problem {
                key,
                problem: format!("not a spilo backup manifest: {e}"),
            }),
        }
    }
    out.sort_by_key(|m| (m.start(), m.start_time.clone()));
    Ok((out, problems))
}

/// One archived WAL file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalEntry {
    /// Its name.
    pub name: String,
    /// Bytes stored.
    pub size: u64,
}

/// The archived WAL files, by name.
pub async fn wal(s: &dyn Storage, base: &str) -> Result<Vec<WalEntry>, StorageError> {
    let mut out: Vec<WalEntry> = list_all(s, &format!("{base}/{WAL_DIR}"))
        .await?
        .into_iter()
        .filter_map(|(k, size)| {
            layout::wal_name(&k).map(|n| WalEntry {
                name: n.to_string(),
                size,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A segment's position on its timeline (the last 16 hex digits), if it is a segment.
fn position(name: &str) -> Option<u64> {
    let seg = name.get(..24)?;
    if layout::classify(seg) != Some(layout::WalFile::Segment) {
        return None;
    }
    let log = u64::from_str_radix(&seg[8..16], 16).ok()?;
    let s = u64::from_str_radix(&seg[16..24], 16).ok()?;
    Some((log << 8) | s)
}

/// The segment position holding `lsn` (16 MiB segments).
fn lsn_position(lsn: u64) -> u64 {
    ((lsn >> 32) << 8) | ((lsn & 0xffff_ffff) >> 24)
}

/// From the oldest restorable point to the newest archived WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The oldest backup whose WAL up to its stop point is all archived: its finish time.
    pub from_time: String,
    /// Its stop position.
    pub from_lsn: String,
    /// The backup.
    pub from_backup: String,
    /// The last WAL segment of the unbroken run after the newest usable backup.
    pub to_segment: String,
    /// The position at the end of that segment.
    pub to_lsn: String,
}

/// The point-in-time window of `backups` over `wal` (`None`: nothing restorable).
pub fn window(backups: &[Manifest], wal: &[WalEntry]) -> Option<Window> {
    let have: BTreeSet<(u32, u64)> = wal
        .iter()
        .filter_map(|w| Some((layout::timeline(&w.name)?, position(&w.name)?)))
        .collect();
    // Every segment from the start to the stop point, on the backup's timeline.
    let usable = |m: &Manifest| {
        (lsn_position(m.start())..=lsn_position(m.stop())).all(|p| have.contains(&(m.timeline, p)))
    };
    let oldest = backups.iter().find(|m| usable(m))?;
    let newest = backups.iter().rev().find(|m| usable(m))?;
    // Follow the run of segments from the newest usable backup, across later timelines.
    let mut tl = newest.timeline;
    let mut pos = lsn_position(newest.stop());
    loop {
        if have.contains(&(tl, pos + 1)) {
            pos += 1;
        } else if let Some(next) = have
            .iter()
            .filter(|(t, p)| *t > tl && *p == pos + 1)
            .map(|(t, _)| *t)
            .min()
        {
            tl = next;
            pos += 1;
        } else {
            break;
        }
    }
    let end = ((pos >> 8) << 32) | (((pos & 0xff) + 1) << 24);
    Some(Window {
        from_time: oldest.finish_time.clone(),
        from_lsn: oldest.stop_lsn.clone(),
        from_backup: oldest.name.clone(),
        to_segment: format!("{tl:08X}{:08X}{:08X}", pos >> 8, pos & 0xff),
        to_lsn: crate::dcs::codec::format_lsn(end),
    })
}

/// What retention keeps and deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    /// Backups kept, oldest first.
    pub keep: Vec<String>,
    /// Backups to delete.
    pub delete: Vec<String>,
    /// WAL files to delete (older than every kept backup's start).
    pub delete_wal: Vec<String>,
}

/// The retention rules applied to `backups` (oldest first) at `now`. A backup is kept when any
/// rule keeps it; the newest is always kept; without any rule nothing is deleted. WAL segments
/// are deleted only below the start of the oldest kept backup (whatever their timeline);
/// history files are never deleted.
pub fn plan_retention(
    backups: &[Manifest],
    wal: &[WalEntry],
    rules: &Retain,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<RetentionPlan, crate::config::backup::WindowError> {
    let n = backups.len();
    let mut keep = vec![false; n];
    let any_rule = rules.count.is_some() || rules.age.is_some() || rules.pitr_window.is_some();
    if !any_rule || n == 0 {
        return Ok(RetentionPlan {
            keep: backups.iter().map(|m| m.name.clone()).collect(),
            delete: Vec::new(),
            delete_wal: Vec::new(),
        });
    }
    keep[n - 1] = true;
    if let Some(c) = rules.count {
        for k in keep.iter_mut().skip(n.saturating_sub(c as usize)) {
            *k = true;
        }
    }
    if let Some(days) = rules.age {
        let limit = now - chrono::Duration::days(i64::from(days));
        for (i, m) in backups.iter().enumerate() {
            // A backup whose time cannot be read is kept: never delete what cannot be judged.
            if m.started().is_none_or(|t| t >= limit) {
                keep[i] = true;
            }
        }
    }
    if let Some(w) = &rules.pitr_window {
        let secs = crate::config::backup::parse_window(w)?;
        let limit = now - chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 2));
        // The newest backup finished at or before the window's start covers its beginning;
        // it and everything after stay. If none is that old, every backup stays.
        let anchor = backups
            .iter()
            .rposition(|m| m.finished().is_some_and(|t| t <= limit))
            .unwrap_or(0);
        for k in keep.iter_mut().skip(anchor) {
            *k = true;
        }
    }
    let oldest_kept = backups
        .iter()
        .zip(&keep)
        .find(|(_, k)| **k)
        .map(|(m, _)| lsn_position(m.start()))
        .unwrap_or(0);
    let delete_wal = wal
        .iter()
        .filter(|w| position(&w.name).is_some_and(|p| p < oldest_kept))
        .map(|w| w.name.clone())
        .collect();
    let (mut kept, mut delete) = (Vec::new(), Vec::new());
    for (m, k) in backups.iter().zip(keep) {
        if k {
            kept.push(m.name.clone());
        } else {
            delete.push(m.name.clone());
        }
    }
    Ok(RetentionPlan {
        keep: kept,
        delete,
        delete_wal,
    })
}

/// Deletes a backup: its manifest first (so it is no longer complete), then its objects.
pub async fn delete_backup(s: &dyn Storage, base: &str, m: &Manifest) -> Result<(), StorageError> {
    match s.delete(&sentinel_key(base, &m.name)).await {
        Ok(()) | Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    for rel in &m.objects {
        // Objects are named relative to the base; refuse anything that leaves the backup's
        // directory (a manifest is read from storage: bad input).
        if !rel.starts_with(&format!("{BACKUP_DIR}/{}/", m.name)) || rel.contains("..") {
            return Err(StorageError::Refused {
                op: "delete",
                message: format!("manifest of {} names an object outside it: {rel}", m.name),
            });
        }
        match s.delete(&format!("{base}/{rel}")).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Applies a plan: deletes its backups, then its WAL files.
pub async fn prune(
    s: &dyn Storage,
    base: &str,
    backups: &[Manifest],
    plan: &RetentionPlan,
) -> Result<(), StorageError> {
    for m in backups.iter().filter(|m| plan.delete.contains(&m.name)) {
        delete_backup(s, base, m).await?;
    }
    for name in &plan.delete_wal {
        match s.delete(&layout::wal_key(base, name)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn manifest(name: &str, tl: u32, start: u64, stop: u64, day: u32) -> Manifest {
        Manifest {
            name: name.into(),
            start_time: format!("2026-12-{day:02}T01:00:00Z"),
            finish_time: format!("2026-12-{day:02}T01:10:00Z"),
            start_lsn: crate::dcs::codec::format_lsn(start),
            stop_lsn: crate::dcs::codec::format_lsn(stop),
            timeline: tl,
            system_identifier: None,
            pg_version: 15,
            size: 1,
            compressed_size: 1,
            duration_secs: 1.0,
            member: "n1".into(),
            from_replica: false,
            sha256: String::new(),
            blake3: String::new(),
            xxh3_128: String::new(),
            objects: vec![format!("{BACKUP_DIR}/{name}/tar_partitions/part_1.tar.zst")],
            format: "tar.zst".into(),
            spilo_version: "0".into(),
        }
    }

    fn seg(tl: u32, pos: u64) -> WalEntry {
        WalEntry {
            name: format!("{tl:08X}{:08X}{:08X}", pos >> 8, pos & 0xff),
            size: 1,
        }
    }

    const MB16: u64 = 1 << 24;

    fn four_backups() -> Vec<Manifest> {
        (1..=4)
            .map(|d| {
                manifest(
                    &format!("b{d}"),
                    1,
                    u64::from(d) * 10 * MB16,
                    u64::from(d) * 10 * MB16 + 100,
                    d,
                )
            })
            .collect()
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    #[test]
    fn one_meaning_per_knob() {
        let b = four_backups();
        let wal: Vec<WalEntry> = (1..50).map(|p| seg(1, p)).collect();
        let none = plan_retention(&b, &wal, &Retain::default(), now()).unwrap();
        assert!(none.delete.is_empty() && none.delete_wal.is_empty());

        let count = Retain {
            count: Some(2),
            ..Retain::default()
        };
        let p = plan_retention(&b, &wal, &count, now()).unwrap();
        assert_eq!(p.keep, ["b3", "b4"]);
        assert_eq!(p.delete, ["b1", "b2"]);
        // WAL below b3's start (position 30) goes; b3's own segments stay.
        assert_eq!(p.delete_wal.len(), 29);
        assert!(!p.delete_wal.contains(&seg(1, 30).name));

        // Age: started within 2 days of Dec 4 12:00 → Dec 3 and Dec 4.
        let age = Retain {
            age: Some(2),
            ..Retain::default()
        };
        assert_eq!(
            plan_retention(&b, &wal, &age, now()).unwrap().keep,
            ["b3", "b4"]
        );

        // PITR window of 36 h: the window starts Dec 3 00:00; b2 (finished Dec 2) covers it.
        let pitr = Retain {
            pitr_window: Some("36h".into()),
            ..Retain::default()
        };
        assert_eq!(
            plan_retention(&b, &wal, &pitr, now()).unwrap().keep,
            ["b2", "b3", "b4"]
        );

        // A window older than every backup keeps them all.
        let long = Retain {
            pitr_window: Some("30d".into()),
            ..Retain::default()
        };
        assert!(plan_retention(&b, &wal, &long, now())
            .unwrap()
            .delete
            .is_empty());

        // The newest is always kept.
        let old = Retain {
            age: Some(0),
            ..Retain::default()
        };
        let p = plan_retention(
            &b,
            &wal,
            &old,
            chrono::Utc.with_ymd_and_hms(2027, 6, 1, 0, 0, 0).unwrap(),
        )
        .unwrap();
        assert_eq!(p.keep, ["b4"]);

        // History files are never deleted.
        let mut w = wal.clone();
        w.push(WalEntry {
            name: "00000002.history".into(),
            size: 1,
        });
        let p = plan_retention(&b, &w, &count, now()).unwrap();
        assert!(!p.delete_wal.iter().any(|n| n.ends_with(".history")));
    }

    #[test]
    fn window_needs_every_segment_and_follows_timelines() {
        let b = vec![manifest("b1", 1, 2 * MB16 + 40, 3 * MB16 + 8, 1)];
        // Segment 3 missing: the backup cannot be restored.
        let gap = vec![seg(1, 2), seg(1, 4)];
        assert!(window(&b, &gap).is_none());
        // 2..=5 on timeline 1, then 6, 7 on timeline 2.
        let wal = vec![
            seg(1, 2),
            seg(1, 3),
            seg(1, 4),
            seg(1, 5),
            seg(2, 6),
            seg(2, 7),
        ];
        let w = window(&b, &wal).unwrap();
        assert_eq!(w.from_backup, "b1");
        assert_eq!(w.to_segment, "000000020000000000000007");
        assert_eq!(w.to_lsn, "0/8000000");
    }
}
