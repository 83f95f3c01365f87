//! The accepted range of every number in the dynamic configuration, and the two ways a value
//! outside it is treated.
//!
//! - **From the DCS** (any client can write the `config` key: etcdctl, `patronictl
//!   edit-config`, another daemon's REST API) a value is never refused, because refusing would
//!   leave the node without a configuration: [`sanitize_from_dcs`] clamps a number into its range
//!   and drops a value that is not a number at all (its default applies), each with a warning
//!   that names the key, the value found and the value used. The rest of the configuration stays
//!   in force.
//! - **Through the REST API** (`PATCH`/`PUT /config`) and in the local YAML the same value is
//!   refused, naming the key: [`check_strict`].
//!
//! The ceilings keep every duration the daemon computes from these values (`Instant + ttl`,
//! `2 * ttl`, an etcd lease TTL, a ZooKeeper session timeout) far from any overflow and inside
//! what the stores accept (etcd refuses a lease TTL above about 9e9 s, and then every
//! keep-alive fails).

use serde_json::{Map, Value};

/// The range of one numeric key of the dynamic configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The key at the top of the dynamic configuration.
    pub key: &'static str,
    /// Smallest accepted value.
    pub min: u64,
    /// Largest accepted value.
    pub max: u64,
    /// What the number counts, for messages (`seconds`, `bytes`).
    pub unit: &'static str,
}

/// `ttl`: the leader lease, seconds. The floor is spilo's (Patroni's is 20); one day is far
/// beyond any sensible lease.
pub const TTL: Limit = Limit {
    key: "ttl",
    min: 5,
    max: 86_400,
    unit: "seconds",
};
/// `loop_wait`: seconds between HA cycles.
pub const LOOP_WAIT: Limit = Limit {
    key: "loop_wait",
    min: 1,
    max: 3_600,
    unit: "seconds",
};
/// `retry_timeout`: the deadline of one DCS or PostgreSQL operation, seconds.
pub const RETRY_TIMEOUT: Limit = Limit {
    key: "retry_timeout",
    min: 1,
    max: 3_600,
    unit: "seconds",
};
/// `primary_start_timeout` (and its old name `master_start_timeout`), seconds.
pub const PRIMARY_START_TIMEOUT: Limit = Limit {
    key: "primary_start_timeout",
    min: 0,
    max: 604_800,
    unit: "seconds",
};
/// `master_start_timeout`: the old name of `primary_start_timeout`.
pub const MASTER_START_TIMEOUT: Limit = Limit {
    key: "master_start_timeout",
    ..PRIMARY_START_TIMEOUT
};
/// `primary_stop_timeout` (and `master_stop_timeout`), seconds; 0 means no limit.
pub const PRIMARY_STOP_TIMEOUT: Limit = Limit {
    key: "primary_stop_timeout",
    min: 0,
    max: 604_800,
    unit: "seconds",
};
/// `master_stop_timeout`: the old name of `primary_stop_timeout`.
pub const MASTER_STOP_TIMEOUT: Limit = Limit {
    key: "master_stop_timeout",
    ..PRIMARY_STOP_TIMEOUT
};
/// `maximum_lag_on_failover`, bytes of WAL (up to PostgreSQL's largest LSN difference).
pub const MAXIMUM_LAG_ON_FAILOVER: Limit = Limit {
    key: "maximum_lag_on_failover",
    min: 0,
    max: i64::MAX as u64,
    unit: "bytes",
};
/// `synchronous_node_count`: how many synchronous standbys.
pub const SYNCHRONOUS_NODE_COUNT: Limit = Limit {
    key: "synchronous_node_count",
    min: 1,
    max: 1_000,
    unit: "standbys",
};

// The timing relation `loop_wait + 2*retry_timeout <= ttl` can always be met within the ranges.
const _: () = assert!(LOOP_WAIT.min + 2 * RETRY_TIMEOUT.min <= TTL.min);

