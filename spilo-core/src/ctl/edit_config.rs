//! `spiloctl edit-config`: change the `config` key with compare-and-set on its version.
//!
//! The new value is built from the current one by, in order: `--replace` (a whole new
//! document), `--apply` (a recursive merge; `null` deletes), `-s key.path=value` and
//! `-p guc=value` (YAML values; `null` or nothing deletes). Without any of these, on a
//! terminal, the YAML opens in `$EDITOR`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::common::{fail, CtlError, CtlResult, Ctx};
use super::output::{from_yaml, to_yaml, yaml11_bool};
use crate::config::DynamicConfig;
use crate::dcs::Cas;

/// What to change.
#[derive(Clone, Debug, Default)]
pub struct EditArgs {
    /// `-s key.path=value`.
    pub set: Vec<String>,
    /// `-p guc=value`.
    pub pg: Vec<String>,
    /// `--apply FILE|-`.
    pub apply: Option<String>,
    /// `--replace FILE|-`.
    pub replace: Option<String>,
    /// Do not ask.
    pub force: bool,
}

impl EditArgs {
    fn has_changes(&self) -> bool {
        !self.set.is_empty()
            || !self.pg.is_empty()
            || self.apply.is_some()
            || self.replace.is_some()
    }
}

/// Parsed changes, ready to apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// A whole new document.
    pub replace: Option<Value>,
    /// Documents merged in.
    pub apply: Vec<Value>,
    /// Paths set (`null` deletes).
    pub set: Vec<(Vec<String>, Value)>,
}

/// `key=value` split at the first `=`; the key must not be empty.
pub fn parse_assignment(s: &str) -> CtlResult<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => fail(format!("invalid change {s:?}: expected key=value")),
    }
}

/// A command-line value read as YAML (`10` a number, `null`/empty deletes, `[a, b]` a list);
/// the YAML 1.1 words Patroni reads as booleans (`on`, `yes`, `off`…) are booleans too; text
/// that is not valid YAML is taken as a string.
pub fn parse_value(text: &str) -> Value {
    if let Some(b) = yaml11_bool(text.trim()) {
        return Value::Bool(b);
    }
    from_yaml(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// A dotted key as a path. Below `postgresql.parameters` the rest is one GUC name
/// (`pg_stat_statements.track`).
pub fn key_path(key: &str) -> CtlResult<Vec<String>> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return fail(format!("invalid key {key:?}: empty path segment"));
    }
    if parts.len() > 3 && parts[0] == "postgresql" && parts[1] == "parameters" {
        return Ok(vec![
            "postgresql".into(),
            "parameters".into(),
            parts[2..].join("."),
        ]);
    }
    Ok(parts.into_iter().map(str::to_string).collect())
}

/// Set `path` in `doc` to `value`, making objects on the way (replacing non-objects); a
/// `null` value deletes the key instead.
pub fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if value.is_null() {
        delete_path(doc, path);
        return;
    }
    let mut cur = doc;
    for p in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .expect("an object")
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut()
        .expect("an object")
        .insert(last.clone(), value);
}

/// Remove `path` from `doc`; nothing happens when it is not there.
pub fn delete_path(doc: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = doc;
    for p in parents {
        match cur.get_mut(p.as_str()) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(o) = cur.as_object_mut() {
        o.remove(last.as_str());
    }
}

/// Merge `patch` into `base` (RFC 7396 JSON merge-patch, as `PATCH /config` does it:
/// [`crate::api::config_edit::merge_patch`]): objects recursively, a `null` deletes the key,
/// anything else replaces.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base.as_object_mut(), patch.as_object()) {
        (Some(b), Some(p)) => {
            crate::api::config_edit::merge_patch(b, p);
        }
        _ => *base = crate::api::config_edit::strip_nulls(patch),
    }
}

/// The `-s` and `-p` arguments as path changes.
pub fn parse_sets(set: &[String], pg: &[String]) -> CtlResult<Vec<(Vec<String>, Value)>> {
    let mut out = Vec::new();
    for s in set {
        let (k, v) = parse_assignment(s)?;
        out.push((key_path(&k)?, parse_value(&v)));
    }
    for s in pg {
        let (k, v) = parse_assignment(s)?;
        out.push((
            vec!["postgresql".into(), "parameters".into(), k],
            parse_value(&v),
        ));
    }
    Ok(out)
}

