//! Sizes and times as people type and read them.
//!
//! Kept in-house rather than pulled from a crate: the CLI needs one parser and
//! two printers, and their exact rules (which suffixes mean 1024) are part of
//! the command line contract, so they are pinned down by the tests below.

use std::fmt::Write as _;

/// Why a size string was refused; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size; expected a number such as 4096, 1MiB or 10GiB")]
    Empty,
    #[error("{input:?} is not a size; expected a number such as 4096, 1MiB or 10GiB")]
    NotANumber { input: String },
    #[error("unknown unit {unit:?} in {input:?}; use B, KiB, MiB, GiB, TiB (1024-based) or KB, MB, GB, TB (1000-based)")]
    UnknownUnit { input: String, unit: String },
    #[error("{input:?} is too large (more than 2^64 - 1 bytes)")]
    Overflow { input: String },
    #[error("{input:?} is not a whole number of bytes")]
    FractionalBytes { input: String },
}

const KIB: u64 = 1 << 10;

fn unit_multiplier(unit: &str) -> Option<u64> {
    // Single letters follow dd/ls: "1M" is a mebibyte, which is what people
    // mean when sizing chunks and disks. Only "KB"/"MB"/.. are decimal.
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => KIB.pow(2),
        "g" | "gib" => KIB.pow(3),
        "t" | "tib" => KIB.pow(4),
        "p" | "pib" => KIB.pow(5),
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "pb" => 1000u64.pow(5),
        _ => return None,
    };
    Some(mult)
}

/// Parses "4096", "1MiB", "1.5 GiB", "10G", "2TB" into bytes.
///
/// Fractions are computed in integers (no float rounding surprises) and
/// truncated to whole bytes; a fraction of a plain byte count is refused.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let unit = unit.trim();
    let not_a_number = || SizeError::NotANumber {
        input: input.to_string(),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number.as_str(), ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(not_a_number());
    }
    let mult = unit_multiplier(unit).ok_or_else(|| SizeError::UnknownUnit {
        input: input.to_string(),
        unit: unit.to_string(),
    })?;
    let overflow = || SizeError::Overflow {
        input: input.to_string(),
    };
    let int_value: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse::<u128>().map_err(|_| {
            if int_part.chars().all(|c| c.is_ascii_digit()) {
                overflow()
            } else {
                not_a_number()
            }
        })?
    };
    let mut total = int_value
        .checked_mul(u128::from(mult))
        .ok_or_else(overflow)?;
    let frac_digits = frac_part.trim_end_matches('0');
    if !frac_digits.is_empty() {
        if mult == 1 {
            return Err(SizeError::FractionalBytes {
                input: input.to_string(),
            });
        }
        // More than 19 digits cannot change the result: mult <= 2^60.
        let digits = &frac_digits[..frac_digits.len().min(19)];
        let frac: u128 = digits.parse().map_err(|_| not_a_number())?;
        let scale = 10u128.pow(digits.len() as u32);
        total += frac * u128::from(mult) / scale;
    }
    u64::try_from(total).map_err(|_| overflow())
}

/// Prints a byte count for people: "512 B", "1 MiB", "1.5 MiB", "10 GiB".
///
/// One decimal is enough to tell sizes apart at a glance; exact numbers are
/// printed next to it where they matter (stat).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < KIB {
        return format!("{bytes} B");
    }
    let mut index = 0;
    while index + 1 < UNITS.len() && bytes >= KIB << (10 * (index + 1)) {
        index += 1;
    }
    let unit = u128::from(KIB) << (10 * index);
    let mut tenths = (u128::from(bytes) * 10 + unit / 2) / unit;
    if tenths >= 10240 && index + 1 < UNITS.len() {
        // Rounding pushed it to the next unit (e.g. 1023.96 KiB).
        index += 1;
        tenths = 10;
    }
    let mut out = format!("{}", tenths / 10);
    if tenths % 10 != 0 {
        let _ = write!(out, ".{}", tenths % 10);
    }
    let _ = write!(out, " {}", UNITS[index]);
    out
}

/// Unix milliseconds as an RFC 3339 UTC timestamp with milliseconds.
pub fn format_unix_ms(ms: u64) -> String {
    let (date, secs_of_day) = split_days(ms / 1000);
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        ms % 1000
    )
}

/// Unix milliseconds as a compact UTC time for listings ("2025-11-25 15:19").
pub fn format_unix_ms_short(ms: u64) -> String {
    let (date, secs_of_day) = split_days(ms / 1000);
    format!(
        "{date} {:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60
    )
}

fn split_days(secs: u64) -> (String, u64) {
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), secs % 86_400)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (H. Hinnant's algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_binary_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert_eq!(parse_size(" 2TiB "), Ok(2 << 40));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("3g"), Ok(3 << 30));
        assert_eq!(parse_size("1_000"), Ok(1000));
    }

    #[test]
    fn parses_decimal_units_and_fractions() {
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert_eq!(parse_size("1.0B"), Ok(1));
        assert_eq!(parse_size("1.25GB"), Ok(1_250_000_000));
        assert!(parse_size("16EiB").is_err());
    }

    #[test]
    fn refuses_bad_sizes_with_helpful_errors() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        assert!(matches!(
            parse_size("MiB"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_size("1.2.3MiB"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_size("-1"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_size("10 parsecs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("1.5"),
            Err(SizeError::FractionalBytes { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("20000PiB"),
            Err(SizeError::Overflow { .. })
        ));
        let msg = parse_size("10 parsecs").unwrap_err().to_string();
        assert!(msg.contains("GiB"), "{msg}");
    }

    #[test]
    fn prints_sizes_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(3 << 19), "1.5 MiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
        assert_eq!(format_size((1 << 20) - 1), "1 MiB");
        assert_eq!(format_size(10 << 30), "10 GiB");
        assert_eq!(format_size(u64::MAX), "16 EiB");
    }

    #[test]
    fn printed_sizes_parse_back() {
        for n in [1u64 << 20, 3 << 19, 10 << 30, 5 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
    }

    #[test]
    fn prints_times_in_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            format_unix_ms(1_764_084_000_000),
            "2025-11-25T15:20:00.000Z"
        );
        assert_eq!(format_unix_ms_short(1_764_084_000_000), "2025-11-25 15:20");
    }
}
