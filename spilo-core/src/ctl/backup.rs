//! `spiloctl backup create|list|show|delete|prune` and `spiloctl wal list`: the catalog of the
//! store the configuration's `storage:` section names.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use spilo_sdk::storage::Storage;

use super::common::{fail, CtlError, CtlResult, Ctx};
use super::output::{render_rows, Format};
use crate::backup::base::{Manifest, Progress};
use crate::backup::catalog::{self, Window};
use crate::backup::run::{backup_now, retain, Job};

/// The store and the cluster's prefix.
async fn job(ctx: &Ctx) -> CtlResult<Job> {
    let Some(s) = &ctx.cfg.storage else {
        return fail(
            "the configuration has no storage: section (where the backups are); use a node's configuration file",
        );
    };
    let storage = crate::backup::open_storage(s).await.map_err(|e| {
        CtlError(format!(
            "cannot open the {} store: {}",
            s.kind,
            crate::error_chain(&e)
        ))
    })?;
    let pg_version = pg_major(ctx, &*storage).await?;
    let key = match ctx.cfg.backup_settings().and_then(|b| b.encryption) {
        Some(e) => Some(
            e.load(&ctx.cfg)
                .await
                .map_err(|e| CtlError(e.to_string()))?,
        ),
        None => None,
    };
    Ok(Job {
        base: s.base_prefix(&ctx.cfg.scope, pg_version),
        storage,
        cfg: ctx.cfg.clone(),
        pg_version,
        key,
    })
}

