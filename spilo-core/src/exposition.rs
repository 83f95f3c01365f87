//! Prometheus text exposition, shared by the daemon's `/metrics` and the proxy's: families with
//! their `# HELP` and `# TYPE` lines, samples with the common labels first, and tables of
//! counters read from several sources (one sample per source, told apart by its labels).

use std::fmt::Write as _;

/// Escape a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escape `# HELP` text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Format a sample value the way Prometheus parses it.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// A family of a table: its name, type (`counter`, `gauge`), help, and how to read a source.
pub struct Family<T> {
    /// The metric name.
    pub name: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The value for one source.
    pub get: fn(&T) -> u64,
}

/// Writes families with the common labels (`scope="…",name="…"`, or none).
pub struct Exposition {
    /// The text so far.
    pub out: String,
    /// The labels every sample starts with (no trailing comma).
    pub labels: String,
}

impl Exposition {
    /// An empty text whose samples carry `labels` first.
    pub fn new(labels: String, capacity: usize) -> Exposition {
        Exposition {
            out: String::with_capacity(capacity),
            labels,
        }
    }

    /// The `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample: the common labels, then `extra_labels` (`,le="1"`: each with a leading
    /// comma).
    pub fn sample(&mut self, name: &str, extra_labels: &str, value: &str) {
        let extra = if self.labels.is_empty() {
            extra_labels.trim_start_matches(',')
        } else {
            extra_labels
        };
        let _ = writeln!(self.out, "{name}{{{}{extra}}} {value}", self.labels);
    }

    /// A one-sample counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        self.sample(name, "", &value.to_string());
    }

    /// A one-sample gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "gauge", help);
        self.sample(name, "", &num(value));
    }

    /// A gauge of 1 or 0.
    pub fn flag(&mut self, name: &str, help: &str, on: bool) {
        self.gauge(name, help, if on { 1.0 } else { 0.0 });
    }

    /// Each family of `families` with one sample per source of `sources` (its extra labels,
    /// each with a leading comma, and the source).
    pub fn table<T>(&mut self, families: &[Family<T>], sources: &[(String, &T)]) {
        for f in families {
            self.header(f.name, f.kind, f.help);
            for (labels, source) in sources {
                self.sample(f.name, labels, &(f.get)(source).to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_values_and_tables_render_as_prometheus_reads_them() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(0.5), "0.5");
        let families = [
            Family::<(u64, u64)> {
                name: "x_total",
                kind: "counter",
                help: "X.\nmore",
                get: |s| s.0,
            },
            Family {
                name: "y",
                kind: "gauge",
                help: "Y.",
                get: |s| s.1,
            },
        ];
        let (a, b) = ((1, 2), (3, 4));
        let mut e = Exposition::new("scope=\"s\"".into(), 0);
        e.table(
            &families,
            &[(",p=\"a\"".into(), &a), (",p=\"b\"".into(), &b)],
        );
        assert_eq!(
            e.out,
            "# HELP x_total X.\\nmore\n# TYPE x_total counter\nx_total{scope=\"s\",p=\"a\"} 1\n\
             x_total{scope=\"s\",p=\"b\"} 3\n# HELP y Y.\n# TYPE y gauge\ny{scope=\"s\",p=\"a\"} 2\n\
             y{scope=\"s\",p=\"b\"} 4\n"
        );
        // Without common labels the first extra label opens the braces.
        let mut bare = Exposition::new(String::new(), 0);
        bare.sample("z", ",p=\"a\"", "1");
        bare.counter("w_total", "W.", 2);
        assert_eq!(
            bare.out,
            "z{p=\"a\"} 1\n# HELP w_total W.\n# TYPE w_total counter\nw_total{} 2\n"
        );
    }
}
