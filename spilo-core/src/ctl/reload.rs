//! `spiloctl reload`: `POST /reload` to each chosen member (the node re-reads its file).

use hyper::Method;

use super::common::{
    fail, loop_wait, names, select_members, CtlResult, Ctx, RoleFilter, REST_TIMEOUT,
};

/// The line printed for a member's answer; `None` for a failure.
pub fn outcome(member: &str, status: u16, loop_wait: u64) -> Option<String> {
    match status {
        200 => Some(format!("No changes to apply on member {member}")),
        202 => Some(format!(
            "Reload request received for member {member} and will be processed within \
             {loop_wait} seconds"
        )),
        _ => None,
    }
}

/// `spiloctl reload`.
pub async fn run(ctx: &Ctx, members: &[String], role: RoleFilter, force: bool) -> CtlResult {
    let c = ctx.cluster().await?;
    let chosen = select_members(&c, members, role)?;
    if chosen.is_empty() {
        return fail(format!("no member matches the role filter {role:?}"));
    }
    ctx.console.confirm(
        &format!(
            "Are you sure you want to reload members {}?",
            names(&chosen)
        ),
        force,
    )?;
    let wait = loop_wait(&c);
    let mut failed = Vec::new();
    for m in &chosen {
        match ctx
            .rest(m, Method::POST, "reload", None, REST_TIMEOUT)
            .await
        {
            Ok(r) => match outcome(&m.name, r.status, wait) {
                Some(line) => println!("{line}"),
                None => {
                    eprintln!(
                        "Failed: reload for member {}, status code={}, ({})",
                        m.name,
                        r.status,
                        r.text()
                    );
                    failed.push(m.name.clone());
                }
            },
            Err(e) => {
                eprintln!("Failed: reload for member {}: {e}", m.name);
                failed.push(m.name.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        fail(format!("reload failed on: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(
            outcome("a", 202, 10).unwrap(),
            "Reload request received for member a and will be processed within 10 seconds"
        );
        assert_eq!(
            outcome("a", 200, 10).unwrap(),
            "No changes to apply on member a"
        );
        assert!(outcome("a", 401, 10).is_none());
        assert!(outcome("a", 503, 10).is_none());
    }
}
