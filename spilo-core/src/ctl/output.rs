//! Rendering shared by the commands: output formats, plain-text tables, tab-separated rows and
//! a small deterministic YAML writer (block style, keys sorted, strings quoted whenever a YAML
//! 1.1 or 1.2 reader could take them for something else).

use serde_json::Value;

/// How a command prints its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A boxed table.
    Pretty,
    /// A JSON array of objects.
    Json,
    /// A YAML list of mappings.
    Yaml,
    /// Tab-separated values with a header line.
    Tsv,
}

/// A cell's text: strings as they are, `null` empty, objects as `k: v, k: v`, the rest as JSON.
pub fn cell_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                format!("{k}: {v}")
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(v) => v.to_string(),
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A boxed table. With a `title`, the top border starts with `+ <title> `.
pub fn table(headers: &[&str], rows: &[Vec<String>], title: Option<&str>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(width(c));
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                format!(" {c}{} ", " ".repeat(w - width(c)))
            })
            .collect();
        format!("|{}|\n", parts.join("|"))
    };
    let sep = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let mut out = String::new();
    match title {
        Some(t) => {
            let head = format!("+ {t} ");
            let n = width(&head);
            if n < sep.len() {
                out.push_str(&head);
                out.push_str(&sep[n..]);
            } else {
                out.push_str(&head);
                out.push('+');
            }
            out.push('\n');
        }
        None => {
            out.push_str(&sep);
            out.push('\n');
        }
    }
    out.push_str(&line(
        &headers.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    ));
    out.push_str(&sep);
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out.push_str(&sep);
    out.push('\n');
    out
}

/// Tab-separated values: a header line, then one line per row. Tabs and newlines inside cells
/// become spaces.
pub fn tsv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    let mut out = headers.join("\t");
    out.push('\n');
    for r in rows {
        out.push_str(&r.iter().map(|c| clean(c)).collect::<Vec<_>>().join("\t"));
        out.push('\n');
    }
    out
}

/// JSON rows (objects) as text cells for `headers`. In TSV, objects are compact JSON.
pub fn cells(rows: &[Value], headers: &[&str], json_objects: bool) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            headers
                .iter()
                .map(|h| match r.get(*h) {
                    Some(v @ Value::Object(_)) if json_objects => v.to_string(),
                    v => cell_text(v),
                })
                .collect()
        })
        .collect()
}

/// Render JSON rows in `format`. `headers` picks and orders the table and TSV columns.
pub fn render_rows(
    format: Format,
    rows: &[Value],
    headers: &[&str],
    title: Option<&str>,
) -> String {
    match format {
        Format::Json => format!("{}\n", Value::Array(rows.to_vec())),
        Format::Yaml => to_yaml(&Value::Array(rows.to_vec())),
        Format::Tsv => tsv(headers, &cells(rows, headers, true)),
        Format::Pretty => table(headers, &cells(rows, headers, false), title),
    }
}

// ----------------------------------------------------------------------------------------------
// YAML

/// Plain scalars a YAML 1.1 reader (PyYAML, hence Patroni) turns into booleans or null.
const YAML11_SPECIAL: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~",
];

/// The YAML 1.1 boolean a bare word means (`on`, `Yes`, `FALSE`…), if any.
pub fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// True when `s` can be written as a plain (unquoted) scalar and read back as the same string.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if s.trim() != s || YAML11_SPECIAL.contains(&s) {
        return false;
    }
    if !(first.is_alphanumeric() || matches!(first, '/' | '_' | '.' | '$' | '(')) {
        return false;
    }
    if s.chars().any(|c| c.is_control())
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.contains(['{', '}', '[', ']', ',', '`', '"', '\''])
    {
        return false;
    }
    // Anything number-like (ints, floats, hex/octal, sexagesimal, dates) is quoted.
    let numberish = first.is_ascii_digit() || first == '.';
    if numberish
        && s.chars().all(|c| {
            c.is_ascii_hexdigit()
                || matches!(c, '+' | '-' | '.' | '_' | ':' | 'x' | 'X' | 'o' | 'O')
        })
    {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    !matches!(lower.as_str(), ".inf" | ".nan")
}

/// A scalar as YAML text.
fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if plain_ok(s) => s.clone(),
        // A JSON string is a valid YAML double-quoted scalar.
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

fn yaml_lines(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, child) in o {
                let key = scalar(&Value::String(k.clone()));
                match child {
                    Value::Object(_) if is_block(child) => {
                        out.push(format!("{key}:"));
                        let mut sub = Vec::new();
                        yaml_lines(child, &mut sub);
                        out.extend(sub.into_iter().map(|l| format!("  {l}")));
                    }
                    Value::Array(_) if is_block(child) => {
                        out.push(format!("{key}:"));
                        yaml_lines(child, out);
                    }
                    _ => out.push(format!("{key}: {}", scalar(child))),
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                if is_block(item) {
                    let mut sub = Vec::new();
                    yaml_lines(item, &mut sub);
                    for (i, l) in sub.into_iter().enumerate() {
                        out.push(if i == 0 {
                            format!("- {l}")
                        } else {
                            format!("  {l}")
                        });
                    }
                } else {
                    out.push(format!("- {}", scalar(item)));
                }
            }
        }
        _ => out.push(scalar(v)),
    }
}

