//! The shipped example configs (`config/*.toml`) say each numeric key's
//! accepted range in a `# Range:` line among the comments right above the
//! key, written from the same [`KeyRange`]s that loading enforces, so the
//! file cannot drift from the code: each service's tests compare its file
//! with [`document_ranges`] of it, and `SLUICE_UPDATE_CONFIG_DOCS=1` makes
//! that test rewrite the file instead.
//!
//! A key is found as the first line `key = …` or `# key = …` (commented
//! out: a key without a default) after its `[section]` header (a
//! top-level key: before the first header). Its range
//! line goes last in the comment block directly above it, replacing an
//! earlier `# Range:` line there.

use crate::KeyRange;

/// The marker of a range line.
const RANGE_PREFIX: &str = "# Range: ";

/// The environment variable that makes [`check_example_config`] rewrite
/// the file rather than fail.
pub const UPDATE_CONFIG_DOCS_VARIABLE: &str = "SLUICE_UPDATE_CONFIG_DOCS";

/// The range line for `range`, e.g. `# Range: 1..=31536000000 (or 0: off)`.
pub fn range_line(range: &KeyRange) -> String {
    let mut line = format!("{RANGE_PREFIX}{}..={}", range.min, range.max);
    if let Some(meaning) = range.zero_means {
        line.push_str(&format!(" (or 0: {meaning})"));
    }
    line
}

/// `text` with every key of `ranges` preceded by its range line. Keys not
/// found in `text` are returned as errors (the file must list every key).
pub fn document_ranges(text: &str, ranges: &[KeyRange]) -> Result<String, Vec<String>> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut missing = Vec::new();
    for range in ranges {
        let (section, key) = split_key(&range.key);
        let Some(index) = key_line(&lines, section, key) else {
            missing.push(format!("{} is not in the file", range.key));
            continue;
        };
        let line = range_line(range);
        match range_line_above(&lines, index) {
            Some(existing) => lines[existing] = line,
            None => lines.insert(index, line),
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut documented = lines.join("\n");
    if text.ends_with('\n') {
        documented.push('\n');
    }
    Ok(documented)
}

/// Compares the example file at `path` with [`document_ranges`] of it;
/// with [`UPDATE_CONFIG_DOCS_VARIABLE`] set, writes that instead. For the
/// services' tests: an error says what differs and how to update.
pub fn check_example_config(path: &std::path::Path, ranges: &[KeyRange]) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    let documented = document_ranges(&text, ranges)
        .map_err(|missing| format!("{}: {}", path.display(), missing.join("; ")))?;
    if documented == text {
        return Ok(());
    }
    if std::env::var_os(UPDATE_CONFIG_DOCS_VARIABLE).is_some() {
        return std::fs::write(path, documented)
            .map_err(|error| format!("writing {}: {error}", path.display()));
    }
    let first_difference = text
        .lines()
        .zip(documented.lines())
        .position(|(old, new)| old != new)
        .map_or(text.lines().count(), |index| index + 1);
    Err(format!(
        "{} does not state the ranges loading enforces (first difference at line {first_difference}); run the test again with {UPDATE_CONFIG_DOCS_VARIABLE}=1 to rewrite it",
        path.display()
    ))
}

/// `[section] key` as (Some(section), key); a top-level key as (None, key).
fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.strip_prefix('[').and_then(|rest| rest.split_once("] ")) {
        Some((section, key)) => (Some(section), key),
        None => (None, key),
    }
}

/// The line of `key` in `[section]`, or before the first section.
fn key_line(lines: &[String], section: Option<&str>, key: &str) -> Option<usize> {
    let start = match section {
        Some(section) => {
            let header = format!("[{section}]");
            lines.iter().position(|line| line.trim() == header)? + 1
        }
        None => 0,
    };
    lines[start..]
        .iter()
        .take_while(|line| !line.trim_start().starts_with('['))
        .position(|line| defines(line, key))
        .map(|offset| start + offset)
}

