//! tc's units, parsed exactly.
//!
//! Rates: `bit kbit mbit gbit tbit` are bits per second; `bps kbps mbps gbps
//! tbps` are **bytes** per second (as in tc(8)); `kibit`…`tibit` and
//! `kibps`…`tibps` are their 1024-based forms. Sizes: `b`, `kb`/`k`,
//! `mb`/`m`, `gb`/`g` (1024-based bytes, as tc), `kib`/`mib`/`gib`, and
//! `kbit`/`mbit`/`gbit` (bits). Units are case-insensitive.
//!
//! Numbers may have a fractional part (`1.5mbit`). The arithmetic is done
//! in integers (u128), so `0.1mbit` is exactly 100000 bit/s; a result that
//! does not fit in u64 is an error, never a wrap.

use std::fmt;

/// Why a quantity could not be parsed. `Display` names the valid units.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{value}` has no number; write e.g. `10mbit`")]
    NoNumber { value: String },
    #[error("`{value}` has no unit; {valid}")]
    NoUnit { value: String, valid: &'static str },
    #[error("`{value}` has unknown unit `{unit}`{suggestion}; {valid}")]
    UnknownUnit {
        value: String,
        unit: String,
        suggestion: Suggestion,
        valid: &'static str,
    },
    #[error("`{value}` is not a number followed by a unit")]
    Malformed { value: String },
    #[error("`{value}` is too large (more than 2^64-1 {base})")]
    Overflow { value: String, base: &'static str },
    #[error("`{value}` is below {minimum}, the smallest quantity")]
    TooSmall {
        value: String,
        minimum: &'static str,
    },
}

/// "did you mean …" text for an unknown unit (empty when nothing is close).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Suggestion(Vec<(&'static str, &'static str)>);

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => Ok(()),
            [(unit, what)] => write!(f, " (did you mean `{unit}`, {what}?)"),
            many => {
                write!(f, " (did you mean ")?;
                for (i, (unit, what)) in many.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", or ")?;
                    }
                    write!(f, "`{unit}`, {what}")?;
                }
                write!(f, "?)")
            }
        }
    }
}

struct Unit {
    name: &'static str,
    /// Multiplier numerator in the base unit (bits for rates, bytes for sizes).
    scale: u128,
    /// Divisor (8 for bit-based sizes).
    divisor: u128,
    what: &'static str,
}

const fn unit(name: &'static str, scale: u128, divisor: u128, what: &'static str) -> Unit {
    Unit {
        name,
        scale,
        divisor,
        what,
    }
}

/// Rate units, scaled to bits per second.
const RATE_UNITS: &[Unit] = &[
    unit("bit", 1, 1, "bits/s"),
    unit("kbit", 1_000, 1, "bits/s"),
    unit("mbit", 1_000_000, 1, "bits/s"),
    unit("gbit", 1_000_000_000, 1, "bits/s"),
    unit("tbit", 1_000_000_000_000, 1, "bits/s"),
    unit("kibit", 1 << 10, 1, "bits/s"),
    unit("mibit", 1 << 20, 1, "bits/s"),
    unit("gibit", 1 << 30, 1, "bits/s"),
    unit("tibit", 1 << 40, 1, "bits/s"),
    unit("bps", 8, 1, "bytes/s"),
    unit("kbps", 8_000, 1, "bytes/s"),
    unit("mbps", 8_000_000, 1, "bytes/s"),
    unit("gbps", 8_000_000_000, 1, "bytes/s"),
    unit("tbps", 8_000_000_000_000, 1, "bytes/s"),
    unit("kibps", 8 << 10, 1, "bytes/s"),
    unit("mibps", 8 << 20, 1, "bytes/s"),
    unit("gibps", 8 << 30, 1, "bytes/s"),
    unit("tibps", 8 << 40, 1, "bytes/s"),
];

const RATE_VALID: &str = "valid rate units are bit kbit mbit gbit tbit (bits/s), \
                          bps kbps mbps gbps tbps (bytes/s), and the 1024-based \
                          kibit mibit gibit tibit, kibps mibps gibps tibps";

/// Size units, scaled to bytes.
const SIZE_UNITS: &[Unit] = &[
    unit("b", 1, 1, "bytes"),
    unit("k", 1 << 10, 1, "KiB"),
    unit("kb", 1 << 10, 1, "KiB"),
    unit("kib", 1 << 10, 1, "KiB"),
    unit("m", 1 << 20, 1, "MiB"),
    unit("mb", 1 << 20, 1, "MiB"),
    unit("mib", 1 << 20, 1, "MiB"),
    unit("g", 1 << 30, 1, "GiB"),
    unit("gb", 1 << 30, 1, "GiB"),
    unit("gib", 1 << 30, 1, "GiB"),
    unit("kbit", 1 << 10, 8, "Kibit"),
    unit("mbit", 1 << 20, 8, "Mibit"),
    unit("gbit", 1 << 30, 8, "Gibit"),
];