/// The PostgreSQL major version of the layout: the local binaries', else the only one the
/// store holds for this cluster.
async fn pg_major(ctx: &Ctx, storage: &dyn Storage) -> CtlResult<u32> {
    let s = ctx.cfg.storage.as_ref().ok_or("no storage section")?;
    if let Ok(v) = crate::postgres::ctl::server_major(&crate::ha::daemon::bin_dir(&ctx.cfg)) {
        return Ok(v);
    }
    let root = format!(
        "spilo/{}{}{}/wal",
        s.scope_prefix, ctx.cfg.scope, s.scope_suffix
    );
    let keys = catalog::list_all(storage, &root)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    let mut majors: Vec<u32> = keys
        .iter()
        .filter_map(|(k, _)| {
            k.strip_prefix(&format!("{root}/"))?
                .split('/')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    majors.sort_unstable();
    majors.dedup();
    match majors.as_slice() {
        [one] => Ok(*one),
        [] => fail(format!(
            "no PostgreSQL binaries here and nothing stored under {root}/: cannot tell the PostgreSQL version (set storage.prefix)"
        )),
        many => fail(format!(
            "no PostgreSQL binaries here and {root}/ holds versions {many:?}: set storage.prefix"
        )),
    }
}

fn size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn manifest_json(m: &Manifest) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// `spiloctl backup list`.
pub async fn list(ctx: &Ctx, format: Format) -> CtlResult {
    let job = job(ctx).await?;
    let s = &*job.storage;
    let err = |e: spilo_sdk::storage::StorageError| CtlError(crate::error_chain(&e));
    let (backups, problems) = catalog::backups(s, &job.base).await.map_err(err)?;
    let wal = catalog::wal(s, &job.base).await.map_err(err)?;
    let window: Option<Window> = catalog::window(&backups, &wal);
    for p in &problems {
        eprintln!("spiloctl: warning: {}: {}", p.key, p.problem);
    }
    if format == Format::Json {
        let out = json!({
            "backups": backups.iter().map(manifest_json).collect::<Vec<_>>(),
            "pitr_window": window,
            "wal_files": wal.len(),
            "prefix": job.base,
        });
        println!("{out}");
        return Ok(());
    }
    let headers = [
        "Name",
        "Started",
        "Finished",
        "TL",
        "Start LSN",
        "Stop LSN",
        "Size",
        "Stored",
        "Took",
        "Member",
    ];
    let rows: Vec<Value> = backups
        .iter()
        .map(|m| {
            json!({
                "Name": m.name, "Started": m.start_time, "Finished": m.finish_time,
                "TL": m.timeline, "Start LSN": m.start_lsn, "Stop LSN": m.stop_lsn,
                "Size": size(m.size), "Stored": size(m.compressed_size),
                "Took": format!("{:.1} s", m.duration_secs),
                "Member": if m.from_replica { format!("{} (replica)", m.member) } else { m.member.clone() },
            })
        })
        .collect();
    let title = format!("Backups of {} ({})", ctx.cfg.scope, job.base);
    print!("{}", render_rows(format, &rows, &headers, Some(&title)));
    if format == Format::Pretty {
        match window {
            Some(w) => println!(
                "Point-in-time window: from {} ({} after {}) to {} (end of {})",
                w.from_time, w.from_lsn, w.from_backup, w.to_lsn, w.to_segment
            ),
            None => println!("Point-in-time window: none (no backup with all its WAL archived)"),
        }
    }
    Ok(())
}

/// The complete backups, and the one named `name` among them.
async fn find(job: &Job, name: &str) -> CtlResult<(Vec<Manifest>, Manifest)> {
    let (backups, _) = catalog::backups(&*job.storage, &job.base)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    let m = backups
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .ok_or_else(|| {
            CtlError(format!(
                "no complete backup named {name} under {}",
                job.base
            ))
        })?;
    Ok((backups, m))
}

/// `spiloctl backup show NAME`.
pub async fn show(ctx: &Ctx, name: &str) -> CtlResult {
    let job = job(ctx).await?;
    let (_, m) = find(&job, name).await?;
    println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
    Ok(())
}

/// `spiloctl backup delete NAME`.
pub async fn delete(ctx: &Ctx, name: &str, force: bool) -> CtlResult {
    let job = job(ctx).await?;
    let (backups, m) = find(&job, name).await?;
    if backups.last().is_some_and(|l| l.name == name) {
        ctx.console.confirm(
            &format!("{name} is the newest backup; delete it anyway?"),
            force,
        )?;
    } else {
        ctx.console
            .confirm(&format!("Delete backup {name}?"), force)?;
    }
    catalog::delete_backup(&*job.storage, &job.base, &m)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    println!("deleted {name}");
    Ok(())
}

/// `spiloctl backup prune [--dry-run]`.
pub async fn prune(ctx: &Ctx, dry_run: bool) -> CtlResult {
    let job = job(ctx).await?;
    let rules = ctx.cfg.backup_settings().unwrap_or_default().retain;
    let plan = retain(&job, &rules, dry_run)
        .await
        .map_err(|e| CtlError(e.to_string()))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!("keep: {}", plan.keep.join(" "));
    println!(
        "{verb} {} backup(s){}{}",
        plan.delete.len(),
        if plan.delete.is_empty() { "" } else { ": " },
        plan.delete.join(" ")
    );
    println!("{verb} {} WAL file(s)", plan.delete_wal.len());
    if let (Some(first), Some(last)) = (plan.delete_wal.first(), plan.delete_wal.last()) {
        println!("  {first} … {last}");
    }
    Ok(())
}

/// `spiloctl backup create`.
pub async fn create(ctx: &Ctx, from_replica: Option<bool>) -> CtlResult {
    let job = job(ctx).await?;
    let from_replica =
        from_replica.unwrap_or_else(|| ctx.cfg.backup_settings().is_some_and(|b| b.from_replica));
    let cluster = ctx.cluster().await?;
    let progress = Arc::new(Progress::default());
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let ticker = bar.clone().map(|b| {
        let p = progress.clone();
        tokio::spawn(async move {
            loop {
                b.set_length(
                    p.total
                        .load(Ordering::Relaxed)
                        .max(p.done.load(Ordering::Relaxed)),
                );
                b.set_position(p.done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let r = backup_now(ctx.dcs.clone(), &cluster, &job, from_replica, progress).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (m, retention) = r.map_err(|e| CtlError(crate::error_chain(&e)))?;
    println!(
        "backup {} from {}{}: {} ({} stored) in {:.1} s, WAL {} to {} on timeline {}",
        m.name,
        m.member,
        if m.from_replica { " (replica)" } else { "" },
        size(m.size),
        size(m.compressed_size),
        m.duration_secs,
        m.start_lsn,
        m.stop_lsn,
        m.timeline
    );
    match retention {
        Ok(p) if !p.delete.is_empty() || !p.delete_wal.is_empty() => println!(
            "retention: deleted {} backup(s), {} WAL file(s)",
            p.delete.len(),
            p.delete_wal.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("spiloctl: warning: retention failed: {e}"),
    }
    Ok(())
}

/// `spiloctl wal list`.
pub async fn wal_list(ctx: &Ctx, format: Format) -> CtlResult {
    let job = job(ctx).await?;
    let wal = catalog::wal(&*job.storage, &job.base)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    if format == Format::Json {
        println!("{}", serde_json::to_string(&wal).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Value> = wal
        .iter()
        .map(|w| {
            json!({
                "Name": w.name,
                "Timeline": crate::backup::layout::timeline(&w.name).unwrap_or(0),
                "Stored": size(w.size),
            })
        })
        .collect();
    let title = format!("Archived WAL of {} ({})", ctx.cfg.scope, job.base);
    print!(
        "{}",
        render_rows(format, &rows, &["Name", "Timeline", "Stored"], Some(&title))
    );
    Ok(())
}

/// `spiloctl backup verify [NAME]`: the restore drill (see [`crate::backup::verify`]).
pub async fn verify(
    ctx: &Ctx,
    name: Option<&str>,
    dir: Option<std::path::PathBuf>,
    format: Format,
) -> CtlResult {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return fail(
            "backup verify starts PostgreSQL, which refuses to run as root: run it as the PostgreSQL OS user (runuser -u postgres -- spiloctl …)",
        );
    }
    let job = job(ctx).await?;
    let m = match name {
        Some(n) => find(&job, n).await?.1,
        None => catalog::backups(&*job.storage, &job.base)
            .await
            .map_err(|e| CtlError(crate::error_chain(&e)))?
            .0
            .pop()
            .ok_or_else(|| CtlError(format!("no complete backup under {}", job.base)))?,
    };
    let drill = crate::backup::verify::Drill {
        storage: job.storage.clone(),
        base: job.base.clone(),
        key: job.key.clone(),
        bin_dir: crate::ha::daemon::bin_dir(&ctx.cfg),
        superuser: ctx.cfg.postgresql.authentication.superuser.username.clone(),
        scratch_root: dir.unwrap_or_else(std::env::temp_dir),
        timeout: Duration::from_secs(ctx.cfg.postgresql.pg_ctl_timeout.unwrap_or(600).max(60)),
    };
    let r = crate::backup::verify::verify(&drill, &m).await;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default()),
        _ => {
            println!("backup:   {}", r.backup);
            println!(
                "restored: {} ({} read from the store), {} WAL files",
                size(r.restored_bytes),
                size(r.stored_bytes),
                r.wal_files
            );
            if !r.check.is_empty() {
                println!("check:    {}", r.check);
            }
            println!(
                "result:   {} in {:.1} s: {}",
                if r.ok { "ok" } else { "FAILED" },
                r.seconds,
                r.detail
            );
        }
    }
    if r.ok {
        Ok(())
    } else {
        fail(format!(
            "backup {} failed the drill: {}",
            r.backup, r.detail
        ))
    }
}