/// Whether `line` sets `key`, possibly commented out.
fn defines(line: &str, key: &str) -> bool {
    let line = line.trim_start();
    let line = line.strip_prefix('#').map_or(line, str::trim_start);
    line.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// The range line in the comment block directly above line `index`.
fn range_line_above(lines: &[String], index: usize) -> Option<usize> {
    (0..index)
        .rev()
        .take_while(|above| {
            let line = lines[*above].trim_start();
            line.starts_with('#') && !defines_any(line)
        })
        .find(|above| lines[*above].starts_with(RANGE_PREFIX))
}

/// Whether a comment line is a commented-out `key = value`.
fn defines_any(line: &str) -> bool {
    let body = line.trim_start_matches('#').trim_start();
    body.split_once('=').is_some_and(|(key, _)| {
        !key.trim().is_empty()
            && key
                .trim()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
[fetch]
# Longest wait.
max_wait_ms = 500
# Bytes, or off.
# Range: 1..=2
cache_bytes = 0
# Not set by default.
# limit = 3

[other]
max_wait_ms = 7
";

    fn ranges() -> Vec<KeyRange> {
        vec![
            KeyRange::duration_ms("[fetch] max_wait_ms", 500),
            KeyRange::bytes("[fetch] cache_bytes", 0u64).or_zero("off"),
            KeyRange::count("[fetch] limit", 3u64),
        ]
    }

    #[test]
    fn range_lines_go_above_their_keys_and_replace_stale_ones() {
        let documented = document_ranges(FILE, &ranges()).expect("every key found");
        let expected = format!(
            "\
[fetch]
# Longest wait.
# Range: 1..={}
max_wait_ms = 500
# Bytes, or off.
# Range: 1..={} (or 0: off)
cache_bytes = 0
# Not set by default.
# Range: 1..={}
# limit = 3

[other]
max_wait_ms = 7
",
            crate::MAX_DURATION_MS,
            crate::MAX_SIZE_BYTES,
            crate::MAX_COUNT
        );
        assert_eq!(documented, expected);
        // Idempotent: a documented file is left as it is.
        assert_eq!(
            document_ranges(&documented, &ranges()).expect("found"),
            documented
        );
    }

    #[test]
    fn a_key_missing_from_its_section_is_reported() {
        let missing = document_ranges(FILE, &[KeyRange::count("[other] limit", 1u64)])
            .expect_err("limit is not in [other]");
        assert_eq!(missing, ["[other] limit is not in the file"]);
        let unknown_section = document_ranges(FILE, &[KeyRange::count("[nope] x", 1u64)])
            .expect_err("no such section");
        assert_eq!(unknown_section.len(), 1);
        // A top-level key is looked for before the first section only.
        let top_level = document_ranges(FILE, &[KeyRange::count("max_wait_ms", 1u64)])
            .expect_err("max_wait_ms is only inside sections");
        assert_eq!(top_level, ["max_wait_ms is not in the file"]);
        let documented =
            document_ranges("n = 1\n[s]\nn = 2\n", &[KeyRange::count("n", 1u64)]).expect("found");
        assert_eq!(
            documented,
            format!("# Range: 1..={}\nn = 1\n[s]\nn = 2\n", crate::MAX_COUNT)
        );
    }

    #[test]
    fn a_range_line_above_a_commented_out_neighbour_is_not_taken() {
        // `# Range:` belongs to `a`; `b`'s block starts after `# a = 1`.
        let text = "[s]\n# Range: 1..=2\n# a = 1\nb = 2\n";
        let documented =
            document_ranges(text, &[KeyRange::new("[s] b", 2u64, 1, 9)]).expect("found");
        assert_eq!(
            documented,
            "[s]\n# Range: 1..=2\n# a = 1\n# Range: 1..=9\nb = 2\n"
        );
    }
}
