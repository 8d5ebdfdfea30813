//! Server-side message selectors for subscriptions, as RocketMQ users know
//! them: a subscription names a [`SelectorKind`] and an expression, the
//! broker compiles it once with [`Selector::parse`] and asks
//! [`Selector::matches`] of every record it would deliver.
//!
//! # Kinds
//!
//! | Kind | Expression | Selects |
//! |---|---|---|
//! | `all` | empty or `*` | every message |
//! | `tag` | `tagA \|\| tagB`, or `*` / empty for all | messages carrying at least one listed tag |
//! | `sql` | an SQL-92 condition (below) | messages for which the condition is TRUE |
//!
//! [`SelectorKind`] parses from `"all"`, `"tag"` or `"sql"` (any case).
//!
//! # Tag expressions
//!
//! ```text
//! tag_expression = "*" | "" | tag { "||" tag } ;
//! tag            = one or more characters, none of them whitespace or '|' ;
//! ```
//!
//! Whitespace around tags and `||` is ignored. Tags are compared exactly
//! (case-sensitive). A message matches when **any** of its tags is listed;
//! a message without tags matches only `*`. `*` must stand alone (`a || *`
//! is an error), a single `|` is an error, and at most [`MAX_TAGS`] tags
//! may be listed.
//!
//! # SQL expressions
//!
//! The subset of SQL-92 RocketMQ's SQL92 filter and JMS message selectors
//! offer, over the message's headers and three built-in pseudo-properties.
//! Keywords are case-insensitive; property names are case-sensitive.
//!
//! ```text
//! condition      = and_condition { OR and_condition } ;
//! and_condition  = not_condition { AND not_condition } ;
//! not_condition  = { NOT } primary ;
//! primary        = "(" condition ")"
//!                | TRUE | FALSE
//!                | value ( "=" | "<>" | "<" | "<=" | ">" | ">=" ) value
//!                | value IS [ NOT ] NULL
//!                | value [ NOT ] BETWEEN value AND value
//!                | value [ NOT ] IN "(" literal { "," literal } ")"
//!                | value [ NOT ] LIKE string [ ESCAPE string ]
//!                | "__tags" [ NOT ] IN "(" string { "," string } ")" ;
//! value          = property | literal | TRUE | FALSE ;
//! literal        = string | number ;
//! property       = identifier | quoted_identifier | "__key" | "__timestamp_ms" ;
//! identifier     = [A-Za-z_] [A-Za-z0-9_.-]*      (not a keyword) ;
//! quoted_identifier = '"' { any character but '"' | '""' } '"' ;
//! string         = "'" { any character but "'" | "''" } "'" ;
//! number         = [ "-" ] ( digits [ "." [ digits ] ] | "." digits ) [ ( "e" | "E" ) [ "+" | "-" ] digits ] ;
//! keywords       = AND OR NOT BETWEEN IN LIKE ESCAPE IS NULL TRUE FALSE ;
//! ```
//!
//! Precedence, highest first: comparisons and predicates, `NOT`, `AND`,
//! `OR`. So `NOT a = 1 OR b = 2 AND c = 3` is `(NOT (a = 1)) OR ((b = 2) AND
//! (c = 3))`.
//!
//! ## Properties
//!
//! * A plain or double-quoted identifier names a **header**; its value is
//!   read as UTF-8 text. A header that is absent, or whose value is not valid
//!   UTF-8, is NULL. If a record holds the same header twice, the first one
//!   counts. Identifiers may contain `.` and `-` (`x-region` and
//!   `app.version` need no quotes; there is no arithmetic, so `a-1` is a
//!   name too); names that are keywords or hold other characters need
//!   double quotes (`"and"`, `"content type"`), and `""` inside quotes is
//!   one `"`.
//! * Bare names starting with `__` are reserved for built-ins; an unknown one
//!   is an error. A double-quoted `"__key"` always names a header.
//!   * `__key`: the record key as UTF-8 text (NULL when the record has no
//!     key or it is not UTF-8). It behaves like a header.
//!   * `__timestamp_ms`: the record timestamp, a number (never NULL).
//!   * `__tags`: the record's tags. A set, so it is allowed only as
//!     `__tags IN ('a', 'b')` (TRUE when any tag is listed, else FALSE) and
//!     `__tags NOT IN (...)` (TRUE when none is); never NULL or UNKNOWN, a
//!     record without tags is simply not IN any list. `__tags = 'a'` is an
//!     error: write `__tags IN ('a')`. (RocketMQ exposes a message's one
//!     tag as the property `TAGS`; here `TAGS` is just a header name, and
//!     `TAGS = 'a'` becomes `__tags IN ('a')`.)
//!
//! ## Types and coercion
//!
//! Literals are typed: strings, numbers (integers are 64-bit signed,
//! anything with a `.` or an exponent is a 64-bit float), booleans. Headers
//! and `__key` are text that takes the type of what they are compared with:
//!
//! * against a **number** (a numeric literal or `__timestamp_ms`) the text is
//!   parsed as a number with the same syntax as a number literal plus an
//!   optional leading `+` (no surrounding whitespace): `"250"`, `"-1.5"`,
//!   `"1e3"`. If it does not parse, the comparison is **UNKNOWN** (so
//!   neither `amount > 100` nor `NOT amount > 100` selects `amount: "abc"`).
//!   Integers and floats compare exactly by value (`"1000" = 1e3`).
//! * against a **string** it is compared as text: `=`/`<>` byte for byte,
//!   `<`, `<=`, `>`, `>=` by Unicode code point (case-sensitive).
//! * against a **boolean** it must read `true` or `false` (any case), else
//!   UNKNOWN; booleans only support `=` and `<>`.
//! * two properties compare as text.
//!
//! `BETWEEN` takes its type from all three operands the same way, and `IN`
//! from its list, which holds strings or numbers but not both:
//! `amount IN (1, 2)` compares numerically, `amount IN ('1', '2')` as text.
//!
//! Type errors visible in the expression are parse errors: `'5' = 5`,
//! `'x' > TRUE`, `a LIKE 5`, `__timestamp_ms = 'x'`, `flag < TRUE`,
//! `IN ('a', 1)`. A property alone is not a condition (`flag AND ...` is an
//! error; write `flag = TRUE`), and `NULL` is only allowed in `IS [NOT]
//! NULL` (a comparison with NULL is never TRUE).
//!
//! ## NULL and three-valued logic
//!
//! As in SQL: a comparison, `BETWEEN`, `IN` or `LIKE` involving a NULL (or
//! unparseable) property is UNKNOWN; `NOT UNKNOWN` is UNKNOWN; `FALSE AND
//! UNKNOWN` is FALSE; `TRUE OR UNKNOWN` is TRUE; only TRUE selects. Use `IS
//! NULL` / `IS NOT NULL` to test for presence. `x BETWEEN a AND b` is `x >= a
//! AND x <= b`, `x NOT BETWEEN a AND b` is `NOT (x BETWEEN a AND b)`, and
//! likewise for `NOT IN` and `NOT LIKE`.
//!
//! ## LIKE
//!
//! `%` matches any run of characters (also none), `_` exactly one character,
//! everything else itself (case-sensitive). With `ESCAPE 'c'` (one
//! character, not `%` or `_`), `c%`, `c_` and `cc` stand for `%`, `_` and
//! `c`; `c` followed by anything else, or ending the pattern, is an error.
//!
//! # Errors
//!
//! Every mistake is a [`SelectorError`] with the 0-based character column it
//! points at and a message, e.g. `at column 17: expected a value after '>'
//! but found end of input`.
//!
//! # Limits
//!
//! Expressions come from the network, so: at most [`MAX_SELECTOR_BYTES`]
//! bytes, [`MAX_NESTING_DEPTH`] levels of parentheses and `NOT`,
//! [`MAX_IN_LIST_ITEMS`] values per `IN` list, [`MAX_TAGS`] tags per tag
//! expression; anything beyond is a [`SelectorError`], never a panic.
//! `AND`/`OR` chains are flat, so evaluation recurses only as deep as the
//! nesting limit allows. `LIKE` never takes exponential time: linear in the
//! text when the pieces between `%`s hold no `_` (`'eu%'`, `'%error%'`),
//! at most (pattern length × text length) steps otherwise.

