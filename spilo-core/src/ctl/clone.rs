//! `spiloctl clone`: the plan of the configuration's point-in-time clone
//! (`bootstrap.method: clone`) — which backup of the source, which archived WAL after it, how
//! much to download — without running it (the daemon runs it when it bootstraps); with
//! `--follow`, a progress bar of the daemon running it.

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
    let target = c.target().map_err(|p| CtlError(p.to_string()))?;
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
    let m = clone::choose_backup(&backups, &target).map_err(|e| CtlError(e.to_string()))?;
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

/// The node reports that the clone failed, with its reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the clone failed: {0}")]
pub struct CloneFailed(pub String);

/// One line of progress from the node's `GET /patroni` (`archive.restore`), and whether the
/// clone is over (`Ok(true)`: promoted; an error: it failed).
pub fn progress_line(status: &Value) -> Result<(String, bool), CloneFailed> {
    let r = &status["archive"]["restore"];
    let role = status["role"].as_str().unwrap_or("");
    let state = status["state"].as_str().unwrap_or("");
    let phase = r["phase"].as_str().unwrap_or("");
    let done = r["downloaded_bytes"].as_u64().unwrap_or(0);
    let total = r["total_bytes"].as_u64().unwrap_or(0).max(1);
    let bar = |frac: f64| {
        let width = 30usize;
        let full = ((frac.clamp(0.0, 1.0)) * width as f64).round() as usize;
        format!("[{}{}]", "#".repeat(full), ".".repeat(width - full))
    };
    match phase {
        "failed" => Err(CloneFailed(
            r["error"]
                .as_str()
                .unwrap_or("see the node's log")
                .to_string(),
        )),
        "downloading" => Ok((
            format!(
                "{} {} {:>5.1} % of {}: downloading {}",
                bar(done as f64 / total as f64),
                mib(&json!(done)),
                100.0 * done as f64 / total as f64,
                mib(&json!(total)),
                r["backup"].as_str().unwrap_or("")
            ),
            false,
        )),
        "replaying" | "done" => {
            let over = phase == "done" && role == "primary" && state == "running";
            Ok((
                format!(
                    "{} backup restored ({}), {} WAL files replayed from the archive{}",
                    bar(1.0),
                    mib(&json!(total)),
                    r["wal_fetched"].as_u64().unwrap_or(0),
                    if over {
                        ": the clone reached its target and runs as primary"
                    } else {
                        ""
                    }
                ),
                over,
            ))
        }
        _ => Ok((
            format!("waiting for the node to start the clone ({state})"),
            false,
        )),
    }
}

/// Follows this configuration's node while it bootstraps as a clone: a progress bar (one line
/// per second on a terminal, a line per change otherwise) until it is promoted or fails.
pub async fn follow(ctx: &Ctx) -> CtlResult {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let url = format!("http://{}/patroni", ctx.cfg.restapi.connect_address);
    let mut last = String::new();
    let mut unanswered_since: Option<std::time::Instant> = None;
    loop {
        let answer = super::http::request_json(
            hyper::Method::GET,
            &url,
            None,
            ctx.auth.as_ref(),
            std::time::Duration::from_secs(5),
        )
        .await;
        match answer.ok().and_then(|r| r.json()) {
            Some(status) => {
                unanswered_since = None;
                let (line, over) = progress_line(&status).map_err(|e| CtlError(e.to_string()))?;
                if tty {
                    eprint!("\r{line:<110}");
                    let _ = std::io::stderr().flush();
                } else if line != last {
                    eprintln!("{line}");
                }
                last = line;
                if over {
                    if tty {
                        eprintln!();
                    }
                    return Ok(());
                }
            }
            None => {
                let since = *unanswered_since.get_or_insert_with(crate::clock::now);
                if since.elapsed() > std::time::Duration::from_secs(60) {
                    if tty {
                        eprintln!();
                    }
                    return fail(format!(
                        "{url} has not answered for a minute: the node stopped (a failed bootstrap ends the daemon; see its log)"
                    ));
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_follow_the_phases() {
        let s = |phase: &str, role: &str| {
            json!({"role": role, "state": "running", "archive": {"restore": {
                "backup": "base_1", "phase": phase, "downloaded_bytes": 3 << 20,
                "total_bytes": 12 << 20, "wal_fetched": 4, "error": "a hole"}}})
        };
        let (l, over) = progress_line(&s("downloading", "uninitialized")).expect("line");
        assert!(
            l.contains(" 25.0 %") && l.contains("base_1") && !over,
            "{l}"
        );
        let (l, over) = progress_line(&s("replaying", "replica")).expect("line");
        assert!(l.contains("4 WAL files") && !over, "{l}");
        let (_, over) = progress_line(&s("done", "primary")).expect("line");
        assert!(over);
        let e = progress_line(&s("failed", "uninitialized"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a hole"), "{e}");
        let (l, over) = progress_line(&json!({"state": "starting"})).expect("line");
        assert!(l.contains("waiting") && !over, "{l}");
    }
}
