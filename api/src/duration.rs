//! Duration strings used in resource specs (`12h`, `1h30m`, `7d`, `900`): parsing and
//! formatting. Pure, no I/O.
//!
//! The grammar is deliberately small: whole numbers followed by a unit, units in
//! descending order (`d`, `h`, `m`, `s`), each unit at most once. A bare number means
//! seconds. No fractions, no signs, no spaces inside: a value a person can read at a
//! glance and that means the same thing to the registry, the operator and the CRD schema.

use std::time::Duration;

/// The regular expression the CRD schema uses for duration fields; it accepts the same
/// strings as [`parse_duration`], except that it cannot see overflow or an empty string.
pub const DURATION_SCHEMA_PATTERN: &str = r"^([0-9]+|([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?)$";

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration; write a number with a unit, like 90s, 5m, 12h or 7d")]
    Empty,
    /// A leading `-`.
    #[error("negative duration `{0}`; durations count forward")]
    Negative(String),
    /// A `+`, a space, a fraction or another character the grammar has no place for.
    #[error("invalid duration `{0}`; write whole numbers with units, like 1h30m")]
    Invalid(String),
    /// A letter that is not one of `d`, `h`, `m`, `s`.
    #[error("unknown unit `{unit}` in duration `{input}`; use d, h, m or s")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was not understood.
        unit: String,
    },
    /// A number after another part, with no unit (`1h30`).
    #[error("missing unit after `{number}` in duration `{input}`; use d, h, m or s")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number without a unit.
        number: String,
    },
    /// Units repeated or not in descending order (`30m1h`).
    #[error("units out of order in duration `{0}`; write them largest first, each once (1d2h3m4s)")]
    OutOfOrder(String),
    /// The value does not fit in a `Duration` of seconds.
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

/// Parses a duration string: `900`, `900s`, `5m`, `12h`, `1h30m`, `7d`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative(input.to_owned()));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = text.parse::<u64>().map_err(|_| DurationError::Overflow(input.to_owned()))?;
        return Ok(Duration::from_secs(seconds));
    }

    let mut total: u64 = 0;
    // Rank of the last unit seen; units must strictly descend (d=4 … s=1).
    let mut last_rank = u8::MAX;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        if digits.is_empty() {
            return Err(DurationError::Invalid(input.to_owned()));
        }
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_end);
        if unit.is_empty() {
            if after.is_empty() {
                return Err(DurationError::MissingUnit { input: input.to_owned(), number: digits.to_owned() });
            }
            return Err(DurationError::Invalid(input.to_owned()));
        }
        let (rank, seconds_per_unit) = match unit {
            "d" => (4, 86_400),
            "h" => (3, 3_600),
            "m" => (2, 60),
            "s" => (1, 1),
            other => {
                return Err(DurationError::UnknownUnit { input: input.to_owned(), unit: other.to_owned() });
            }
        };
        if rank >= last_rank {
            return Err(DurationError::OutOfOrder(input.to_owned()));
        }
        last_rank = rank;
        let amount = digits.parse::<u64>().map_err(|_| DurationError::Overflow(input.to_owned()))?;
        total = amount
            .checked_mul(seconds_per_unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        rest = after_unit;
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way a person writes it in a spec: `12h`, `1h30m`, `45s`, `0s`.
/// Sub-second parts are dropped. `parse_duration(&format_duration(d))` gives `d` back
/// for whole seconds.
pub fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let amount = seconds / size;
        if amount > 0 {
            out.push_str(&amount.to_string());
            out.push_str(unit);
            seconds -= amount * size;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_duration("900").unwrap(), secs(900));
        assert_eq!(parse_duration("900s").unwrap(), secs(900));
        assert_eq!(parse_duration("5m").unwrap(), secs(300));
        assert_eq!(parse_duration("12h").unwrap(), secs(43_200));
        assert_eq!(parse_duration("1h30m").unwrap(), secs(5_400));
        assert_eq!(parse_duration("7d").unwrap(), secs(604_800));
        assert_eq!(parse_duration("1d2h3m4s").unwrap(), secs(93_784));
        assert_eq!(parse_duration("0").unwrap(), secs(0));
        assert_eq!(parse_duration(" 15m ").unwrap(), secs(900));
    }

    #[test]
    fn rejects_empty_negative_and_garbage() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
        assert!(matches!(parse_duration("-5m"), Err(DurationError::Negative(_))));
        assert!(matches!(parse_duration("+5m"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("1.5h"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("1h 30m"), Err(DurationError::Invalid(_))));
        assert!(matches!(parse_duration("h"), Err(DurationError::Invalid(_))));
    }

    #[test]
    fn rejects_unknown_and_missing_units() {
        assert_eq!(parse_duration("5w"), Err(DurationError::UnknownUnit { input: "5w".into(), unit: "w".into() }));
        assert!(matches!(parse_duration("5ms"), Err(DurationError::UnknownUnit { .. })));
        assert!(matches!(parse_duration("1h30"), Err(DurationError::MissingUnit { .. })));
    }

    #[test]
    fn rejects_units_out_of_order_or_repeated() {
        assert!(matches!(parse_duration("30m1h"), Err(DurationError::OutOfOrder(_))));
        assert!(matches!(parse_duration("1h1h"), Err(DurationError::OutOfOrder(_))));
    }

    #[test]
    fn rejects_overflow() {
        assert!(matches!(parse_duration("99999999999999999999"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse_duration("999999999999999999d"), Err(DurationError::Overflow(_))));
        assert!(matches!(parse_duration("213503982334601d213503982334601d"), Err(DurationError::OutOfOrder(_))));
        assert!(matches!(parse_duration("213503982334601d23h59m59s"), Err(DurationError::Overflow(_))));
    }

    #[test]
    fn messages_are_lowercase_and_name_the_input() {
        let message = parse_duration("5w").unwrap_err().to_string();
        assert!(message.starts_with("unknown unit `w` in duration `5w`"), "{message}");
    }

    #[test]
    fn formats_round_trip() {
        for text in ["12h", "1h30m", "45s", "7d", "1d2h3m4s", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