mod error;
mod sql;
mod tag;

pub use error::{ParseSelectorKindError, SelectorError};

use sluice_proto::batch::Record;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest accepted expression, in bytes (any kind).
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Deepest accepted nesting of parentheses and `NOT` in an SQL expression
/// (each `(` and each `NOT` is one level).
pub const MAX_NESTING_DEPTH: usize = 64;
/// Most values accepted in one SQL `IN (...)` list.
pub const MAX_IN_LIST_ITEMS: usize = 256;
/// Most tags accepted in one tag expression.
pub const MAX_TAGS: usize = 256;

/// What language a subscription's expression is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    /// Every message; the expression is empty or `*`.
    All,
    /// `tagA || tagB`: messages carrying any listed tag.
    Tag,
    /// An SQL-92 condition over headers and built-in properties.
    Sql,
}

impl SelectorKind {
    /// The name [`FromStr`] accepts: `all`, `tag` or `sql`.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorKind::All => "all",
            SelectorKind::Tag => "tag",
            SelectorKind::Sql => "sql",
        }
    }
}

impl fmt::Display for SelectorKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for SelectorKind {
    type Err = ParseSelectorKindError;

    /// Parses `all`, `tag` or `sql`, in any case.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [SelectorKind::All, SelectorKind::Tag, SelectorKind::Sql]
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseSelectorKindError {
                given: name.to_string(),
            })
    }
}

