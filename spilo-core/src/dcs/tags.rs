//! Member tags and their rules (`nofailover` wins over `failover_priority`).

use std::collections::BTreeMap;

use serde_json::Value;

/// A boolean tag: `true`, `"true"`, `"yes"`, `"on"`, `1`.
pub fn tag_bool(tags: &BTreeMap<String, Value>, tag: &str) -> bool {
    match tags.get(tag) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().map(|x| x != 0).unwrap_or(false),
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
        }
        _ => false,
    }
}

/// An integer tag (numbers or numeric strings).
pub fn tag_int(tags: &BTreeMap<String, Value>, tag: &str) -> Option<i64> {
    match tags.get(tag) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Effective failover priority: 0 with `nofailover`, else `failover_priority` (default 1).
pub fn failover_priority(tags: &BTreeMap<String, Value>) -> i64 {
    if tag_bool(tags, "nofailover") {
        0
    } else {
        tag_int(tags, "failover_priority").unwrap_or(1)
    }
}

/// True when the member may never be promoted automatically.
pub fn nofailover(tags: &BTreeMap<String, Value>) -> bool {
    failover_priority(tags) <= 0
}

/// Tags as published in the member key: predefined booleans only when true.
pub fn published(tags: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    const BOOLS: [&str; 4] = ["nofailover", "noloadbalance", "clonefrom", "nosync"];
    let mut out = BTreeMap::new();
    for (k, v) in tags {
        if BOOLS.contains(&k.as_str()) {
            if tag_bool(tags, k) {
                out.insert(k.clone(), Value::Bool(true));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    if tags.contains_key("failover_priority") && !out.contains_key("nofailover") {
        out.insert(
            "nofailover".into(),
            Value::Bool(tag_bool(tags, "nofailover")),
        );
    }
    out
}