/// Every numeric key with a range.
pub const NUMERIC: &[Limit] = &[
    TTL,
    LOOP_WAIT,
    RETRY_TIMEOUT,
    PRIMARY_START_TIMEOUT,
    MASTER_START_TIMEOUT,
    PRIMARY_STOP_TIMEOUT,
    MASTER_STOP_TIMEOUT,
    MAXIMUM_LAG_ON_FAILOVER,
    SYNCHRONOUS_NODE_COUNT,
];

/// The boolean keys of the dynamic configuration that spilo reads as typed fields.
pub const BOOLEAN: &[&str] = &["pause", "check_timeline"];

/// What a number found in the DCS became.
#[derive(Debug, PartialEq)]
enum Reading {
    /// In range, a whole number: kept (possibly converted from a string or `30.0`).
    Valid(u64),
    /// A number outside the range or with a fraction: replaced by the nearest accepted value.
    Clamped(u64),
    /// Not a number: dropped, the default applies.
    Unusable,
}

/// Reads a JSON value as a number of `limit`'s unit, as leniently as Patroni reads the DCS:
/// integers, integer strings (`"30"`), and floats (rounded up: `2.5` s → 3 s).
fn read_number(v: &Value, limit: &Limit) -> Reading {
    let clamp = |x: f64| -> Reading {
        if x.is_nan() {
            return Reading::Unusable;
        }
        let min = limit.min as f64;
        let max = limit.max as f64;
        if x < min {
            Reading::Clamped(limit.min)
        } else if x > max {
            Reading::Clamped(limit.max)
        } else if x.fract() != 0.0 {
            // ceil of a value in [min, max] stays within u64 and at most max (max is whole).
            Reading::Clamped((x.ceil() as u64).min(limit.max))
        } else {
            Reading::Valid(x as u64)
        }
    };
    let exact = |n: i128| -> Reading {
        if n < i128::from(limit.min) {
            Reading::Clamped(limit.min)
        } else if n > i128::from(limit.max) {
            Reading::Clamped(limit.max)
        } else {
            Reading::Valid(n as u64)
        }
    };
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                exact(i128::from(u))
            } else if let Some(i) = n.as_i64() {
                exact(i128::from(i))
            } else {
                n.as_f64().map(clamp).unwrap_or(Reading::Unusable)
            }
        }
        Value::String(s) => {
            let t = s.trim();
            if let Ok(i) = t.parse::<i128>() {
                exact(i)
            } else if let Ok(f) = t.parse::<f64>() {
                if f.is_finite() {
                    clamp(f)
                } else if f.is_nan() {
                    Reading::Unusable
                } else {
                    clamp(if f > 0.0 { f64::MAX } else { f64::MIN })
                }
            } else {
                Reading::Unusable
            }
        }
        _ => Reading::Unusable,
    }
}

