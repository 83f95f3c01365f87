//! Cron schedules for base backups: five fields (minute, hour, day of month, month, day of
//! week; UTC), each `*`, a number, a range `a-b`, a list `a,b`, and steps `*/n` or `a-b/n`. As
//! in cron, when both day fields are restricted a day matching either runs.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A field that does not parse, with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}': {problem}")]
pub struct ScheduleError {
    /// The whole schedule.
    pub text: String,
    /// What is wrong.
    #[source]
    pub problem: ScheduleProblem,
}

/// What is wrong with a schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleProblem {
    /// Not five fields.
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), found {0}")]
    FieldCount(usize),
    /// A step that is not a number.
    #[error("{field}: bad step '{text}'")]
    BadStep {
        /// The field's name.
        field: &'static str,
        /// The step as written.
        text: String,
    },
    /// A step of 0 or larger than the field's range.
    #[error("{field}: step {step} out of range")]
    StepOutOfRange {
        /// The field's name.
        field: &'static str,
        /// The step.
        step: u32,
    },
    /// A value that is not a number.
    #[error("{field}: bad value '{text}'")]
    BadValue {
        /// The field's name.
        field: &'static str,
        /// The value as written.
        text: String,
    },
    /// A value or range outside the field's range.
    #[error("{field}: {range} is outside {lo}-{hi}")]
    OutOfRange {
        /// The field's name.
        field: &'static str,
        /// The value or range as written.
        range: String,
        /// The field's lowest value.
        lo: u32,
        /// Its highest.
        hi: u32,
    },
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

fn field(text: &str, (name, lo, hi): (&'static str, u32, u32)) -> Result<u64, ScheduleProblem> {
    let bad_value = |t: &str| ScheduleProblem::BadValue {
        field: name,
        text: t.to_string(),
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| ScheduleProblem::BadStep {
                    field: name,
                    text: s.to_string(),
                })?;
                if s == 0 || s > hi {
                    return Err(ScheduleProblem::StepOutOfRange {
                        field: name,
                        step: s,
                    });
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| bad_value(a))?;
            let b: u32 = b.parse().map_err(|_| bad_value(b))?;
            (a, b)
        } else {
            let a: u32 = range.parse().map_err(|_| bad_value(range))?;
            (a, if step > 1 { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(ScheduleProblem::OutOfRange {
                field: name,
                range: range.to_string(),
                lo,
                hi,
            });
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    /// Parses five whitespace-separated fields.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let err = |problem: ScheduleProblem| ScheduleError {
            text: text.to_string(),
            problem,
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(err(ScheduleProblem::FieldCount(parts.len())));
        }
        let mut v = [0u64; 5];
        for (i, p) in parts.iter().enumerate() {
            v[i] = field(p, FIELDS[i]).map_err(err)?;
        }
        // Sunday is 0 or 7.
        let weekdays = if v[4] & (1 << 7) != 0 {
            (v[4] | 1) & 0x7f
        } else {
            v[4]
        };
        Ok(Schedule {
            minutes: v[0],
            hours: v[1],
            days: v[2],
            months: v[3],
            weekdays,
            days_restricted: parts[2] != "*",
            weekdays_restricted: parts[4] != "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first minute strictly after `t` that matches; `None` if none in the next 5 years
    /// (`0 0 31 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut c = start;
        let end = start + Duration::days(5 * 366);
        while c < end {
            if self.months & (1 << c.month()) == 0 || !self.day_matches(&c) {
                c = (c + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if self.hours & (1 << c.hour()) == 0 {
                c = (c + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if self.minutes & (1 << c.minute()) == 0 {
                c += Duration::minutes(1);
                continue;
            }
            return Some(c);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn spilo_default_runs_at_one_every_night() {
        let s = Schedule::parse("0 1 * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 12, 4, 14, 0)),
            Some(at(2026, 12, 5, 1, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 5, 0, 59)),
            Some(at(2026, 12, 5, 1, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 5, 1, 0)),
            Some(at(2026, 12, 6, 1, 0))
        );
    }

    #[test]
    fn steps_lists_ranges_and_weekdays() {
        let s = Schedule::parse("*/15 2-3 * * 1,7").unwrap();
        // 2026-12-06 is a Sunday (7 = 0).
        assert_eq!(
            s.next_after(at(2026, 12, 4, 14, 0)),
            Some(at(2026, 12, 6, 2, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 6, 2, 0)),
            Some(at(2026, 12, 6, 2, 15))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 6, 3, 45)),
            Some(at(2026, 12, 7, 2, 0))
        );
        let every = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            every.next_after(at(2026, 12, 31, 23, 59)),
            Some(at(2027, 1, 1, 0, 0))
        );
        // Either day field matches when both are restricted: the 1st or any Monday.
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert_eq!(
            either.next_after(at(2026, 12, 4, 0, 0)),
            Some(at(2026, 12, 7, 0, 0))
        );
    }

    #[test]
    fn impossible_and_malformed() {
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at(2026, 1, 1, 0, 0)),
            None
        );
        for bad in [
            "",
            "0 1 * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "a * * * *",
            "5-1 * * * *",
            "* * 0 * *",
            "0 1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        let e = Schedule::parse("0 25 * * *").unwrap_err();
        assert!(e.to_string().contains("hour"), "{e}");
    }
}