const SIZE_VALID: &str = "valid size units are b, kb (or k, kib), mb (or m, mib), \
                          gb (or g, gib) in 1024-based bytes as in tc, and kbit mbit gbit";

/// A rate in bits per second.
pub fn parse_rate_bits(value: &str) -> Result<u64, UnitError> {
    parse(value, RATE_UNITS, RATE_VALID, "bit/s")
}

/// A rate in bytes per second (what the kernel enforces). Bit rates are
/// rounded down to whole bytes; below 1 byte/s is an error.
pub fn parse_rate_bytes(value: &str) -> Result<u64, UnitError> {
    let bits = parse_rate_bits(value)?;
    let bytes = bits / 8;
    if bytes == 0 {
        return Err(UnitError::TooSmall {
            value: value.to_owned(),
            minimum: "1 byte/s (8bit)",
        });
    }
    Ok(bytes)
}

/// A size in bytes.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    parse(value, SIZE_UNITS, SIZE_VALID, "bytes")
}

fn parse(
    value: &str,
    units: &[Unit],
    valid: &'static str,
    base: &'static str,
) -> Result<u64, UnitError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit_text) = text.split_at(split);
    if number.is_empty() {
        return Err(UnitError::NoNumber {
            value: value.to_owned(),
        });
    }
    let unit_text = unit_text.trim();
    if unit_text.is_empty() {
        return Err(UnitError::NoUnit {
            value: value.to_owned(),
            valid,
        });
    }
    let lower = unit_text.to_ascii_lowercase();
    let Some(unit) = units.iter().find(|u| u.name == lower) else {
        if !lower.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(UnitError::Malformed {
                value: value.to_owned(),
            });
        }
        return Err(UnitError::UnknownUnit {
            value: value.to_owned(),
            unit: unit_text.to_owned(),
            suggestion: suggest(&lower, units),
            valid,
        });
    };
    // "1.5" and ".5" are numbers; "1.2.3" and "." are not.
    let well_formed = |w: &str, f: &str| !(f.contains('.') || (w.is_empty() && f.is_empty()));
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) if well_formed(w, f) => (w, f),
        Some(_) => {
            return Err(UnitError::Malformed {
                value: value.to_owned(),
            })
        }
        None => (number, ""),
    };
    let overflow = || UnitError::Overflow {
        value: value.to_owned(),
        base,
    };
    if fraction.len() > 18 {
        return Err(UnitError::Malformed {
            value: value.to_owned(),
        });
    }
    let digits = |s: &str| -> Result<u128, UnitError> {
        if s.is_empty() {
            return Ok(0);
        }
        s.parse::<u128>().map_err(|_| overflow())
    };
    let denominator = 10u128.pow(fraction.len() as u32);
    let mantissa = digits(whole)?
        .checked_mul(denominator)
        .and_then(|m| m.checked_add(digits(fraction).ok()?))
        .ok_or_else(overflow)?;
    let scaled =
        mantissa.checked_mul(unit.scale).ok_or_else(overflow)? / denominator / unit.divisor;
    u64::try_from(scaled).map_err(|_| overflow())
}

