//! `--link-rate` values: `RATE` for every interface not named, or
//! `IFACE=RATE` for one; see `model::LinkRates` for the order they apply in.

use thiserror::Error;

use super::units;
use crate::model::{interface_name_problem, LinkRates};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkRateError {
    #[error(
        "--link-rate `{value}`: `{rate}` is not a rate: {reason}; \
         write a tc rate (e.g. 100mbit, 25gbit), alone for every interface or as IFACE=RATE"
    )]
    Rate {
        value: String,
        rate: String,
        reason: String,
    },
    #[error(
        "--link-rate `{value}`: interface name `{iface}` is invalid: {reason}; \
         write IFACE=RATE, e.g. eth0=25gbit"
    )]
    Interface {
        value: String,
        iface: String,
        reason: &'static str,
    },
    #[error(
        "--link-rate `{value}`: {what} was already given a rate (`{earlier}`); \
         give each interface one rate, and at most one bare rate for the rest"
    )]
    Repeated {
        value: String,
        what: String,
        earlier: String,
    },
}

/// Parses the values of every `--link-rate` flag.
pub fn parse_link_rates<S: AsRef<str>>(values: &[S]) -> Result<LinkRates, LinkRateError> {
    let mut rates = LinkRates::default();
    for value in values {
        let value = value.as_ref();
        let (iface, rate) = match value.split_once('=') {
            Some((iface, rate)) => (Some(iface), rate),
            None => (None, value),
        };
        // units refuses zero and anything under 1 byte/s.
        let bytes = units::parse_rate_bytes(rate).map_err(|e| LinkRateError::Rate {
            value: value.to_owned(),
            rate: rate.to_owned(),
            reason: e.to_string(),
        })?;
        let repeated = |what: String, earlier: u64| LinkRateError::Repeated {
            value: value.to_owned(),
            what,
            earlier: units::format_rate(earlier),
        };
        match iface {
            Some(iface) => {
                check_interface_name(value, iface)?;
                if let Some(earlier) = rates.per_interface.insert(iface.to_owned(), bytes) {
                    return Err(repeated(format!("interface {iface}"), earlier));
                }
            }
            None => {
                if let Some(earlier) = rates.default_bytes.replace(bytes) {
                    return Err(repeated("every interface not named".into(), earlier));
                }
            }
        }
    }
    Ok(rates)
}

fn check_interface_name(value: &str, iface: &str) -> Result<(), LinkRateError> {
    match interface_name_problem(iface) {
        Some(reason) => Err(LinkRateError::Interface {
            value: value.to_owned(),
            iface: iface.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GBIT: u64 = 1_000_000_000 / 8;

    #[test]
    fn named_and_bare_rates_parse() {
        let rates = parse_link_rates(&["eth0=25gbit", "1gbit", "bond0=40gbit"]).unwrap();
        assert_eq!(rates.default_bytes, Some(GBIT));
        assert_eq!(rates.per_interface.get("eth0"), Some(&(25 * GBIT)));
        assert_eq!(rates.per_interface.get("bond0"), Some(&(40 * GBIT)));
        assert_eq!(parse_link_rates::<&str>(&[]).unwrap(), LinkRates::default());
    }

    #[test]
    fn bad_values_name_the_value_the_reason_and_the_form() {
        let error = |v: &[&str]| parse_link_rates(v).unwrap_err().to_string();
        let e = error(&["eth0=fast"]);
        assert!(
            e.contains("--link-rate `eth0=fast`") && e.contains("`fast` is not a rate"),
            "{e}"
        );
        assert!(
            e.contains("e.g. 100mbit, 25gbit") && e.contains("IFACE=RATE"),
            "{e}"
        );
        let e = error(&["=1gbit"]);
        assert!(
            e.contains("interface name `` is invalid: it is empty"),
            "{e}"
        );
        let e = error(&["averyveryverylongname=1gbit"]);
        assert!(e.contains("longer than 15 bytes"), "{e}");
        let e = error(&["eth0=1gbit", "eth0=2gbit"]);
        assert!(
            e.contains("interface eth0 was already given a rate (`1Gbit`)"),
            "{e}"
        );
        let e = error(&["1gbit", "2gbit"]);
        assert!(
            e.contains("every interface not named was already given"),
            "{e}"
        );
        let e = error(&["0bit"]);
        assert!(e.contains("below 1 byte/s"), "{e}");
    }
}
