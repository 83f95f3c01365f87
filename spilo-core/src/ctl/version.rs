//! `spiloctl version`: spiloctl's own version, then each member's (from `GET <api_url>`).

use hyper::Method;
use serde_json::Value;

use super::common::{fail, select_members, CtlResult, Ctx, RoleFilter, REST_TIMEOUT};

/// spiloctl's own line.
pub fn own_version() -> String {
    format!(
        "spiloctl version {} (Patroni-compatible {})",
        crate::VERSION,
        crate::PATRONI_COMPAT_VERSION
    )
}

/// `server_version` (`160004`, `90624`) as `16.4`, `9.6.24`.
pub fn pg_version(num: i64) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num / 100 % 100, num % 100)
    }
}

/// A member's line from its status body.
pub fn member_line(name: &str, status: &Value) -> String {
    let mut parts = vec![format!("{name}:")];
    if let Some(v) = status.pointer("/spilo/version").and_then(Value::as_str) {
        parts.push(format!("Spilo {v}"));
    }
    if let Some(v) = status.pointer("/patroni/version").and_then(Value::as_str) {
        if parts.len() > 1 {
            parts.push(format!("(Patroni {v})"));
        } else {
            parts.push(format!("Patroni {v}"));
        }
    }
    match status.get("server_version").and_then(Value::as_i64) {
        Some(n) => parts.push(format!("PostgreSQL {}", pg_version(n))),
        None => parts.push(format!(
            "PostgreSQL unknown (state: {})",
            status
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
        )),
    }
    parts.join(" ")
}

/// `spiloctl version` after the own line: every chosen member's versions.
pub async fn run(ctx: &Ctx, members: &[String]) -> CtlResult {
    let c = ctx.cluster().await?;
    let chosen = select_members(&c, members, RoleFilter::Any)?;
    let mut failed = Vec::new();
    for m in chosen {
        match ctx.rest(m, Method::GET, "", None, REST_TIMEOUT).await {
            Ok(r) => match r.json() {
                Some(v @ Value::Object(_)) => println!("{}", member_line(&m.name, &v)),
                _ => {
                    eprintln!(
                        "{}: failed to get the version: status code={}, body is not a JSON \
                         object",
                        m.name, r.status
                    );
                    failed.push(m.name.clone());
                }
            },
            Err(e) => {
                eprintln!("{}: failed to get the version: {e}", m.name);
                failed.push(m.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        fail(format!("no version from: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn version_lines() {
        assert_eq!(pg_version(160004), "16.4");
        assert_eq!(pg_version(100000), "10.0");
        assert_eq!(pg_version(90624), "9.6.24");
        assert_eq!(
            member_line(
                "n1",
                &json!({"server_version": 150007, "patroni": {"version": "4.1.4"},
                        "spilo": {"version": "0.1.0"}})
            ),
            "n1: Spilo 0.1.0 (Patroni 4.1.4) PostgreSQL 15.7"
        );
        assert_eq!(
            member_line(
                "p",
                &json!({"server_version": 160004, "patroni": {"version": "4.0.0"}})
            ),
            "p: Patroni 4.0.0 PostgreSQL 16.4"
        );
        assert_eq!(
            member_line(
                "s",
                &json!({"state": "stopped", "spilo": {"version": "0.1.0"}})
            ),
            "s: Spilo 0.1.0 PostgreSQL unknown (state: stopped)"
        );
        assert!(own_version().starts_with("spiloctl version "));
    }
}
