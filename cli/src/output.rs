//! How listing and describe commands print: aligned tables for people
//! (`--output table`, the default) or one JSON document on stdout for
//! scripts (`--output json`: stable snake_case field names, numbers as
//! numbers, sizes in bytes, durations in milliseconds, times RFC 3339).
//!
//! The format is chosen once per process (`main` sets it from the global
//! flag), so each command asks [`json`] instead of carrying it around.

use anyhow::{Context, Result};
use std::sync::OnceLock;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

static FORMAT: OnceLock<OutputFormat> = OnceLock::new();

/// Sets the format for this process (first call wins).
pub fn set_format(format: OutputFormat) {
    let _ = FORMAT.set(format);
}

/// Whether listings print JSON.
pub fn json() -> bool {
    FORMAT.get().copied().unwrap_or_default() == OutputFormat::Json
}

/// Prints `value` as one pretty JSON document on stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON output")?;
    println!("{text}");
    Ok(())
}

/// Prints rows as columns padded to their widest cell (in characters).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, rows));
}

/// The text of [`print_table`].
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            match widths.get_mut(index) {
                Some(width) => *width = (*width).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(index, cell)| format!("{cell:<width$}", width = widths[index]))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_lines_trimmed() {
        let text = render_table(
            &["ID", "STATE"],
            &[
                vec!["broker-1".into(), "up".into()],
                vec!["b2".into(), String::new()],
            ],
        );
        assert_eq!(text, "ID        STATE\nbroker-1  up\nb2\n");
    }

    #[test]
    fn a_row_longer_than_the_header_is_not_cut_or_a_panic() {
        let text = render_table(&["A"], &[vec!["x".into(), "extra".into()]]);
        assert_eq!(text, "A\nx  extra\n");
    }

    #[test]
    fn wide_characters_count_once() {
        let text = render_table(&["NAME", "N"], &[vec!["zürich".into(), "1".into()]]);
        assert_eq!(text, "NAME    N\nzürich  1\n");
    }
}