/// `v` as a YAML document (block style, mapping keys in order, ending with a newline).
pub fn to_yaml(v: &Value) -> String {
    let mut lines = Vec::new();
    yaml_lines(v, &mut lines);
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Parse YAML text into JSON. An empty document is `null`.
pub fn from_yaml(text: &str) -> Result<Value, serde_yaml::Error> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_yaml::from_str::<Value>(text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn yaml_renders_nested_blocks_sorted() {
        let v = json!({
            "ttl": 30,
            "postgresql": {"parameters": {"max_connections": 100, "hot_standby": "on"},
                           "pg_hba": ["local all all trust", "host all all 0.0.0.0/0 md5"]},
            "tags": {},
            "list": [],
            "pause": true,
            "standby_cluster": null,
        });
        assert_eq!(
            to_yaml(&v),
            "list: []\n\
             pause: true\n\
             postgresql:\n  \
               parameters:\n    \
                 hot_standby: \"on\"\n    \
                 max_connections: 100\n  \
               pg_hba:\n  \
               - local all all trust\n  \
               - host all all 0.0.0.0/0 md5\n\
             standby_cluster: null\n\
             tags: {}\n\
             ttl: 30\n"
        );
        assert_eq!(to_yaml(&json!({})), "{}\n");
    }

    #[test]
    fn yaml_lists_of_mappings() {
        let v = json!([{"Member": "n1", "TL": 2}, {"Member": "n2", "Tags": {"a": [1, 2]}}]);
        assert_eq!(
            to_yaml(&v),
            "- Member: n1\n  TL: 2\n- Member: n2\n  Tags:\n    a:\n    - 1\n    - 2\n"
        );
    }

    #[test]
    fn yaml_quotes_ambiguous_strings() {
        for s in [
            "on",
            "yes",
            "No",
            "null",
            "~",
            "",
            " x",
            "x ",
            "10",
            "1.5",
            "0x1F",
            "1e3",
            "2024-01-01",
            "12:30",
            ".inf",
            "a: b",
            "a #b",
            "-x",
            "*x",
            "[x]",
            "x,y",
            "'q'",
            "t:",
            "line\nbreak",
            "\"",
            "#c",
        ] {
            assert!(!plain_ok(s), "{s:?} should be quoted");
        }
        for s in [
            "32MB",
            "replica",
            "local all all trust",
            "/var/lib/pg",
            "pg_stat_statements.track",
            "on_off",
            "x-y",
            "a:b",
        ] {
            assert!(plain_ok(s), "{s:?} should stay plain");
        }
    }

    #[test]
    fn yaml_round_trips_through_the_parser() {
        let v = json!({
            "a": "on", "b": "10", "c": 10, "d": 1.5, "e": "x: y", "f": null, "g": [true, "false"],
            "h": {"i": {"j": []}, "k": "", "l": "multi\nline \"quoted\""},
            "on": "key that needs quoting", "m": [{"n": 1, "o": [1, [2, 3]]}, [4, {}]],
            "p": "32MB", "q": "2024-01-01T00:00:00+00:00", "r": -3,
        });
        let back = from_yaml(&to_yaml(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(from_yaml("  \n").unwrap(), Value::Null);
        assert!(from_yaml("a: [").is_err());
    }

    #[test]
    fn table_with_title_and_unicode() {
        let t = table(
            &["Member", "TL"],
            &[
                vec!["n1".into(), "1".into()],
                vec!["nœud".into(), String::new()],
            ],
            Some("Cluster: c1"),
        );
        assert_eq!(
            t,
            "+ Cluster: c1 +\n\
             | Member | TL |\n\
             +--------+----+\n\
             | n1     | 1  |\n\
             | nœud   |    |\n\
             +--------+----+\n"
        );
        let long = table(&["A"], &[], Some("Cluster: a-very-long-name"));
        assert!(long.starts_with("+ Cluster: a-very-long-name +\n| A |\n"));
    }

    #[test]
    fn tsv_and_cells() {
        let rows = vec![json!({"Member": "n1", "Tags": {"a": 1}, "TL": 3})];
        let h = ["Member", "TL", "Tags", "Missing"];
        assert_eq!(
            render_rows(Format::Tsv, &rows, &h, None),
            "Member\tTL\tTags\tMissing\nn1\t3\t{\"a\":1}\t\n"
        );
        assert_eq!(cells(&rows, &h, false)[0][2], "a: 1");
        assert_eq!(tsv(&["x"], &[vec!["a\tb".into()]]), "x\na b\n");
        assert_eq!(yaml11_bool("On"), Some(true));
        assert_eq!(yaml11_bool("OFF"), Some(false));
        assert_eq!(yaml11_bool("y"), None);
    }
}
