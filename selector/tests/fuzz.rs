//! Fuzz-style property tests: random bytes, random token soups and random
//! well-formed expressions must never make `Selector::parse` or `matches`
//! panic, and well-formed expressions must parse. Seeds are fixed so a
//! failure reproduces; the failing input is printed.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::batch::Record;
use sluice_selector::{Selector, SelectorKind, MAX_SELECTOR_BYTES};

const KINDS: [SelectorKind; 3] = [SelectorKind::All, SelectorKind::Tag, SelectorKind::Sql];

fn records() -> Vec<Record> {
    let header = |name: &str, value: &[u8]| (name.to_string(), Bytes::from(value.to_vec()));
    vec![
        Record {
            offset: 0,
            timestamp_ms: 1000,
            key: Some(Bytes::from_static(b"k")),
            value: None,
            headers: vec![header("a", b"1"), header("b", b"eu"), header("c", b"true")],
            tags: vec!["x".to_string(), "y".to_string()],
        },
        Record {
            offset: 1,
            timestamp_ms: -5,
            key: Some(Bytes::from_static(&[0xff])),
            value: None,
            headers: vec![header("a", b"abc"), header("b", &[0xc3]), header("a", b"2")],
            tags: Vec::new(),
        },
        Record {
            offset: 2,
            timestamp_ms: i64::MAX,
            key: None,
            value: None,
            headers: vec![header("a", b"-1e308"), header("b", &b"%_".repeat(500))],
            tags: vec!["%".to_string()],
        },
    ]
}

/// Parses with every kind and, whatever it parsed, matches every record.
fn exercise(expression: &str, records: &[Record]) -> Vec<bool> {
    KINDS
        .iter()
        .map(|kind| match Selector::parse(*kind, expression) {
            Ok(selector) => {
                for record in records {
                    selector.matches(record);
                }
                true
            }
            Err(error) => {
                assert!(
                    error.position <= expression.chars().count(),
                    "{expression:?}: position {} beyond the end",
                    error.position
                );
                assert!(!error.message.is_empty(), "{expression:?}: empty message");
                false
            }
        })
        .collect()
}

#[test]
fn random_bytes_never_panic() {
    let records = records();
    let mut random = StdRng::seed_from_u64(0x5e1e_c70e);
    for _ in 0..20_000 {
        let length = random.random_range(0..64);
        let bytes: Vec<u8> = (0..length).map(|_| random.random()).collect();
        let text = String::from_utf8_lossy(&bytes);
        exercise(&text, &records);
    }
}

const ATOMS: &[&str] = &[
    "a",
    "b",
    "c",
    "\"a\"",
    "\"x y\"",
    "__key",
    "__timestamp_ms",
    "__tags",
    "__bad",
    "'eu'",
    "''",
    "'it''s'",
    "'%'",
    "'_'",
    "'!'",
    "1",
    "-1",
    "2.5",
    "1e3",
    "-",
    "TRUE",
    "FALSE",
    "NULL",
    "AND",
    "OR",
    "NOT",
    "IS",
    "BETWEEN",
    "IN",
    "LIKE",
    "ESCAPE",
    "(",
    ")",
    ",",
    "=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    "||",
    "|",
    "*",
    "x-y",
    "'",
    "\"",
    "é",
    " ",
];

#[test]
fn random_token_soups_never_panic() {
    let records = records();
    let mut random = StdRng::seed_from_u64(7);
    for _ in 0..50_000 {
        let length = random.random_range(0..24);
        let soup: Vec<&str> = (0..length)
            .map(|_| ATOMS[random.random_range(0..ATOMS.len())])
            .collect();
        exercise(&soup.join(" "), &records);
    }
}

fn value(random: &mut StdRng, numeric: bool) -> String {
    if numeric {
        ["a", "__timestamp_ms", "1", "-2.5", "1e2", "\"a\""][random.random_range(0..6)].to_string()
    } else {
        ["b", "__key", "'eu'", "'it''s'", "\"x y\""][random.random_range(0..5)].to_string()
    }
}

/// A random well-formed condition at most `depth` levels deep.
fn condition(random: &mut StdRng, depth: usize) -> String {
    let choice = if depth == 0 {
        random.random_range(0..8)
    } else {
        random.random_range(0..11)
    };
    let numeric = random.random_bool(0.5);
    let not = if random.random_bool(0.3) { "NOT " } else { "" };
    match choice {
        0 => ["TRUE", "FALSE", "c = TRUE"][random.random_range(0..3)].to_string(),
        1 => {
            let operator = ["=", "<>", "<", "<=", ">", ">="][random.random_range(0..6)];
            format!(
                "{} {operator} {}",
                value(random, numeric),
                value(random, numeric)
            )
        }
        2 => format!("{} IS {not}NULL", value(random, numeric)),
        3 => format!(
            "{} {not}BETWEEN {} AND {}",
            value(random, numeric),
            value(random, numeric),
            value(random, numeric)
        ),
        4 if numeric => format!("a {not}IN (1, 2.5, -3)"),
        4 => format!("b {not}IN ('eu', 'x')"),
        5 => format!("b {not}LIKE '%e_' ESCAPE '!'"),
        6 => format!("__key {not}LIKE '!%%' ESCAPE '!'"),
        7 => format!("__tags {not}IN ('x', 'z')"),
        8 => format!("({})", condition(random, depth - 1)),
        9 => format!("NOT {}", condition(random, depth - 1)),
        _ => {
            let joiner = if random.random_bool(0.5) {
                " AND "
            } else {
                " OR "
            };
            let count = random.random_range(2..4);
            (0..count)
                .map(|_| condition(random, depth - 1))
                .collect::<Vec<_>>()
                .join(joiner)
        }
    }
}

#[test]
fn random_well_formed_expressions_parse_and_evaluate() {
    let records = records();
    let mut random = StdRng::seed_from_u64(42);
    for _ in 0..5_000 {
        let expression = condition(&mut random, 4);
        if expression.len() > MAX_SELECTOR_BYTES {
            continue;
        }
        let selector = match Selector::parse(SelectorKind::Sql, &expression) {
            Ok(selector) => selector,
            Err(error) => panic!("{expression:?} should parse: {error}"),
        };
        for record in &records {
            selector.matches(record);
        }
        // Truncating a valid expression anywhere must not panic either.
        let characters: Vec<char> = expression.chars().collect();
        let cut = random.random_range(0..=characters.len());
        let truncated: String = characters[..cut].iter().collect();
        exercise(&truncated, &records);
    }
}

#[test]
fn hostile_shapes_are_refused_without_panicking() {
    let records = records();
    let half = MAX_SELECTOR_BYTES / 2;
    for expression in [
        "(".repeat(MAX_SELECTOR_BYTES),
        ")".repeat(MAX_SELECTOR_BYTES),
        "NOT ".repeat(MAX_SELECTOR_BYTES / 4),
        "(".repeat(half) + &")".repeat(half),
        "'".repeat(MAX_SELECTOR_BYTES),
        "\"".repeat(MAX_SELECTOR_BYTES - 1),
        "a IN (".to_string() + &"1,".repeat(half - 4) + "1)",
        "||".repeat(half),
        "a".repeat(MAX_SELECTOR_BYTES + 1),
        "-".repeat(MAX_SELECTOR_BYTES),
        "9".repeat(MAX_SELECTOR_BYTES),
        format!("b LIKE '{}b'", "%a".repeat(half - 8)),
    ] {
        exercise(&expression, &records);
    }
}
