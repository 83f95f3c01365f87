//! `spiloctl clone`: the plan of the configuration's point-in-time clone
//! (`bootstrap.method: clone`) — which backup of the source, which archived WAL after it, how
//! much to download — without running it (the daemon runs it when it bootstraps).

use serde_json::{json, Value};

use super::common::{fail, CtlError, CtlResult, Ctx};
use super::output::Format;
use crate::backup::base::segment_name;
use crate::backup::{catalog, clone, layout};

/// Prints the plan.
pub async fn plan(ctx: &Ctx, format: Format) -> CtlResult {
    let Some(c) = ctx.cfg.bootstrap.clone.as_ref() else {
        return fail("the configuration has no bootstrap.clone section");
    };
    let target = c.target().map_err(|(k, m)| CtlError(format!("{k}: {m}")))?;
    let Some(source) = c.storage.as_ref().or(ctx.cfg.storage.as_ref()) else {
        return fail(
            "no storage: section and no bootstrap.clone.storage: nowhere to read the source from",
        );
    };
    let storage = crate::backup::open_storage(source).await.map_err(|e| {
        CtlError(format!(
            "cannot open the source's {} store: {}",
            source.kind,
            crate::error_chain(&e)
        ))
    })?;
    let major =
        crate::postgres::ctl::server_major(&crate::ha::daemon::bin_dir(&ctx.cfg)).unwrap_or(15);
    let base = source.base_prefix(&c.scope, major);
    let (backups, _) = catalog::backups(&*storage, &base)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    let m = clone::choose_backup(&backups, &target).map_err(CtlError)?;
    let first = segment_name(m.timeline, m.start());
    let wal = catalog::wal(&*storage, &base)
        .await
        .map_err(|e| CtlError(crate::error_chain(&e)))?;
    // Segments from the backup's start on its timeline and later ones, and history files.
    let needed: Vec<&catalog::WalEntry> = wal
        .iter()
        .filter(|w| match layout::classify(&w.name) {
            Some(layout::WalFile::History) => true,
            Some(layout::WalFile::Segment) => {
                layout::timeline(&w.name) >= Some(m.timeline) && w.name[8..] >= first[8..]
            }
            _ => false,
        })
        .collect();
    let wal_bytes: u64 = needed.iter().map(|w| w.size).sum();
    let plan = json!({
        "source": {"scope": c.scope, "prefix": base, "type": source.kind},
        "target": format!("{target:?}"),
        "target_timeline": c.target_timeline,
        "inclusive": c.inclusive,
        "backup": {
            "name": m.name, "finish_time": m.finish_time, "start_lsn": m.start_lsn,
            "stop_lsn": m.stop_lsn, "timeline": m.timeline, "size": m.size,
            "compressed_size": m.compressed_size,
        },
        "wal": {
            "from": first,
            "files": needed.len(),
            "stored_bytes": wal_bytes,
            "last": needed.iter().map(|w| w.name.as_str()).max(),
        },
        "download_bytes_at_most": m.compressed_size + wal_bytes,
    });
    match format {
        Format::Json => println!("{plan}"),
        _ => print_plan(&plan),
    }
    Ok(())
}

fn mib(v: &Value) -> String {
    format!("{:.1} MiB", v.as_u64().unwrap_or(0) as f64 / 1048576.0)
}

fn print_plan(p: &Value) {
    let b = &p["backup"];
    let w = &p["wal"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!(
        "clone of {} from {} ({})",
        s(&p["source"]["scope"]),
        s(&p["source"]["prefix"]),
        s(&p["source"]["type"])
    );
    println!(
        "target:   {} (timeline {}, {})",
        s(&p["target"]),
        s(&p["target_timeline"]),
        if p["inclusive"].as_bool().unwrap_or(true) {
            "inclusive"
        } else {
            "exclusive"
        }
    );
    println!(
        "backup:   {}, finished {}, stop {} on timeline {}, {} ({} stored)",
        s(&b["name"]),
        s(&b["finish_time"]),
        s(&b["stop_lsn"]),
        b["timeline"],
        mib(&b["size"]),
        mib(&b["compressed_size"])
    );
    println!(
        "WAL:      up to {} files from {} to {} ({} stored), replayed until the target",
        w["files"],
        s(&w["from"]),
        w["last"].as_str().unwrap_or("-"),
        mib(&w["stored_bytes"])
    );
    println!("download: at most {}", mib(&p["download_bytes_at_most"]));
}
