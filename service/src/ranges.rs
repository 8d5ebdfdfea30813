//! Accepted ranges of a service config's numeric keys: each config lists
//! its keys with their values and ranges ([`ServiceConfig::ranges`]), and
//! loading refuses every key outside its range by name, with the range.
//!
//! [`ServiceConfig::ranges`]: crate::ServiceConfig::ranges

use std::fmt;

/// Longest duration any `_ms` key may be, in milliseconds (365 days):
/// longer is a typo, and far from where adding it to a clock overflows.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Largest byte size any `_bytes` key may be (1 TiB): larger is a typo.
pub const MAX_SIZE_BYTES: u64 = 1 << 40;

/// Largest count any count key may be (`u32::MAX`).
pub const MAX_COUNT: u64 = u32::MAX as u64;

/// One numeric key, its value and the range it must lie in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// As the TOML file spells it: `[section] key`.
    pub key: String,
    pub value: u64,
    pub min: u64,
    pub max: u64,
    /// What 0 means, when 0 is allowed with a meaning of its own.
    pub zero_means: Option<&'static str>,
}

impl KeyRange {
    /// `key` (e.g. "[fetch] max_bytes") with `value` in `min..=max`.
    pub fn new(key: &str, value: impl TryInto<u64>, min: u64, max: u64) -> Self {
        Self {
            key: key.to_string(),
            value: value.try_into().unwrap_or(u64::MAX),
            min,
            max,
            zero_means: None,
        }
    }

    /// A duration in milliseconds: 1 ..= [`MAX_DURATION_MS`].
    pub fn duration_ms(key: &str, value: u64) -> Self {
        Self::new(key, value, 1, MAX_DURATION_MS)
    }

    /// A byte size: 1 ..= [`MAX_SIZE_BYTES`].
    pub fn bytes(key: &str, value: impl TryInto<u64>) -> Self {
        Self::new(key, value, 1, MAX_SIZE_BYTES)
    }

    /// A count: 1 ..= [`MAX_COUNT`].
    pub fn count(key: &str, value: impl TryInto<u64>) -> Self {
        Self::new(key, value, 1, MAX_COUNT)
    }

    /// Also accepts 0, which means `meaning`.
    pub fn or_zero(mut self, meaning: &'static str) -> Self {
        self.zero_means = Some(meaning);
        self
    }

    fn accepts(&self) -> bool {
        (self.value == 0 && self.zero_means.is_some())
            || (self.min..=self.max).contains(&self.value)
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} = {} is outside {}..={}",
            self.key, self.value, self.min, self.max
        )?;
        if let Some(meaning) = self.zero_means {
            write!(formatter, " (or 0: {meaning})")?;
        }
        Ok(())
    }
}

/// The keys of `ranges` whose value lies outside their range, one message
/// each.
pub fn out_of_range(ranges: &[KeyRange]) -> Vec<String> {
    ranges
        .iter()
        .filter(|range| !range.accepts())
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_at_their_extremes() {
        let cases = [
            (KeyRange::duration_ms("[a] t_ms", 0), false),
            (KeyRange::duration_ms("[a] t_ms", 1), true),
            (KeyRange::duration_ms("[a] t_ms", MAX_DURATION_MS), true),
            (KeyRange::duration_ms("[a] t_ms", u64::MAX), false),
            (KeyRange::bytes("[a] b_bytes", 0u64).or_zero("off"), true),
            (KeyRange::bytes("[a] b_bytes", usize::MAX), false),
            (KeyRange::count("[a] n", 1u32), true),
            (KeyRange::count("[a] n", u64::MAX), false),
        ];
        for (range, accepted) in cases {
            assert_eq!(
                out_of_range(std::slice::from_ref(&range)).is_empty(),
                accepted,
                "{range}"
            );
        }
        let refused = out_of_range(&[
            KeyRange::bytes("[a] b_bytes", 0u64).or_zero("x"),
            KeyRange::duration_ms("[fetch] max_wait_ms", 0),
        ]);
        assert_eq!(
            refused,
            ["[fetch] max_wait_ms = 0 is outside 1..=31536000000"]
        );
    }
}