/// What the selector needs to know about a message.
///
/// The broker implements it for whatever it holds; [`Record`] (a decoded
/// record) has an implementation here.
pub trait MessageView {
    /// The message's tags, in any order (duplicates are harmless).
    fn tags(&self) -> &[String];
    /// The value of the first header called exactly `name`, if any.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The record key, if the record has one.
    fn key(&self) -> Option<&[u8]>;
    /// The record timestamp, unix milliseconds.
    fn timestamp_ms(&self) -> i64;
}

impl MessageView for Record {
    fn tags(&self) -> &[String] {
        &self.tags
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.as_ref())
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

/// A compiled selector: parse once per subscription, then call
/// [`matches`](Selector::matches) per message. Cloning is cheap (shared).
#[derive(Debug, Clone)]
pub struct Selector {
    kind: SelectorKind,
    expression: Arc<str>,
    compiled: Arc<Compiled>,
}

#[derive(Debug)]
enum Compiled {
    All,
    Tags(tag::TagSet),
    Sql(sql::Condition),
}

impl Selector {
    /// Compiles `expression` as `kind`, or says where and why it is wrong.
    pub fn parse(kind: SelectorKind, expression: &str) -> Result<Selector, SelectorError> {
        if expression.len() > MAX_SELECTOR_BYTES {
            // Point at the first character that does not fit.
            let fitting_chars = expression
                .char_indices()
                .take_while(|(start, character)| start + character.len_utf8() <= MAX_SELECTOR_BYTES)
                .count();
            return Err(SelectorError::new(
                fitting_chars,
                format!(
                    "the expression is {} bytes; the limit is {MAX_SELECTOR_BYTES}",
                    expression.len()
                ),
            ));
        }
        let compiled = match kind {
            SelectorKind::All => {
                let trimmed = expression.trim();
                if !trimmed.is_empty() && trimmed != "*" {
                    let position = expression
                        .chars()
                        .take_while(|character| character.is_whitespace())
                        .count();
                    return Err(SelectorError::new(
                        position,
                        "a selector of kind 'all' takes no expression (leave it empty or write '*')",
                    ));
                }
                Compiled::All
            }
            SelectorKind::Tag => match tag::parse(expression)? {
                None => Compiled::All,
                Some(tags) => Compiled::Tags(tags),
            },
            SelectorKind::Sql => Compiled::Sql(sql::compile(expression)?),
        };
        Ok(Selector {
            kind,
            expression: Arc::from(expression),
            compiled: Arc::new(compiled),
        })
    }

    /// The selector that selects every message (kind `all`, expression `*`).
    pub fn all() -> Selector {
        Selector {
            kind: SelectorKind::All,
            expression: Arc::from("*"),
            compiled: Arc::new(Compiled::All),
        }
    }

    /// True if the message is selected: for SQL, only when the condition is
    /// TRUE (not FALSE, not UNKNOWN).
    pub fn matches(&self, message: &impl MessageView) -> bool {
        match &*self.compiled {
            Compiled::All => true,
            Compiled::Tags(tags) => tags.matches_any(message.tags()),
            Compiled::Sql(condition) => condition.evaluate(message) == sql::Truth::True,
        }
    }

    /// The kind it was parsed as.
    pub fn kind(&self) -> SelectorKind {
        self.kind
    }

