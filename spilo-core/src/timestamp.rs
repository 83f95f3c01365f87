//! Timestamps, parsed in one place: what operators and Patroni write (RFC 3339 / ISO 8601 with
//! an offset, in the forms Patroni accepts) and what PostgreSQL prints.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};

/// Why a timestamp was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimestampError {
    /// A date and time without an offset.
    NoTimezone,
    /// Not a timestamp at all.
    Invalid,
}

/// Parse an ISO-8601 / RFC 3339 timestamp with an offset: `2030-01-01T12:00:00+00:00`, `…Z`,
/// a space instead of `T`, fractional seconds, offsets `+HH`, `+HHMM`, `+HH:MM`, seconds
/// optional. A date-time without an offset is [`TimestampError::NoTimezone`].
pub fn parse_timestamp(text: &str) -> Result<DateTime<FixedOffset>, TimestampError> {
    let t = text.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(t) {
        return Ok(ts);
    }
    let zulu = match t.strip_suffix(['Z', 'z']) {
        Some(rest) => format!("{rest}+00:00"),
        None => t.to_string(),
    };
    let with_offset = [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
        "%Y-%m-%d %H:%M%#z",
    ];
    for fmt in with_offset {
        if let Ok(ts) = DateTime::parse_from_str(&zulu, fmt) {
            return Ok(ts);
        }
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    if naive
        .iter()
        .any(|fmt| NaiveDateTime::parse_from_str(t, fmt).is_ok())
        || NaiveDate::parse_from_str(t, "%Y-%m-%d").is_ok()
    {
        return Err(TimestampError::NoTimezone);
    }
    Err(TimestampError::Invalid)
}

/// A timestamp as PostgreSQL prints it (`2024-08-28 19:39:26.352526+00`, `…+00:00`, ISO 8601
/// with `T`); one without an offset is taken as UTC. `None` when it does not parse.
pub fn parse_assuming_utc(text: &str) -> Option<DateTime<FixedOffset>> {
    match parse_timestamp(text) {
        Ok(ts) => Some(ts),
        Err(TimestampError::NoTimezone) => {
            let t = text.trim();
            [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%dT%H:%M",
                "%Y-%m-%d %H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
            .or_else(|| {
                NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
            .map(|n| n.and_utc().fixed_offset())
        }
        Err(TimestampError::Invalid) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_text_with_and_without_offset() {
        let a = parse_assuming_utc("2024-08-28 19:39:26.352526+00").expect("with +00");
        let b = parse_assuming_utc("2024-08-28T19:39:26.352526Z").expect("with Z");
        let c = parse_assuming_utc("2024-08-28 19:39:26.352526").expect("no offset: UTC");
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(
            parse_assuming_utc("2024-08-28 21:39:26.352526+02:00").map(|t| t.timestamp()),
            Some(a.timestamp())
        );
        assert_eq!(parse_assuming_utc("yesterday"), None);
        assert_eq!(
            parse_timestamp("2024-08-28 19:39"),
            Err(TimestampError::NoTimezone)
        );
    }
}
