//! Reading a request's query string and path segments: percent-decoding
//! that never fails on bad input (bad escapes stay as they are).

/// Percent-decodes `text` (`+` is a space, as forms send it). Malformed
/// escapes are kept literally; bytes that are not UTF-8 become U+FFFD.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' if index + 2 < bytes.len() => {
                match (hex_digit(bytes[index + 1]), hex_digit(bytes[index + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(high << 4 | low);
                        index += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The decoded value of `name` in a query string (the first one).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// A numeric parameter: `Ok(None)` when absent or empty, an error naming
/// the parameter when not a number of that type.
pub fn number_param<T: std::str::FromStr>(query: &str, name: &str) -> Result<Option<T>, String> {
    match query_param(query, name) {
        None => Ok(None),
        Some(text) if text.trim().is_empty() => Ok(None),
        Some(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a number, not '{}'", text.escape_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_and_keeps_malformed_ones() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%3Cscript%3E"), "<script>");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(percent_decode(""), "");
    }

    #[test]
    fn finds_parameters() {
        let query = "topic=orders%2Fx&partition=3&empty=&flag";
        assert_eq!(query_param(query, "topic").as_deref(), Some("orders/x"));
        assert_eq!(query_param(query, "flag").as_deref(), Some(""));
        assert_eq!(query_param(query, "missing"), None);
        assert_eq!(number_param::<u32>(query, "partition"), Ok(Some(3)));
        assert_eq!(number_param::<u32>(query, "empty"), Ok(None));
        assert!(number_param::<u32>("partition=-1", "partition").is_err());
        assert!(number_param::<u64>("offset=99999999999999999999", "offset").is_err());
    }
}
