//! Durations written the way Kubernetes users write them: `30s`, `5m`, `1h30m`, `250ms`.
//!
//! The accepted grammar is deliberately a strict subset of Go's `time.ParseDuration` (whole
//! numbers, units `h`, `m`, `s`, `ms`, terms concatenated, no sign, no fractions) so that every
//! string the API server lets through ([`DURATION_PATTERN`], checked there by CEL) is parsed here
//! to the same value as CEL's `duration()` does, and every string refused here is refused there.

use std::time::Duration;

/// RE2 / Rust-regex syntax for [`parse_duration`]'s grammar, used in the CRD's CEL rules.
pub const DURATION_PATTERN: &str = "^([0-9]+(h|m|s|ms))+$";

/// What a person should write instead, appended to every duration error.
pub const DURATION_HINT: &str =
    "write whole numbers with units h, m, s or ms, such as 30s, 5m or 1m30s";

/// Why a duration string was refused. Each message ends with what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("the duration is empty; {DURATION_HINT}")]
    Empty,
    #[error("{input:?} has a number without a unit at its end; {DURATION_HINT}")]
    MissingUnit { input: String },
    #[error("{input:?} has a unit without a number before it; {DURATION_HINT}")]
    MissingNumber { input: String },
    #[error("{input:?} has the unknown unit {unit:?}; {DURATION_HINT}")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?} is too long a duration; use a value below 100000h")]
    TooLarge { input: String },
}

/// Parses `30s`, `5m`, `1h30m`, `250ms` (see the module docs for the grammar).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let too_large = || DurationError::TooLarge {
        input: input.to_owned(),
    };
    let bytes = input.as_bytes();
    let mut total = Duration::ZERO;
    let mut i = 0;
    while i < bytes.len() {
        let digits_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == digits_start {
            return Err(DurationError::MissingNumber {
                input: input.to_owned(),
            });
        }
        // Only ASCII digits: the parse fails on overflow alone.
        let number: u64 = input[digits_start..i].parse().map_err(|_| too_large())?;
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() {
            i += 1;
        }
        let unit = &input[unit_start..i];
        let millis_per_unit: u64 = match unit {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                })
            }
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                })
            }
        };
        let term = number.checked_mul(millis_per_unit).ok_or_else(too_large)?;
        total = total
            .checked_add(Duration::from_millis(term))
            .ok_or_else(too_large)?;
    }
    // Far below what CEL's duration() (and Go's int64 nanoseconds, about 2.5 million hours)
    // can hold, so the API server never meets an overflow that this parser accepted.
    if total >= MAX_DURATION {
        return Err(too_large());
    }
    Ok(total)
}

/// Exclusive upper bound of [`parse_duration`]: 100000 hours, a little over 11 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100_000 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_single_and_combined_terms() {
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("2h"), Ok(ms(7_200_000)));
        assert_eq!(parse_duration("250ms"), Ok(ms(250)));
        assert_eq!(parse_duration("1h30m"), Ok(ms(5_400_000)));
        assert_eq!(parse_duration("1m30s500ms"), Ok(ms(90_500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        // Go allows repeated and unordered units; so does CEL, so this parser must too.
        assert_eq!(parse_duration("30s1m"), Ok(ms(90_000)));
    }

    #[test]
    fn refuses_what_the_schema_refuses_with_a_hint() {
        for (input, want) in [
            ("", DurationError::Empty),
            ("30", DurationError::MissingUnit { input: "30".into() }),
            ("s", DurationError::MissingNumber { input: "s".into() }),
            (
                "-5s",
                DurationError::MissingNumber {
                    input: "-5s".into(),
                },
            ),
            (
                "1.5m",
                DurationError::UnknownUnit {
                    input: "1.5m".into(),
                    unit: ".".into(),
                },
            ),
            (
                "5 m",
                DurationError::UnknownUnit {
                    input: "5 m".into(),
                    unit: " m".into(),
                },
            ),
            (
                "3d",
                DurationError::UnknownUnit {
                    input: "3d".into(),
                    unit: "d".into(),
                },
            ),
            (
                "10us",
                DurationError::UnknownUnit {
                    input: "10us".into(),
                    unit: "us".into(),
                },
            ),
        ] {
            let err = parse_duration(input).unwrap_err();
            assert_eq!(err, want, "{input:?}");
            if input.is_empty() {
                continue;
            }
            let text = err.to_string();
            assert!(text.contains(input), "{text}");
            assert!(text.contains("such as 30s, 5m or 1m30s"), "{text}");
        }
    }

    #[test]
    fn refuses_overflow_instead_of_wrapping() {
        for input in ["100000h", "99999999999999999999s", "18446744073709551615h"] {
            let err = parse_duration(input).unwrap_err();
            assert!(
                matches!(err, DurationError::TooLarge { .. }),
                "{input}: {err}"
            );
        }
        assert!(parse_duration("99999h").is_ok());
    }
}