/// Reads a JSON value as a boolean the way Patroni does (`true`, `"on"`, `"yes"`, `1`…).
fn read_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "on" | "yes" | "1" => Some(true),
            "false" | "off" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A short rendering of a value for a warning (long strings and nested values cut).
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// Makes a `config` value read from the DCS usable, never failing: numbers are clamped into
/// their range and written back as integers, non-numbers and non-booleans are removed (their
/// default applies), a `postgresql` that is not an object is removed. Returns one warning per
/// change, naming the key, what was found and what is used.
pub fn sanitize_from_dcs(config: &mut Map<String, Value>) -> Vec<String> {
    let mut warnings = Vec::new();
    for limit in NUMERIC {
        let Some(v) = config.get(limit.key) else {
            continue;
        };
        if v.is_null() {
            // Patroni treats null as absent.
            config.remove(limit.key);
            continue;
        }
        match read_number(v, limit) {
            Reading::Valid(n) => {
                if !v.is_u64() {
                    config.insert(limit.key.into(), Value::from(n));
                }
            }
            Reading::Clamped(n) => {
                warnings.push(format!(
                    "{}: {} is outside {}..={} {}; using {n}",
                    limit.key,
                    shown(v),
                    limit.min,
                    limit.max,
                    limit.unit
                ));
                config.insert(limit.key.into(), Value::from(n));
            }
            Reading::Unusable => {
                warnings.push(format!(
                    "{}: {} is not a number of {}; using the default",
                    limit.key,
                    shown(v),
                    limit.unit
                ));
                config.remove(limit.key);
            }
        }
    }
    for key in BOOLEAN {
        let Some(v) = config.get(*key) else { continue };
        if v.is_null() {
            config.remove(*key);
            continue;
        }
        match read_bool(v) {
            Some(b) => {
                if !v.is_boolean() {
                    config.insert((*key).into(), Value::Bool(b));
                }
            }
            None => {
                warnings.push(format!(
                    "{key}: {} is not a boolean; using the default (false)",
                    shown(v)
                ));
                config.remove(*key);
            }
        }
    }
    if let Some(pg) = config.get("postgresql") {
        if !pg.is_object() && !pg.is_null() {
            warnings.push(format!(
                "postgresql: {} is not an object; ignored",
                shown(pg)
            ));
            config.remove("postgresql");
        }
    }
    warnings
}

/// A key of a configuration written through the REST API with a value of the wrong kind or
/// out of its range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StrictError {
    /// A numeric key that is not a whole number within its range.
    #[error("{}: must be a whole number of {} from {} to {} (got {got})", limit.key, limit.unit, limit.min, limit.max)]
    Numeric {
        /// The key's limit.
        limit: &'static Limit,
        /// The value, as shown.
        got: String,
    },
    /// A boolean key that is not a boolean.
    #[error("{key}: must be true or false (got {got})")]
    Boolean {
        /// The key.
        key: &'static str,
        /// The value, as shown.
        got: String,
    },
    /// `postgresql` that is not an object.
    #[error("postgresql: must be an object (got {0})")]
    PostgresqlNotAnObject(String),
}

/// Checks a configuration written through the REST API (or the local YAML): every numeric key
/// present must be a whole number within its range, every boolean key a boolean. The error
/// names the key, the range and the value: `ttl: must be a whole number of seconds from 5 to
/// 86400 (got 4000000000000)`.
pub fn check_strict(config: &Map<String, Value>) -> Result<(), StrictError> {
    for limit in NUMERIC {
        let Some(v) = config.get(limit.key) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        let ok = v
            .as_u64()
            .map(|n| (limit.min..=limit.max).contains(&n))
            .unwrap_or(false);
        if !ok {
            return Err(StrictError::Numeric {
                limit,
                got: shown(v),
            });
        }
    }
    for key in BOOLEAN {
        if let Some(v) = config.get(*key) {
            if !v.is_boolean() && !v.is_null() {
                return Err(StrictError::Boolean { key, got: shown(v) });
            }
        }
    }
    if let Some(pg) = config.get("postgresql") {
        if !pg.is_object() && !pg.is_null() {
            return Err(StrictError::PostgresqlNotAnObject(shown(pg)));
        }
    }
    Ok(())
}

