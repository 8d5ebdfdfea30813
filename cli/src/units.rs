//! Durations and sizes as people write them (`7d`, `90s`, `64MiB`, `1.5GB`)
//! and as they read them in tables; a raw number is still accepted (in
//! the flag's unit: milliseconds, bytes). JSON output keeps raw numbers.
//!
//! Durations: `ms`, `s`, `m`, `h`, `d`, `w`, combinable (`1h30m`).
//! Sizes: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000), `KiB`/`MiB`/`GiB`/
//! `TiB` (powers of 1024), case-insensitive, a fraction allowed
//! (`1.5GiB`); `K`/`M`/`G`/`T` alone mean the binary units.

/// Longest text accepted for one value, in bytes.
const MAX_INPUT_BYTES: usize = 64;

const MS_PER_UNIT: [(&str, u64); 6] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

/// Parses a duration into milliseconds: `250` (ms), `250ms`, `90s`, `7d`,
/// `1h30m`.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = checked(text)?;
    if let Ok(raw) = text.parse::<u64>() {
        return Ok(raw);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration: use a number of milliseconds or e.g. 250ms, 90s, 15m, 12h, 7d, 1h30m"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let Some((_, factor)) = MS_PER_UNIT.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "{text:?}: unknown duration unit {unit:?} (use ms, s, m, h, d or w)"
            ));
        };
        total = number
            .checked_mul(*factor)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a size into bytes: `1048576`, `64MiB`, `64 MB`, `1.5GiB`, `512k`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = checked(text)?;
    if let Ok(raw) = text.parse::<u64>() {
        return Ok(raw);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a size: use a number of bytes or e.g. 512KiB, 64MiB, 1.5GiB, 100MB"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
    let bytes = (value * factor as f64).round();
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?}: size too large"));
    }
    Ok(bytes as u64)
}

/// [`parse_bytes`] for flags held in 32 bits.
pub fn parse_bytes_u32(text: &str) -> Result<u32, String> {
    let bytes = parse_bytes(text)?;
    u32::try_from(bytes).map_err(|_| format!("{text:?}: at most {} bytes (4 GiB - 1)", u32::MAX))
}

fn checked(text: &str) -> Result<&str, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty value".into());
    }
    if text.len() > MAX_INPUT_BYTES {
        return Err(format!("value longer than {MAX_INPUT_BYTES} bytes"));
    }
    Ok(text)
}

/// A duration for people: `0`, `250ms`, `90s`, `1h 30m`, `7d`; at most two
/// units, the rest rounded down.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0".into();
    }
    if ms < 1_000 || !ms.is_multiple_of(1_000) && ms < 60_000 {
        return if ms < 1_000 {
            format!("{ms}ms")
        } else {
            format!("{:.1}s", ms as f64 / 1000.0)
        };
    }
    let mut parts = Vec::new();
    let mut rest = ms;
    for (name, factor) in MS_PER_UNIT.iter().skip(1).rev() {
        if rest >= *factor {
            parts.push(format!("{}{name}", rest / factor));
            rest %= factor;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// A size for people in binary units: `512 B`, `64 MiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for name in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = name;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A Unix time in milliseconds as RFC 3339 (UTC, millisecond precision);
/// the raw number when it is out of range.
pub fn format_unix_ms(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => {
            let format = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            at.format(&format).unwrap_or_else(|_| unix_ms.to_string())
        }
        Err(_) => unix_ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_form_and_raw_milliseconds() {
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms(" 90s "), Ok(90_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("2w"), Ok(2 * 604_800_000));
        assert_eq!(parse_duration_ms(&u64::MAX.to_string()), Ok(u64::MAX));
    }

    #[test]
    fn bad_durations_are_refused_with_the_reason() {
        for bad in [
            "",
            "d",
            "7x",
            "7 d",
            "-5s",
            "1.5h",
            "h1",
            "99999999999999999999d",
        ] {
            let error = parse_duration_ms(bad).expect_err(bad);
            assert!(!error.is_empty(), "{bad}");
        }
        assert!(parse_duration_ms("7x").unwrap_err().contains("unit"));
        assert!(parse_duration_ms("300000000000w")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration_ms(&"1".repeat(100))
            .unwrap_err()
            .contains("longer"));
    }

    #[test]
    fn sizes_in_decimal_binary_and_raw_bytes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64mb"), Ok(64_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("7B"), Ok(7));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "-1MiB",
            "1.2.3MiB",
            "99999999999TiB",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!(parse_bytes_u32("4GiB").unwrap_err().contains("at most"));
        assert_eq!(parse_bytes_u32("1MiB"), Ok(1 << 20));
    }

    #[test]
    fn durations_and_sizes_read_back_in_human_form() {
        assert_eq!(format_duration_ms(0), "0");
        assert_eq!(format_duration_ms(250), "250ms");
        assert_eq!(format_duration_ms(1_500), "1.5s");
        assert_eq!(format_duration_ms(90_000), "1m 30s");
        assert_eq!(format_duration_ms(7 * 86_400_000), "1w");
        assert_eq!(format_duration_ms(86_400_000 + 3_600_000 + 5), "1d 1h");
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(u64::MAX), "16384 PiB");
        for ms in [1, 999, 1_000, 61_000, 3_600_000, 86_400_000] {
            let shown = format_duration_ms(ms).replace(' ', "");
            if !shown.contains('.') {
                assert_eq!(parse_duration_ms(&shown), Ok(ms), "{shown}");
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(format_unix_ms(i64::MAX), i64::MAX.to_string());
    }
}
