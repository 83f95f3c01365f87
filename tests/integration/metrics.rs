//! `GET /metrics`: Prometheus text that promtool accepts, with Patroni's role series.

use std::time::Duration;

use spilo_tests::tools::promtool_check_metrics;
use spilo_tests::{note, wait_for, ClusterOpts, Node, TestCluster};

use crate::BOOTSTRAP;

/// The value of the sample `metric{...}` whose labels include `scope` and `name`.
pub(crate) fn sample(text: &str, metric: &str, scope: &str, name: &str) -> Option<f64> {
    let want_scope = format!("scope=\"{scope}\"");
    let want_name = format!("name=\"{name}\"");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?;
        let rest = rest.strip_prefix('{')?;
        let (labels, value) = rest.split_once('}')?;
        let labels: Vec<&str> = labels.split(',').map(str::trim).collect();
        if !labels.contains(&want_scope.as_str()) || !labels.contains(&want_name.as_str()) {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// `GET /metrics` on `n`: 200, `text/plain`, the text.
pub(crate) fn metrics(n: &Node) -> String {
    let r = n
        .api("GET", "/metrics", None)
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(r.status, 200, "GET /metrics on {}: {}", n.name, r.summary());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("text/plain"),
        "GET /metrics on {}: Content-Type {ct:?}",
        n.name
    );
    r.text()
}

/// Lint problems promtool may report for Patroni's own metric names: Patroni declares the WAL
/// positions as counters without the `_total` suffix, and a Patroni-compatible exporter keeps
/// the names dashboards use.
const PATRONI_NAMED_COUNTERS: [&str; 3] = [
    "patroni_xlog_location",
    "patroni_xlog_received_location",
    "patroni_xlog_replayed_location",
];

/// Asserts that promtool parses `text` and finds nothing but the known Patroni counter names.
pub(crate) fn assert_promtool_accepts(node: &str, text: &str) {
    let rep = promtool_check_metrics(text);
    note(format!(
        "promtool check metrics ({node}): exit {:?}\n{}",
        rep.code, rep.output
    ));
    assert!(
        matches!(rep.code, Some(0) | Some(3)),
        "promtool could not parse {node}'s /metrics (exit {:?}):\n{}\n--- metrics ---\n{text}",
        rep.code,
        rep.output
    );
    let unexpected: Vec<&String> = rep
        .problems
        .iter()
        .filter(|p| {
            !PATRONI_NAMED_COUNTERS.iter().any(|m| {
                p.starts_with(&format!(
                    "{m} counter metrics should have \"_total\" suffix"
                ))
            })
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool lint problems in {node}'s /metrics: {unexpected:?}\n--- metrics ---\n{text}"
    );
}

#[test]
fn metrics_are_valid_prometheus_text_with_patroni_role_series() {
    let c = TestCluster::start(2, ClusterOpts::named("metrics"));
    let p = c.wait_for_replicas_streaming(BOOTSTRAP);
    let r = c.others(&p)[0].clone();
    let scope = c.scope.clone();

    let pt = metrics(c.node(&p));
    // The replica's series may lag the streaming check by one HA cycle.
    let rt = wait_for(
        "patroni_replica 1 on the replica",
        Duration::from_secs(30),
        || {
            let t = metrics(c.node(&r));
            match sample(&t, "patroni_replica", &scope, &r) {
                Some(1.0) => Ok(t),
                other => Err(format!("patroni_replica = {other:?}")),
            }
        },
    );
    let mut failures = Vec::new();
    for (text, name, metric, want) in [
        (&pt, &p, "patroni_primary", 1.0),
        (&pt, &p, "patroni_replica", 0.0),
        (&pt, &p, "patroni_postgres_running", 1.0),
        (&rt, &r, "patroni_replica", 1.0),
        (&rt, &r, "patroni_primary", 0.0),
        (&rt, &r, "patroni_postgres_running", 1.0),
        (&rt, &r, "patroni_postgres_streaming", 1.0),
    ] {
        match sample(text, metric, &scope, name) {
            Some(v) if v == want => {}
            other => failures.push(format!(
                "{name}: {metric}{{scope=\"{scope}\",name=\"{name}\"}} = {other:?}, want {want}"
            )),
        }
    }
    for (text, name) in [(&pt, &p), (&rt, &r)] {
        for m in [
            "patroni_version",
            "patroni_postgres_timeline",
            "patroni_postmaster_start_time",
            "patroni_xlog_location",
            "patroni_is_paused",
            "patroni_cluster_unlocked",
        ] {
            if m == "patroni_xlog_location" && name == &r {
                continue;
            }
            if sample(text, m, &scope, name).is_none() {
                failures.push(format!("{name}: no {m} sample with scope and name labels"));
            }
            if !text.contains(&format!("# TYPE {m} ")) {
                failures.push(format!("{name}: no # TYPE line for {m}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "metrics mismatches:\n{}\n--- primary ---\n{pt}\n--- replica ---\n{rt}",
        failures.join("\n")
    );
    assert_promtool_accepts(&p, &pt);
    assert_promtool_accepts(&r, &rt);
}

#[cfg(test)]
mod unit {
    use super::sample;

    #[test]
    fn sample_matches_labels_in_any_order() {
        let t = "# TYPE patroni_primary gauge\npatroni_primary{name=\"n1\",scope=\"s\"} 1\npatroni_primary{scope=\"s\",name=\"n2\"} 0\n";
        assert_eq!(sample(t, "patroni_primary", "s", "n1"), Some(1.0));
        assert_eq!(sample(t, "patroni_primary", "s", "n2"), Some(0.0));
        assert_eq!(sample(t, "patroni_primary", "s", "n3"), None);
        assert_eq!(sample(t, "patroni_primar", "s", "n1"), None);
    }
}