/// The limit for `key`, if it is one of [`NUMERIC`].
pub fn limit_of(key: &str) -> Option<&'static Limit> {
    NUMERIC.iter().find(|l| l.key == key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sanitized(v: Value) -> (Value, Vec<String>) {
        let Value::Object(mut m) = v else {
            panic!("not an object")
        };
        let w = sanitize_from_dcs(&mut m);
        (Value::Object(m), w)
    }

    #[test]
    fn absurd_and_neighbouring_ttls_from_the_dcs_are_clamped_with_a_warning() {
        let cases = [
            (json!(9_223_372_036_854_775_807u64), Some(86_400)),
            (json!(u64::MAX), Some(86_400)),
            (json!(4_000_000_000_000u64), Some(86_400)),
            (json!(86_401), Some(86_400)),
            (json!(-1), Some(5)),
            (json!(i64::MIN), Some(5)),
            (json!(0), Some(5)),
            (json!(4), Some(5)),
            (json!(2.5), Some(5)),
            (json!(10.5), Some(11)),
            (json!(1e300), Some(86_400)),
            (json!(-1e300), Some(5)),
            (json!("1e999"), Some(86_400)),
            (json!("-inf"), Some(5)),
            (json!("99999999999999999999999999"), Some(86_400)),
        ];
        for (v, want) in cases {
            let (out, w) = sanitized(json!({"ttl": v.clone(), "loop_wait": 2}));
            assert_eq!(out["ttl"], json!(want.unwrap()), "ttl {v}");
            assert_eq!(w.len(), 1, "one warning for ttl {v}: {w:?}");
            assert!(w[0].starts_with("ttl: "), "{w:?}");
            assert!(w[0].contains(&format!("using {}", want.unwrap())), "{w:?}");
        }
    }

    #[test]
    fn valid_values_pass_unchanged_and_integer_strings_and_floats_are_normalised() {
        let (out, w) = sanitized(json!({"ttl": 30, "loop_wait": "10", "retry_timeout": 10.0,
                                        "maximum_lag_on_failover": 1048576}));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            out,
            json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10,
                   "maximum_lag_on_failover": 1048576})
        );
    }

    #[test]
    fn non_numbers_are_dropped_so_the_default_applies() {
        for v in [
            json!("abc"),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("NaN"),
        ] {
            let (out, w) = sanitized(json!({"ttl": v.clone(), "loop_wait": 2}));
            assert!(out.get("ttl").is_none(), "{v}");
            assert_eq!(out["loop_wait"], json!(2));
            assert!(w[0].contains("not a number"), "{w:?}");
        }
        let (out, w) = sanitized(json!({"ttl": null}));
        assert!(out.get("ttl").is_none() && w.is_empty());
    }

    #[test]
    fn booleans_are_read_as_patroni_reads_them() {
        let (out, w) = sanitized(json!({"pause": "on", "check_timeline": 0}));
        assert!(w.is_empty());
        assert_eq!(out, json!({"pause": true, "check_timeline": false}));
        let (out, w) = sanitized(json!({"pause": "maybe", "postgresql": 3}));
        assert_eq!(out, json!({}));
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn the_strict_check_names_the_key_and_the_range() {
        let err = |v: Value| {
            check_strict(v.as_object().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(json!({"ttl": 4_000_000_000_000u64})),
            "ttl: must be a whole number of seconds from 5 to 86400 (got 4000000000000)"
        );
        assert!(err(json!({"loop_wait": -1})).starts_with("loop_wait: "));
        assert!(err(json!({"retry_timeout": 1.5})).starts_with("retry_timeout: "));
        assert!(err(json!({"retry_timeout": "10"})).contains("(got \"10\")"));
        assert!(err(json!({"primary_start_timeout": 604_801})).starts_with("primary_start"));
        assert!(err(json!({"pause": "yes"})).starts_with("pause: "));
        assert!(check_strict(
            json!({"ttl": 30, "loop_wait": 10, "pause": true})
                .as_object()
                .unwrap()
        )
        .is_ok());
        assert!(check_strict(json!({"ttl": null}).as_object().unwrap()).is_ok());
    }

    #[test]
    fn every_limit_is_consistent() {
        for l in NUMERIC {
            assert!(l.min <= l.max, "{}", l.key);
            assert_eq!(limit_of(l.key), Some(l));
        }
        // A ttl at its ceiling, doubled and added to an Instant, cannot overflow.
        assert!(crate::clock::now()
            .checked_add(std::time::Duration::from_secs(4 * TTL.max))
            .is_some());
    }
}