/// The new document.
pub fn apply_changes(current: &Value, changes: &Changes) -> Value {
    let mut doc = changes
        .replace
        .as_ref()
        .map(crate::api::config_edit::strip_nulls)
        .unwrap_or_else(|| current.clone());
    for a in &changes.apply {
        merge(&mut doc, a);
    }
    for (path, v) in &changes.set {
        set_path(&mut doc, path, v.clone());
    }
    doc
}

/// The new value must be a mapping that reads as a dynamic configuration.
pub fn validate(doc: &Value) -> CtlResult {
    if !doc.is_object() {
        return fail("the new configuration is not a mapping");
    }
    serde_json::from_value::<DynamicConfig>(doc.clone())
        .map(|_| ())
        .map_err(|e| CtlError(format!("the new configuration is not valid: {e}")))
}

// ----------------------------------------------------------------------------------------------
// Line diff

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Same(usize, usize),
    Del(usize),
    Ins(usize),
}

/// The edit script from `a` to `b` (longest common subsequence).
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // Past a few million cells, skip the alignment: everything old out, everything new in.
    if n.saturating_mul(m) > 4_000_000 {
        return (0..n).map(Op::Del).chain((0..m).map(Op::Ins)).collect();
    }
    // lcs[i][j]: common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(Op::Del(i));
            i += 1;
        } else {
            ops.push(Op::Ins(j));
            j += 1;
        }
    }
    ops
}

