//! Numbers in SQL selectors: 64-bit integers and finite 64-bit floats, the
//! one syntax shared by literals and header text, and an exact comparison
//! across the two representations.

use std::cmp::Ordering;

/// A number from a literal, a header or `__timestamp_ms`. A `Decimal` is
/// always finite (the parsers refuse anything else), so comparisons are
/// total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    Integer(i64),
    Decimal(f64),
}

/// 2^63, the first float above every i64.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// Compares by value, exactly: `1 = 1.0`, and `i64::MAX < 2^63` even though
/// `i64::MAX as f64` rounds to 2^63.
pub(crate) fn compare(left: Number, right: Number) -> Ordering {
    match (left, right) {
        (Number::Integer(left), Number::Integer(right)) => left.cmp(&right),
        (Number::Decimal(left), Number::Decimal(right)) => {
            left.partial_cmp(&right).unwrap_or(Ordering::Equal)
        }
        (Number::Integer(left), Number::Decimal(right)) => compare_integer_decimal(left, right),
        (Number::Decimal(left), Number::Integer(right)) => {
            compare_integer_decimal(right, left).reverse()
        }
    }
}

fn compare_integer_decimal(integer: i64, decimal: f64) -> Ordering {
    if decimal >= TWO_POW_63 {
        return Ordering::Less;
    }
    if decimal < -TWO_POW_63 {
        return Ordering::Greater;
    }
    let whole = decimal.trunc();
    // Exact: |whole| < 2^63, or whole is -2^63 = i64::MIN.
    let whole_integer = whole as i64;
    integer.cmp(&whole_integer).then_with(|| {
        let fraction = decimal - whole;
        0.0f64.partial_cmp(&fraction).unwrap_or(Ordering::Equal)
    })
}

/// The shape of a number: `[+|-] (digits [. [digits]] | . digits) [(e|E)
/// [+|-] digits]`. Returns whether it has a fraction or exponent, or `None`
/// if the text is not a number.
fn shape(text: &str) -> Option<bool> {
    let bytes = text.as_bytes();
    let mut index = 0;
    let count_digits = |index: &mut usize| {
        let start = *index;
        while *index < bytes.len() && bytes[*index].is_ascii_digit() {
            *index += 1;
        }
        *index - start
    };
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        index += 1;
    }
    let mut decimal = false;
    let mut digits = count_digits(&mut index);
    if bytes.get(index) == Some(&b'.') {
        decimal = true;
        index += 1;
        digits += count_digits(&mut index);
    }
    if digits == 0 {
        return None;
    }
    if matches!(bytes.get(index), Some(b'e' | b'E')) {
        decimal = true;
        index += 1;
        if matches!(bytes.get(index), Some(b'+' | b'-')) {
            index += 1;
        }
        if count_digits(&mut index) == 0 {
            return None;
        }
    }
    (index == bytes.len()).then_some(decimal)
}

/// Reads a header's text as a number; `None` (so the comparison is UNKNOWN)
/// if it is not one, or is a float too large to be finite. Integers beyond
/// 64 bits are read as floats.
pub(crate) fn parse_text(text: &str) -> Option<Number> {
    let decimal = shape(text)?;
    if !decimal {
        if let Ok(integer) = text.parse::<i64>() {
            return Some(Number::Integer(integer));
        }
    }
    let value: f64 = text.parse().ok()?;
    value.is_finite().then_some(Number::Decimal(value))
}

/// Reads a literal the lexer delimited (an optional `-` already joined to
/// it); an integer beyond 64 bits or an infinite float is an error, since
/// the user can write what they mean.
pub(crate) fn parse_literal(text: &str) -> Result<Number, String> {
    match shape(text) {
        None => Err(format!("'{text}' is not a number")),
        Some(false) => text.parse::<i64>().map(Number::Integer).map_err(|_| {
            format!("integer {text} is out of range (64-bit signed); write it with a '.' or an exponent to use a float")
        }),
        Some(true) => match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Number::Decimal(value)),
            _ => Err(format!("number {text} is out of range (64-bit float)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_parses_like_literals() {
        assert_eq!(parse_text("250"), Some(Number::Integer(250)));
        assert_eq!(parse_text("+7"), Some(Number::Integer(7)));
        assert_eq!(parse_text("-007"), Some(Number::Integer(-7)));
        assert_eq!(parse_text("1.5"), Some(Number::Decimal(1.5)));
        assert_eq!(parse_text("1."), Some(Number::Decimal(1.0)));
        assert_eq!(parse_text(".5"), Some(Number::Decimal(0.5)));
        assert_eq!(parse_text("-1e3"), Some(Number::Decimal(-1000.0)));
        assert_eq!(parse_text("2E-1"), Some(Number::Decimal(0.2)));
        assert_eq!(
            parse_text("9223372036854775808"),
            Some(Number::Decimal(9_223_372_036_854_775_808.0))
        );
        for not_a_number in [
            "", "+", "-", ".", "abc", " 1", "1 ", "1e", "1e+", "0x10", "NaN", "inf", "infinity",
            "1_000", "1,5", "--1", "1e999", "١",
        ] {
            assert_eq!(parse_text(not_a_number), None, "{not_a_number:?}");
        }
    }

    #[test]
    fn literals_refuse_what_does_not_fit() {
        assert_eq!(
            parse_literal("-9223372036854775808"),
            Ok(Number::Integer(i64::MIN))
        );
        assert_eq!(
            parse_literal("9223372036854775808"),
            Err("integer 9223372036854775808 is out of range (64-bit signed); write it with a '.' or an exponent to use a float".to_string())
        );
        assert_eq!(
            parse_literal("1e400"),
            Err("number 1e400 is out of range (64-bit float)".to_string())
        );
    }

    #[test]
    fn compares_exactly_across_representations() {
        use Number::{Decimal, Integer};
        assert_eq!(compare(Integer(1), Decimal(1.0)), Ordering::Equal);
        assert_eq!(compare(Decimal(1.0), Integer(1)), Ordering::Equal);
        assert_eq!(compare(Integer(1), Decimal(1.5)), Ordering::Less);
        assert_eq!(compare(Integer(2), Decimal(1.5)), Ordering::Greater);
        assert_eq!(compare(Integer(-1), Decimal(-1.5)), Ordering::Greater);
        assert_eq!(compare(Integer(-2), Decimal(-1.5)), Ordering::Less);
        assert_eq!(compare(Integer(0), Decimal(-0.0)), Ordering::Equal);
        assert_eq!(compare(Decimal(0.0), Decimal(-0.0)), Ordering::Equal);
        assert_eq!(
            compare(Integer(i64::MAX), Decimal(TWO_POW_63)),
            Ordering::Less
        );
        assert_eq!(
            compare(Integer(i64::MIN), Decimal(-TWO_POW_63)),
            Ordering::Equal
        );
        assert_eq!(
            compare(Integer(i64::MIN), Decimal(-1e300)),
            Ordering::Greater
        );
        assert_eq!(compare(Integer(i64::MAX), Decimal(1e300)), Ordering::Less);
        // 2^53 + 1 is not representable as f64; the comparison still sees it.
        let above = (1i64 << 53) + 1;
        assert_eq!(
            compare(Integer(above), Decimal((1i64 << 53) as f64)),
            Ordering::Greater
        );
        assert_eq!(compare(Integer(3), Integer(-3)), Ordering::Greater);
    }
}