    /// The expression exactly as given to [`parse`](Selector::parse).
    pub fn expression(&self) -> &str {
        &self.expression
    }
}

/// Whether a sorted, deduplicated set holds `item`. Small sets (the usual
/// case) are scanned, which compares lengths first and beats a binary
/// search's ordered comparisons; large ones are searched.
fn sorted_contains(set: &[String], item: &str) -> bool {
    const MAX_SCANNED: usize = 8;
    if set.len() <= MAX_SCANNED {
        set.iter().any(|listed| listed == item)
    } else {
        set.binary_search_by(|listed| listed.as_str().cmp(item))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(tags: &[&str], headers: &[(&str, &str)]) -> Record {
        Record {
            offset: 0,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"order-1")),
            value: None,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), Bytes::from(value.to_string())))
                .collect(),
            tags: tags.iter().map(|tag| tag.to_string()).collect(),
        }
    }

    #[test]
    fn selector_is_clone_debug_send_sync() {
        fn assert_traits<T: Clone + fmt::Debug + Send + Sync + 'static>() {}
        assert_traits::<Selector>();
        assert_traits::<SelectorError>();
    }

    #[test]
    fn kind_parses_case_insensitively_and_round_trips() {
        for kind in [SelectorKind::All, SelectorKind::Tag, SelectorKind::Sql] {
            assert_eq!(kind.as_str().parse::<SelectorKind>(), Ok(kind));
            assert_eq!(
                kind.as_str().to_uppercase().parse::<SelectorKind>(),
                Ok(kind)
            );
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!("Sql".parse::<SelectorKind>(), Ok(SelectorKind::Sql));
        let error = "regex".parse::<SelectorKind>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown selector kind 'regex'; expected all, tag or sql"
        );
        assert!("".parse::<SelectorKind>().is_err());
        assert!(" sql".parse::<SelectorKind>().is_err());
    }

    #[test]
    fn all_selects_everything_and_keeps_its_expression() {
        let message = record(&[], &[]);
        assert!(Selector::all().matches(&message));
        assert_eq!(Selector::all().kind(), SelectorKind::All);
        assert_eq!(Selector::all().expression(), "*");
        for expression in ["", "*", "  *  ", "   "] {
            let selector = Selector::parse(SelectorKind::All, expression).unwrap();
            assert!(selector.matches(&message));
            assert_eq!(selector.expression(), expression);
        }
    }

    #[test]
    fn all_refuses_an_expression() {
        let error = Selector::parse(SelectorKind::All, "  a = 1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "at column 2: a selector of kind 'all' takes no expression (leave it empty or write '*')"
        );
    }

    #[test]
    fn kind_and_expression_are_kept() {
        let selector = Selector::parse(SelectorKind::Tag, " a || b ").unwrap();
        assert_eq!(selector.kind(), SelectorKind::Tag);
        assert_eq!(selector.expression(), " a || b ");
        let selector = Selector::parse(SelectorKind::Tag, "*").unwrap();
        assert_eq!(selector.kind(), SelectorKind::Tag);
        assert!(selector.matches(&record(&[], &[])));
        let selector = Selector::parse(SelectorKind::Sql, "a = 1").unwrap();
        assert_eq!(selector.kind(), SelectorKind::Sql);
        assert_eq!(selector.expression(), "a = 1");
    }

    #[test]
    fn record_view_reads_the_first_header_key_tags_and_timestamp() {
        let mut message = record(&["t1", "t2"], &[("region", "eu"), ("region", "us")]);
        assert_eq!(message.header("region"), Some(&b"eu"[..]));
        assert_eq!(message.header("Region"), None);
        assert_eq!(message.key(), Some(&b"order-1"[..]));
        assert_eq!(message.tags(), &["t1".to_string(), "t2".to_string()]);
        assert_eq!(message.timestamp_ms(), 1_700_000_000_000);
        message.key = None;
        assert_eq!(message.key(), None);
    }

    #[test]
    fn each_kind_matches_records() {
        let message = record(&["paid", "eu"], &[("region", "eu"), ("amount", "250")]);
        let tag = Selector::parse(SelectorKind::Tag, "refund || paid").unwrap();
        assert!(tag.matches(&message));
        let tag = Selector::parse(SelectorKind::Tag, "refund || PAID").unwrap();
        assert!(!tag.matches(&message));
        let sql = Selector::parse(SelectorKind::Sql, "region = 'eu' AND amount > 100").unwrap();
        assert!(sql.matches(&message));
        let sql = Selector::parse(SelectorKind::Sql, "region = 'eu' AND amount > 300").unwrap();
        assert!(!sql.matches(&message));
        let clone = sql.clone();
        assert!(!clone.matches(&message));
    }

    #[test]
    fn too_long_expressions_are_refused_for_every_kind() {
        let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
        for kind in [SelectorKind::All, SelectorKind::Tag, SelectorKind::Sql] {
            let error = Selector::parse(kind, &long).unwrap_err();
            assert_eq!(error.position, MAX_SELECTOR_BYTES);
            assert_eq!(
                error.message,
                format!("the expression is 4097 bytes; the limit is {MAX_SELECTOR_BYTES}")
            );
        }
        // Exactly at the limit is fine.
        let at_limit = "a".repeat(MAX_SELECTOR_BYTES);
        assert!(Selector::parse(SelectorKind::Tag, &at_limit).is_ok());
        // The column counts characters, not bytes: 2 bytes each, so the
        // 2049th character is the first that does not fit.
        let wide = "é".repeat(MAX_SELECTOR_BYTES / 2 + 1);
        let error = Selector::parse(SelectorKind::Tag, &wide).unwrap_err();
        assert_eq!(error.position, MAX_SELECTOR_BYTES / 2);
    }
}