/// A unified diff of two texts with `context` lines around changes; "" when equal. With
/// `color`, removed lines are red, added green, hunk headers cyan.
pub fn line_diff(before: &str, after: &str, context: usize, color: bool) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let ops = edit_script(&a, &b);
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| !matches!(o, Op::Same(..)))
        .map(|(i, _)| i)
        .collect();
    if changed.is_empty() {
        return String::new();
    }
    let paint = |code: &str, s: String| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s
        }
    };
    // Group changes whose context windows touch into hunks of op indexes.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &c in &changed {
        let lo = c.saturating_sub(context);
        let hi = (c + context + 1).min(ops.len());
        match hunks.last_mut() {
            Some((_, end)) if lo <= *end => *end = hi,
            _ => hunks.push((lo, hi)),
        }
    }
    let mut out = String::new();
    out.push_str(&paint("1", "--- before".into()));
    out.push('\n');
    out.push_str(&paint("1", "+++ after".into()));
    out.push('\n');
    for (lo, hi) in hunks {
        let slice = &ops[lo..hi];
        // Where the hunk starts in each text (the line *before* it when it has none there).
        let (mut a_start, mut b_start) = (None, None);
        let (mut a_len, mut b_len) = (0, 0);
        for o in slice {
            match *o {
                Op::Same(i, j) => {
                    a_start.get_or_insert(i);
                    b_start.get_or_insert(j);
                    a_len += 1;
                    b_len += 1;
                }
                Op::Del(i) => {
                    a_start.get_or_insert(i);
                    a_len += 1;
                }
                Op::Ins(j) => {
                    b_start.get_or_insert(j);
                    b_len += 1;
                }
            }
        }
        // Position before the hunk in a text it does not touch: count what came before.
        let before_ops = &ops[..lo];
        let a_prev = before_ops
            .iter()
            .filter(|o| !matches!(o, Op::Ins(_)))
            .count();
        let b_prev = before_ops
            .iter()
            .filter(|o| !matches!(o, Op::Del(_)))
            .count();
        let range = |start: Option<usize>, prev: usize, len: usize| match start {
            Some(s) => format!("{},{}", s + 1, len),
            None => format!("{prev},0"),
        };
        out.push_str(&paint(
            "36",
            format!(
                "@@ -{} +{} @@",
                range(a_start, a_prev, a_len),
                range(b_start, b_prev, b_len)
            ),
        ));
        out.push('\n');
        for o in slice {
            let line = match *o {
                Op::Same(i, _) => format!(" {}", a[i]),
                Op::Del(i) => paint("31", format!("-{}", a[i])),
                Op::Ins(j) => paint("32", format!("+{}", b[j])),
            };
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Running it

fn read_source(src: &str, what: &str) -> CtlResult<Value> {
    let text = if src == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CtlError(format!("cannot read {what} from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(src)
            .map_err(|e| CtlError(format!("cannot read {what} file {src}: {e}")))?
    };
    let v = from_yaml(&text).map_err(|e| CtlError(format!("{what} {src}: invalid YAML: {e}")))?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => fail(format!("{what} {src}: not a mapping")),
    }
}

/// Parse the arguments into [`Changes`] (reading files or stdin).
pub fn changes_from_args(args: &EditArgs) -> CtlResult<Changes> {
    if args.apply.as_deref() == Some("-") && args.replace.as_deref() == Some("-") {
        return fail("--apply and --replace cannot both read stdin");
    }
    Ok(Changes {
        replace: args
            .replace
            .as_deref()
            .map(|s| read_source(s, "--replace"))
            .transpose()?,
        apply: args
            .apply
            .as_deref()
            .map(|s| read_source(s, "--apply"))
            .transpose()?
            .into_iter()
            .collect(),
        set: parse_sets(&args.set, &args.pg)?,
    })
}

/// Edit `yaml` in `$VISUAL`/`$EDITOR` (default `vi`) and return the saved text.
fn run_editor(yaml: &str) -> CtlResult<String> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path: PathBuf = std::env::temp_dir().join(format!(
        "spiloctl-config-{}-{stamp}.yaml",
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CtlError(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(yaml.as_bytes())
            .map_err(|e| CtlError(format!("cannot write {}: {e}", path.display())))?;
    }
    #[allow(clippy::disallowed_methods)] // spiloctl edit-config runs the user's $EDITOR
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status();
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return fail(format!("the editor ({editor}) failed: {s}")),
        Err(e) => return fail(format!("cannot run the editor ({editor}): {e}")),
    }
    text.map_err(|e| CtlError(format!("cannot read back {}: {e}", path.display())))
}

/// `spiloctl edit-config`.
pub async fn run(ctx: &Ctx, args: &EditArgs) -> CtlResult {
    if !args.has_changes() && !ctx.console.interactive {
        return fail(
            "nothing to change: give -s, -p, --apply or --replace (or run on a terminal to edit \
             in $EDITOR)",
        );
    }
    let mut changes = changes_from_args(args)?;
    let snap = ctx
        .dcs
        .snapshot()
        .await
        .map_err(|e| CtlError(format!("cannot read the config from the DCS: {e}")))?;
    let (current, cas) = match snap.get("config") {
        None => (Value::Object(Map::new()), Cas::Absent),
        Some(e) => {
            let parsed = std::str::from_utf8(&e.value)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
                .filter(Value::is_object);
            match parsed {
                Some(v) => (v, Cas::Version(e.version)),
                None if changes.replace.is_some() => {
                    (Value::Object(Map::new()), Cas::Version(e.version))
                }
                None => {
                    return fail(
                        "the config key in the DCS is not a JSON object; overwrite it with \
                         --replace",
                    )
                }
            }
        }
    };
    let before = to_yaml(&current);
    if !args.has_changes() {
        let edited = run_editor(&before)?;
        let v = from_yaml(&edited).map_err(|e| CtlError(format!("invalid YAML: {e}")))?;
        changes.replace = Some(if v.is_null() {
            Value::Object(Map::new())
        } else {
            v
        });
    }
    let new = apply_changes(&current, &changes);
    if new == current {
        println!("Nothing changed");
        return Ok(());
    }
    validate(&new)?;
    let after = to_yaml(&new);
    print!(
        "{}",
        line_diff(&before, &after, 3, std::io::stdout().is_terminal())
    );
    println!();
    ctx.console.confirm("Apply these changes?", args.force)?;
    let body = serde_json::to_vec(&new).expect("JSON values serialize");
    match ctx.dcs.put("config", &body, cas).await {
        Ok(true) => {
            println!("Configuration changed");
            Ok(())
        }
        Ok(false) => fail("Config modification aborted due to concurrent changes"),
        Err(e) => fail(format!("cannot write the config key: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(s: &str) -> Vec<String> {
        key_path(s).unwrap()
    }

    #[test]
    fn dotted_paths_set_and_delete() {
        let mut doc = json!({"loop_wait": 10, "postgresql": {"parameters": {"a": 1}}, "x": 5});
        set_path(&mut doc, &p("loop_wait"), json!(3));
        set_path(
            &mut doc,
            &p("postgresql.parameters.max_connections"),
            json!(200),
        );
        set_path(&mut doc, &p("x.y.z"), json!("deep")); // replaces the scalar
        set_path(&mut doc, &p("new.key"), json!([1]));
        set_path(&mut doc, &p("postgresql.parameters.a"), Value::Null);
        set_path(&mut doc, &p("missing.path"), Value::Null); // no-op
        assert_eq!(
            doc,
            json!({"loop_wait": 3, "new": {"key": [1]}, "x": {"y": {"z": "deep"}},
                   "postgresql": {"parameters": {"max_connections": 200}}})
        );
        delete_path(&mut doc, &p("x.y"));
        delete_path(&mut doc, &p("loop_wait.nope"));
        assert_eq!(doc["x"], json!({}));
        assert_eq!(doc["loop_wait"], 3);
    }

    #[test]
    fn key_paths_keep_guc_names_whole() {
        assert_eq!(
            p("postgresql.parameters.pg_stat_statements.track"),
            vec!["postgresql", "parameters", "pg_stat_statements.track"]
        );
        assert_eq!(p("a.b.c.d"), vec!["a", "b", "c", "d"]);
        assert!(key_path("a..b").is_err());
        assert!(key_path("").is_err());
        assert!(parse_assignment("novalue").is_err());
        assert!(parse_assignment("=1").is_err());
        assert_eq!(
            parse_assignment("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
    }

    #[test]
    fn values_are_yaml() {
        assert_eq!(parse_value("10"), json!(10));
        assert_eq!(parse_value("on"), json!(true));
        assert_eq!(parse_value("OFF"), json!(false));
        assert_eq!(parse_value("null"), Value::Null);
        assert_eq!(parse_value(""), Value::Null);
        assert_eq!(parse_value("32MB"), json!("32MB"));
        assert_eq!(parse_value("'10'"), json!("10"));
        assert_eq!(parse_value("[a, b]"), json!(["a", "b"]));
        assert_eq!(parse_value("{x: 1}"), json!({"x": 1}));
        // Not YAML: kept as text.
        assert_eq!(parse_value("\"$user\", public"), json!("\"$user\", public"));
        let sets = parse_sets(
            &["synchronous_mode=true".into(), "ttl=".into()],
            &["pg_stat_statements.track=all".into()],
        )
        .unwrap();
        assert_eq!(
            sets,
            vec![
                (vec!["synchronous_mode".to_string()], json!(true)),
                (vec!["ttl".to_string()], Value::Null),
                (
                    vec![
                        "postgresql".to_string(),
                        "parameters".into(),
                        "pg_stat_statements.track".into()
                    ],
                    json!("all")
                ),
            ]
        );
        assert!(parse_sets(&["bad".into()], &[]).is_err());
    }

    #[test]
    fn recursive_merge() {
        let mut base = json!({"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": [1, 2], "g": "x"});
        merge(
            &mut base,
            &json!({"a": null, "b": {"d": {"e": null, "h": 4}, "i": {"j": null, "k": 5}},
                    "f": [3], "g": {"now": "object"}, "missing": null}),
        );
        assert_eq!(
            base,
            json!({"b": {"c": 2, "d": {"h": 4}, "i": {"k": 5}}, "f": [3], "g": {"now": "object"}})
        );
    }

    #[test]
    fn changes_apply_in_order() {
        let current = json!({"ttl": 30, "loop_wait": 10, "pause": true});
        let ch = Changes {
            replace: Some(json!({"ttl": 20, "retry_timeout": 5, "gone": null})),
            apply: vec![json!({"postgresql": {"parameters": {"work_mem": "8MB"}}})],
            set: vec![
                (p("ttl"), json!(40)),
                (p("postgresql.parameters.work_mem"), Value::Null),
            ],
        };
        assert_eq!(
            apply_changes(&current, &ch),
            json!({"ttl": 40, "retry_timeout": 5, "postgresql": {"parameters": {}}})
        );
        let none = Changes::default();
        assert_eq!(apply_changes(&current, &none), current);
    }

    #[test]
    fn validation() {
        assert!(validate(&json!({"loop_wait": 3})).is_ok());
        assert!(validate(&json!({})).is_ok());
        assert!(validate(&json!([]))
            .unwrap_err()
            .0
            .contains("not a mapping"));
        assert!(validate(&json!({"loop_wait": "soon"}))
            .unwrap_err()
            .0
            .contains("not valid"));
        assert!(validate(&json!({"pause": "on"})).is_err());
    }

    #[test]
    fn diff_hunks() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n";
        let after = "a\nB\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\n";
        assert_eq!(
            line_diff(before, after, 2, false),
            "--- before\n+++ after\n\
             @@ -1,4 +1,4 @@\n a\n-b\n+B\n c\n d\n\
             @@ -10,2 +10,3 @@\n j\n k\n+l\n"
        );
        assert_eq!(line_diff(before, before, 3, false), "");
        assert_eq!(
            line_diff("", "x: 1\n", 3, false),
            "--- before\n+++ after\n@@ -0,0 +1,1 @@\n+x: 1\n"
        );
        assert_eq!(
            line_diff("x\ny\n", "y\n", 0, false),
            "--- before\n+++ after\n@@ -1,1 +0,0 @@\n-x\n"
        );
        let colored = line_diff("x\n", "y\n", 3, true);
        assert!(colored.contains("\x1b[31m-x\x1b[0m") && colored.contains("\x1b[32m+y\x1b[0m"));
    }

    #[test]
    fn diff_of_rendered_configs() {
        let before = to_yaml(&json!({"loop_wait": 10, "ttl": 30}));
        let after = to_yaml(&json!({"loop_wait": 3, "ttl": 30}));
        assert_eq!(
            line_diff(&before, &after, 3, false),
            "--- before\n+++ after\n@@ -1,2 +1,2 @@\n-loop_wait: 10\n+loop_wait: 3\n ttl: 30\n"
        );
    }

    #[tokio::test]
    async fn writes_with_compare_and_set() {
        use std::sync::Arc;

        use crate::ctl::common::tests::{ctx, MemDcs};

        let dcs = Arc::new(MemDcs::default());
        let ctx = ctx(dcs.clone());
        // No key yet: created.
        let set = |s: &[&str], force| EditArgs {
            set: s.iter().map(|x| x.to_string()).collect(),
            force,
            ..EditArgs::default()
        };
        run(&ctx, &set(&["ttl=30"], true)).await.unwrap();
        assert_eq!(dcs.get("config").unwrap(), r#"{"ttl":30}"#);
        run(&ctx, &set(&["loop_wait=3"], true)).await.unwrap();
        assert_eq!(dcs.get("config").unwrap(), r#"{"loop_wait":3,"ttl":30}"#);
        // Nothing to change, nothing written; unconfirmed, nothing written.
        run(&ctx, &set(&["loop_wait=3"], true)).await.unwrap();
        let e = run(&ctx, &set(&["ttl=20"], false)).await.unwrap_err();
        assert!(e.0.contains("not confirmed"), "{e}");
        assert!(run(&ctx, &EditArgs::default())
            .await
            .unwrap_err()
            .0
            .starts_with("nothing to change"));
        // Somebody writes between our read and our write.
        *dcs.bump_after_read.lock().unwrap() = Some("config".into());
        let e = run(&ctx, &set(&["ttl=20"], true)).await.unwrap_err();
        assert_eq!(e.0, "Config modification aborted due to concurrent changes");
        assert_eq!(dcs.get("config").unwrap(), r#"{"loop_wait":3,"ttl":30}"#);
        // A key that is not JSON can only be replaced.
        *dcs.bump_after_read.lock().unwrap() = None;
        dcs.set("config", "garbage");
        assert!(run(&ctx, &set(&["ttl=20"], true))
            .await
            .unwrap_err()
            .0
            .contains("--replace"));
    }

    #[test]
    fn changes_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let apply = dir.path().join("apply.yaml");
        let replace = dir.path().join("replace.yaml");
        std::fs::write(
            &apply,
            "postgresql:\n  parameters:\n    work_mem: 8MB\nttl: null\n",
        )
        .unwrap();
        std::fs::write(&replace, "ttl: 20\nloop_wait: 5\n").unwrap();
        let args = EditArgs {
            set: vec!["retry_timeout=7".into()],
            pg: vec!["max_connections=200".into()],
            apply: Some(apply.display().to_string()),
            replace: Some(replace.display().to_string()),
            force: true,
        };
        let ch = changes_from_args(&args).unwrap();
        assert_eq!(
            apply_changes(&json!({"pause": true}), &ch),
            json!({"loop_wait": 5, "retry_timeout": 7,
                   "postgresql": {"parameters": {"work_mem": "8MB", "max_connections": 200}}})
        );
        let list = dir.path().join("list.yaml");
        std::fs::write(&list, "- a\n").unwrap();
        let bad = EditArgs {
            apply: Some(list.display().to_string()),
            ..EditArgs::default()
        };
        assert!(changes_from_args(&bad)
            .unwrap_err()
            .0
            .contains("not a mapping"));
        let missing = EditArgs {
            replace: Some("/nonexistent/x.yaml".into()),
            ..EditArgs::default()
        };
        assert!(changes_from_args(&missing)
            .unwrap_err()
            .0
            .contains("cannot read --replace"));
        let both = EditArgs {
            apply: Some("-".into()),
            replace: Some("-".into()),
            ..EditArgs::default()
        };
        assert!(changes_from_args(&both)
            .unwrap_err()
            .0
            .contains("both read stdin"));
    }
}
