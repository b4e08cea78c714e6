//! JSON numbers that can be stored exactly (contract: a DynamoDB number, never
//! silently rounded or turned into 0). Judged on the literal text of the body, since
//! the parsed value has already lost what matters: `1e-400` parses as 0, a 39-digit
//! integer as a rounded double, and `1e400` not at all.

use std::ops::Range;

/// DynamoDB numbers: at most 38 significant digits…
const MAX_SIGNIFICANT_DIGITS: usize = 38;
/// …with a magnitude from 1e-130 up to (but excluding) 1e126.
const MIN_EXPONENT: i64 = -130;
const MAX_EXPONENT: i64 = 125;

/// What one pass over a JSON document's bytes finds.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Scanned {
    /// Number literals, in document order, as byte ranges.
    pub numbers: Vec<Range<usize>>,
    /// Object members (the colons outside strings): more than the parsed value holds
    /// means a member was named twice, which the parser silently folded.
    pub members: usize,
}

/// Number literals and object members of a JSON document.
pub(crate) fn scan(json: &[u8]) -> Scanned {
    let mut scanned = Scanned::default();
    let literals = &mut scanned.numbers;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => i = string_end(json, i + 1),
            b':' => {
                scanned.members += 1;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                literals.push(start..i);
            }
            _ => i += 1,
        }
    }
    scanned
}

/// Whether a literal is a number in JSON's grammar: `-?(0|[1-9]d*)(.d+)?([eE][+-]?d+)?`.
pub(crate) fn is_json_number(literal: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = literal.strip_prefix('-').unwrap_or(literal);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    digits(whole)
        && (whole == "0" || !whole.starts_with('0'))
        && fraction.is_none_or(digits)
        && exponent.is_none_or(digits)
}

/// The index just past the string whose content starts at `i`.
fn string_end(json: &[u8], mut i: usize) -> usize {
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Whether a JSON number literal is a DynamoDB number that this service stores and
/// returns exactly. Numbers travel as 64-bit integers or doubles, so a literal that a
/// double cannot reproduce digit for digit is refused rather than rounded.
pub(crate) fn is_storable(literal: &str) -> bool {
    // Most literals are short integers: exact as an i64.
    if literal.len() <= 18 && literal.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return true;
    }
    let Some(decimal) = Decimal::parse(literal) else {
        return false;
    };
    if decimal.digits.is_empty() {
        return true;
    }
    if decimal.digits.len() > MAX_SIGNIFICANT_DIGITS
        || !(MIN_EXPONENT..=MAX_EXPONENT).contains(&decimal.exponent)
    {
        return false;
    }
    let integer = !literal.contains(['.', 'e', 'E']);
    if integer && (literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok()) {
        return true;
    }
    serde_json::from_str::<f64>(literal)
        .ok()
        .and_then(|double| serde_json::to_string(&double).ok())
        .and_then(|shown| Decimal::parse(&shown))
        .is_some_and(|shown| shown == decimal)
}

/// A number as significant digits and the power of ten of the first one; zero has
/// no digits.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(literal: &str) -> Option<Decimal> {
        let (negative, unsigned) = match literal.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, literal),
        };
        let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
            Some((mantissa, exponent)) => (mantissa, parse_exponent(exponent)?),
            None => (unsigned, 0),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty()
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let all: String = [whole, fraction].concat();
        let leading_zeros = all.len() - all.trim_start_matches('0').len();
        let digits = all[leading_zeros..].trim_end_matches('0').to_owned();
        let point = whole.len() as i64;
        Some(Decimal {
            negative: negative && !digits.is_empty(),
            exponent: if digits.is_empty() {
                0
            } else {
                exponent.saturating_add(point - leading_zeros as i64 - 1)
            },
            digits,
        })
    }
}

/// An exponent; absurdly long ones saturate, which lands them out of range.
fn parse_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX / 2);
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_found_outside_strings_only() {
        let json = br#"{"a":1,"b":"2 -3 \" 4","c":[-5.5e3,true,null],"d":0}"#;
        let scanned = scan(json);
        let found: Vec<&str> = scanned
            .numbers
            .into_iter()
            .map(|r| std::str::from_utf8(&json[r]).unwrap())
            .collect();
        assert_eq!(found, ["1", "-5.5e3", "0"]);
        assert_eq!(scanned.members, 4, "the colon in a string is no member");
    }

    #[test]
    fn json_number_grammar() {
        for ok in ["0", "-0", "10", "1.5", "1e5", "1E+5", "-2.5e-3"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["01", "1.", ".5", "1e", "--1", "1.2.3", "1e+-2", "-"] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn dynamodb_range_and_digits() {
        for ok in [
            "0",
            "-0",
            "0.0",
            "0e-999",
            "1",
            "-1",
            "1.5",
            "0.1",
            "1e125",
            "9.5e125",
            "1e-130",
            "-1e-130",
            "123456789012345678",
            "18446744073709551615",
            "-9223372036854775808",
            "1e20",
            "100000000000000000000",
            "2.5E+3",
            "0.000001",
        ] {
            assert!(is_storable(ok), "{ok} must be storable");
        }
        for bad in [
            "1e126",
            "1e-131",
            "1e400",
            "1e-400",
            "-1e400",
            "123456789012345678901234567890123456789",
            "123456789012345678901",
            "0.12345678901234567890",
            "1e99999999999999999999",
        ] {
            assert!(!is_storable(bad), "{bad} must be refused");
        }
    }
}