/// Units within edit distance 2 of the typo; for `mps`-style typos this
/// yields both the bytes reading (`mbps`) and the bits reading (`mbit`).
fn suggest(typo: &str, units: &[Unit]) -> Suggestion {
    let mut scored: Vec<(usize, &Unit)> = units
        .iter()
        .map(|u| (edit_distance(typo, u.name), u))
        .filter(|(d, _)| *d <= 2)
        .collect();
    // Typos keep the magnitude letter (`mps` for `mbps`): prefer units that
    // start like the typo.
    if let Some(first) = typo.chars().next() {
        if scored.iter().any(|(_, u)| u.name.starts_with(first)) {
            scored.retain(|(_, u)| u.name.starts_with(first));
        }
    }
    scored.sort_by_key(|(d, u)| (*d, u.name.len()));
    let best = scored.first().map(|(d, _)| *d).unwrap_or(0);
    let mut picks: Vec<(&'static str, &'static str)> = scored
        .iter()
        .filter(|(d, _)| *d == best)
        .map(|(_, u)| (u.name, u.what))
        .collect();
    // A rate typo like `mps` is ambiguous between bytes and bits: offer the
    // same prefix in the other family too.
    if let Some(prefix) = typo.chars().next() {
        let bits = format!("{prefix}bit");
        if !picks.iter().any(|(n, _)| *n == bits) {
            if let Some(u) = units.iter().find(|u| u.name == bits) {
                if picks.iter().any(|(_, what)| *what == "bytes/s") {
                    picks.push((u.name, u.what));
                }
            }
        }
    }
    picks.truncate(3);
    Suggestion(picks)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// Formats bytes/s the way `tc` prints rates (`10Mbit`), for messages.
pub fn format_rate(bytes_per_sec: u64) -> String {
    let bits = u128::from(bytes_per_sec) * 8;
    for (scale, suffix) in [
        (1_000_000_000_000u128, "Tbit"),
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "Kbit"),
    ] {
        if bits >= scale {
            let whole = bits / scale;
            let milli = (bits % scale) * 1000 / scale;
            if milli == 0 {
                return format!("{whole}{suffix}");
            }
            let fraction = format!("{milli:03}");
            return format!("{whole}.{}{suffix}", fraction.trim_end_matches('0'));
        }
    }
    format!("{bits}bit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_units_are_bits_per_second() {
        let table = [
            ("1bit", 1),
            ("10kbit", 10_000),
            ("40mbit", 40_000_000),
            ("1gbit", 1_000_000_000),
            ("2tbit", 2_000_000_000_000),
            ("1kibit", 1024),
            ("1mibit", 1 << 20),
            ("1.5mbit", 1_500_000),
            ("0.1mbit", 100_000),
            (".5kbit", 500),
            ("10MBIT", 10_000_000),
            (" 10mbit ", 10_000_000),
        ];
        for (text, bits) in table {
            assert_eq!(parse_rate_bits(text), Ok(bits), "{text}");
        }
    }

    #[test]
    fn bps_units_are_bytes_per_second() {
        assert_eq!(parse_rate_bytes("1mbps"), Ok(1_000_000));
        assert_eq!(parse_rate_bits("1mbps"), Ok(8_000_000));
        assert_eq!(parse_rate_bytes("10mbit"), Ok(1_250_000));
        assert_eq!(parse_rate_bytes("1kibps"), Ok(1024));
        assert_eq!(parse_rate_bytes("100bps"), Ok(100));
    }

    #[test]
    fn sizes_follow_tc() {
        assert_eq!(parse_size("64kb"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1mb"), Ok(1 << 20));
        assert_eq!(parse_size("1500b"), Ok(1500));
        assert_eq!(parse_size("8kbit"), Ok(1024));
        assert_eq!(parse_size("1.5kb"), Ok(1536));
    }

    #[test]
    fn pisanix_typo_suggests_both_readings() {
        let err = parse_rate_bits("1mps").unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            "`1mps` has unknown unit `mps` (did you mean `mbps`, bytes/s, or `mbit`, bits/s?); \
             valid rate units are bit kbit mbit gbit tbit (bits/s), bps kbps mbps gbps tbps \
             (bytes/s), and the 1024-based kibit mibit gibit tibit, kibps mibps gibps tibps"
        );
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        assert!(matches!(
            parse_rate_bits("99999999999tbit"),
            Err(UnitError::Overflow { .. })
        ));
        assert!(matches!(
            parse_rate_bits("340282366920938463463374607431768211456bit"),
            Err(UnitError::Overflow { .. })
        ));
        assert_eq!(parse_rate_bits("18446744073709551615bit"), Ok(u64::MAX));
        assert!(parse_rate_bits("18446744073709551616bit").is_err());
    }

    #[test]
    fn malformed_values_say_what_is_wrong() {
        assert!(matches!(
            parse_rate_bits("mbit"),
            Err(UnitError::NoNumber { .. })
        ));
        assert!(matches!(
            parse_rate_bits("10"),
            Err(UnitError::NoUnit { .. })
        ));
        assert!(matches!(
            parse_rate_bits("1.2.3mbit"),
            Err(UnitError::Malformed { .. })
        ));
        assert!(matches!(
            parse_rate_bits("10 m-bit"),
            Err(UnitError::Malformed { .. })
        ));
        assert!(matches!(
            parse_rate_bytes("7bit"),
            Err(UnitError::TooSmall { .. })
        ));
        assert!(matches!(
            parse_rate_bits("-5mbit"),
            Err(UnitError::NoNumber { .. })
        ));
    }

    #[test]
    fn formats_rates_like_tc() {
        assert_eq!(format_rate(1_250_000), "10Mbit");
        assert_eq!(format_rate(125), "1Kbit");
        assert_eq!(format_rate(1), "8bit");
        assert_eq!(format_rate(187_500), "1.5Mbit");
    }
}
