//! The node configuration template shared by the integration tests, the chaos suite and the
//! demo (`examples/node.template.yml`), and its renderer.

use std::collections::BTreeMap;

/// The template's text.
pub const NODE_TEMPLATE: &str = include_str!("../../examples/node.template.yml");

/// Renders the template: every `${NAME}` replaced by `values[NAME]`, names not given replaced
/// by nothing when they stand for optional whole lines (`REST_AUTH`, `DYNAMIC_EXTRA`,
/// `BOOTSTRAP_EXTRA`, `PG_PARAMETERS`, `POSTGRESQL_EXTRA`, `EXTRA`). Panics naming a required placeholder left
/// unfilled or a value given for a name the template does not have.
pub fn render(values: &BTreeMap<&str, String>) -> String {
    const OPTIONAL: &[&str] = &[
        "REST_AUTH",
        "DYNAMIC_EXTRA",
        "BOOTSTRAP_EXTRA",
        "PG_PARAMETERS",
        "POSTGRESQL_EXTRA",
        "EXTRA",
    ];
    let body: String = NODE_TEMPLATE
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = String::with_capacity(body.len() + 512);
    let mut rest = body.as_str();
    let mut used = Vec::new();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .unwrap_or_else(|| panic!("node template: unclosed placeholder at {after:.20}"));
        let name = &after[..end];
        match values.get(name) {
            Some(v) => out.push_str(v),
            None if OPTIONAL.contains(&name) => {}
            None => panic!("node template: no value for ${{{name}}}"),
        }
        used.push(name.to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    for k in values.keys() {
        assert!(
            used.iter().any(|u| u == k),
            "node template: it has no ${{{k}}}"
        );
    }
    out
}

/// `- item` lines at an indent of two spaces, one per entry (for `initdb` and `pg_hba`).
pub fn list(items: &[String]) -> String {
    items.iter().map(|i| format!("  - {i}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_template_is_a_valid_node_configuration() {
        let mut v = BTreeMap::new();
        for (k, val) in [
            ("SCOPE", "s"),
            ("NAME", "n1"),
            ("API_ADDR", "127.0.0.1:8008"),
            ("DCS", "etcd3:\n  hosts: 127.0.0.1:2379\n"),
            ("TTL", "10"),
            ("LOOP_WAIT", "2"),
            ("RETRY_TIMEOUT", "3"),
            ("INITDB", "  - data-checksums\n"),
            ("PG_HBA", "  - host all all 127.0.0.1/32 md5\n"),
            ("PG_ADDR", "127.0.0.1:5432"),
            ("DATA_DIR", "/tmp/d"),
            ("PG_BIN", "/usr/lib/postgresql/15/bin"),
            ("PGPASS", "/tmp/p"),
            ("SUPERUSER_PASSWORD", "x"),
            ("REPLICATION_PASSWORD", "y"),
            ("TAGS", "  nofailover: false\n"),
        ] {
            v.insert(k, val.to_string());
        }
        let text = render(&v);
        assert!(!text.contains("${"), "{text}");
        let loaded = spilo_core::config::load_str(&text, "node.yml", &[]).expect("valid config");
        assert_eq!(loaded.config.name, "n1");
        assert_eq!(loaded.config.bootstrap.dcs.ttl, 10);
    }
}
