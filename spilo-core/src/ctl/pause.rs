//! `spiloctl pause` / `spiloctl resume`: maintenance mode through `PATCH /config`, sent to
//! the leader first, then to the other members until one accepts it.

use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use super::common::{fail, CtlResult, Ctx, REST_TIMEOUT};
use crate::dcs::{Cluster, Member};

/// How long `--wait` waits for every member to agree.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The PATCH body: `{"pause": true}`, or `{"pause": null}` (deleting the key) to resume.
pub fn body(pause: bool) -> Value {
    if pause {
        json!({"pause": true})
    } else {
        json!({"pause": null})
    }
}

/// The leader first, then the others in name order.
pub fn leader_first(c: &Cluster) -> Vec<&Member> {
    let leader = c.leader_member();
    leader
        .into_iter()
        .chain(
            c.members
                .iter()
                .filter(|m| Some(m.name.as_str()) != leader.map(|l| l.name.as_str())),
        )
        .collect()
}

/// The members whose key does not yet show the wanted pause state.
pub fn disagreeing(c: &Cluster, pause: bool) -> Vec<&str> {
    c.members
        .iter()
        .filter(|m| (m.data.pause == Some(true)) != pause)
        .map(|m| m.name.as_str())
        .collect()
}

fn word(pause: bool) -> &'static str {
    if pause {
        "paused"
    } else {
        "resumed"
    }
}

/// `spiloctl pause` (`pause` true) or `spiloctl resume`.
pub async fn run(ctx: &Ctx, pause: bool, wait: bool) -> CtlResult {
    let c = ctx.cluster().await?;
    if c.paused() == pause {
        return fail(if pause {
            "Cluster is already paused"
        } else {
            "Cluster is not paused"
        });
    }
    let targets = leader_first(&c);
    if targets.is_empty() {
        return fail("the cluster has no members to send the request to");
    }
    let body = body(pause);
    let mut accepted = false;
    for m in targets {
        match ctx
            .rest(m, Method::PATCH, "config", Some(&body), REST_TIMEOUT)
            .await
        {
            Ok(r) if r.status == 200 => {
                accepted = true;
                break;
            }
            Ok(r) => eprintln!(
                "Failed: PATCH /config on member {}: status code={}, ({})",
                m.name,
                r.status,
                r.text()
            ),
            Err(e) => eprintln!("Failed: PATCH /config on member {}: {e}", m.name),
        }
    }
    if !accepted {
        return fail(format!(
            "no member accepted the {} request",
            if pause { "pause" } else { "resume" }
        ));
    }
    if wait {
        println!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if pause { "pause" } else { "resume" }
        );
        let start = crate::clock::now();
        loop {
            let c = ctx.cluster().await?;
            let left = disagreeing(&c, pause);
            if left.is_empty() {
                break;
            }
            if start.elapsed() >= WAIT_TIMEOUT {
                return fail(format!(
                    "not recognized within {}s by: {}",
                    WAIT_TIMEOUT.as_secs(),
                    left.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    println!("Success: cluster management is {}", word(pause));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::common::tests::cluster;

    #[test]
    fn bodies_order_and_agreement() {
        assert_eq!(body(true).to_string(), r#"{"pause":true}"#);
        assert_eq!(body(false).to_string(), r#"{"pause":null}"#);
        let mut c = cluster(&["a", "b", "c"], Some("b"));
        let order: Vec<&str> = leader_first(&c).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, vec!["b", "a", "c"]);
        assert_eq!(disagreeing(&c, true), vec!["a", "b", "c"]);
        assert!(disagreeing(&c, false).is_empty());
        c.members[0].data.pause = Some(true);
        c.members[2].data.pause = Some(false);
        assert_eq!(disagreeing(&c, true), vec!["b", "c"]);
        assert_eq!(disagreeing(&c, false), vec!["a"]);
        let no_leader = cluster(&["a", "b"], None);
        assert_eq!(leader_first(&no_leader).len(), 2);
    }
}
