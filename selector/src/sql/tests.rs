//! Semantics and error tests of SQL selectors, through `compile` and
//! `evaluate` on a hand-built message.

use super::{compile, Truth};
use crate::MessageView;

struct Message {
    headers: Vec<(String, Vec<u8>)>,
    key: Option<Vec<u8>>,
    tags: Vec<String>,
    timestamp_ms: i64,
}

impl MessageView for Message {
    fn tags(&self) -> &[String] {
        &self.tags
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(header_name, _)| header_name == name)
            .map(|(_, value)| value.as_slice())
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
}

/// A message with these text headers, key `order-7`, tags `paid` and
/// `eu`, timestamp 1000.
fn message(headers: &[(&str, &str)]) -> Message {
    Message {
        headers: headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
        key: Some(b"order-7".to_vec()),
        tags: vec!["paid".to_string(), "eu".to_string()],
        timestamp_ms: 1000,
    }
}

fn standard() -> Message {
    message(&[
        ("region", "eu"),
        ("amount", "250"),
        ("price", "9.99"),
        ("name", "Widget"),
        ("flag", "TRUE"),
        ("x-region", "eu-west"),
        ("text", "abc"),
        ("and", "keyword-named"),
        ("a b", "spaced"),
        ("__key", "header-named-key"),
        ("empty", ""),
        ("quote", "it's"),
    ])
}

fn truth(expression: &str, message: &Message) -> Truth {
    match compile(expression) {
        Ok(condition) => condition.evaluate(message),
        Err(error) => panic!("{expression:?} should compile: {error}"),
    }
}

fn check(expression: &str, expected: Truth) {
    assert_eq!(truth(expression, &standard()), expected, "{expression}");
}

fn error(expression: &str) -> String {
    match compile(expression) {
        Err(error) => error.to_string(),
        Ok(condition) => panic!("{expression:?} should fail, compiled {condition:?}"),
    }
}

use Truth::{False, True, Unknown};

#[test]
fn numeric_comparisons() {
    for (expression, expected) in [
        ("amount = 250", True),
        ("amount = 250.0", True),
        ("amount = 2.5e2", True),
        ("amount <> 250", False),
        ("amount <> 251", True),
        ("amount < 251", True),
        ("amount < 250", False),
        ("amount <= 250", True),
        ("amount <= 249", False),
        ("amount > 100", True),
        ("amount > 250", False),
        ("amount >= 250", True),
        ("amount >= 250.5", False),
        ("price > 9.9", True),
        ("price < 10", True),
        ("price = 9.99", True),
        ("amount > -1", True),
        ("amount > - 1", True),
        ("100 < amount", True),
        ("-5 < -4", True),
        ("1 = 1.0", True),
        ("__timestamp_ms = 1000", True),
        ("__timestamp_ms > 999.5", True),
        ("__timestamp_ms >= amount", True),
        ("amount < __timestamp_ms", True),
    ] {
        check(expression, expected);
    }
}

#[test]
fn string_comparisons() {
    for (expression, expected) in [
        ("region = 'eu'", True),
        ("region = 'EU'", False),
        ("region <> 'us'", True),
        ("region <> 'eu'", False),
        ("'eu' = region", True),
        ("region < 'f'", True),
        ("region > 'e'", True),
        ("region >= 'eu'", True),
        ("region <= 'eu'", True),
        ("region < 'eu'", False),
        ("name > 'Z'", False),
        ("name < 'a'", True), // 'W' sorts before 'a' by code point
        ("empty = ''", True),
        ("quote = 'it''s'", True),
        ("amount = '250'", True),
        ("amount = '250.0'", False), // as text
        ("amount < '3'", True),      // as text: "250" < "3"
        ("'a' < 'b'", True),
        ("region = text", False), // two properties compare as text
        ("region = region", True),
        ("__key = 'order-7'", True),
        ("__key LIKE 'order-%'", True),
    ] {
        check(expression, expected);
    }
}

#[test]
fn boolean_comparisons() {
    for (expression, expected) in [
        ("TRUE", True),
        ("FALSE", False),
        ("flag = TRUE", True),
        ("flag = FALSE", False),
        ("flag <> FALSE", True),
        ("TRUE = flag", True),
        ("TRUE = TRUE", True),
        ("TRUE <> FALSE", True),
        ("region = TRUE", Unknown), // "eu" is not a boolean
        ("missing = TRUE", Unknown),
    ] {
        check(expression, expected);
    }
    let lowercase = message(&[("flag", "false")]);
    assert_eq!(truth("flag = FALSE", &lowercase), True);
}

#[test]
fn headers_that_are_not_numbers_make_numeric_comparisons_unknown() {
    for expression in [
        "region > 100",
        "region = 1",
        "region <> 1",
        "NOT region > 100",
        "text BETWEEN 1 AND 2",
        "text NOT BETWEEN 1 AND 2",
        "text IN (1, 2)",
        "text NOT IN (1, 2)",
        "empty = 0",
        "__key = 7",
    ] {
        check(expression, Unknown);
    }
    for value in [" 5", "5 ", "0x5", "five", "NaN", "inf", "1e999", "1,5"] {
        let with_value = message(&[("n", value)]);
        assert_eq!(truth("n = 5", &with_value), Unknown, "{value:?}");
        assert_eq!(truth("n <> 5", &with_value), Unknown, "{value:?}");
    }
    for value in ["5", "+5", "5.0", "5e0", "05", "50e-1"] {
        let with_value = message(&[("n", value)]);
        assert_eq!(truth("n = 5", &with_value), True, "{value:?}");
    }
    let huge = message(&[("n", "99999999999999999999")]);
    assert_eq!(truth("n > 9223372036854775807", &huge), True);
}

#[test]
fn missing_properties_are_null_and_comparisons_unknown() {
    for expression in [
        "missing = 'x'",
        "missing <> 'x'",
        "missing > 1",
        "missing = missing",
        "missing BETWEEN 1 AND 2",
        "missing NOT BETWEEN 1 AND 2",
        "missing IN ('a')",
        "missing NOT IN ('a')",
        "missing LIKE '%'",
        "missing NOT LIKE '%'",
        "NOT missing = 'x'",
        "amount BETWEEN missing AND 300",
        "amount BETWEEN 1 AND missing",
    ] {
        check(expression, Unknown);
    }
    // One bound missing but the other already decides: FALSE.
    check("amount BETWEEN missing AND 100", False);
    check("amount BETWEEN 300 AND missing", False);
    check("amount NOT BETWEEN missing AND 100", True);
}

#[test]
fn is_null() {
    check("missing IS NULL", True);
    check("missing IS NOT NULL", False);
    check("region IS NULL", False);
    check("region IS NOT NULL", True);
    check("empty IS NULL", False);
    check("__key IS NOT NULL", True);
    check("__timestamp_ms IS NULL", False);
    check("__timestamp_ms IS NOT NULL", True);
    check("'x' IS NULL", False);
    check("5 IS NOT NULL", True);
    check("NOT missing IS NULL", False);
    let mut keyless = standard();
    keyless.key = None;
    assert_eq!(truth("__key IS NULL", &keyless), True);
    assert_eq!(truth("__key = 'order-7'", &keyless), Unknown);
}

#[test]
fn values_that_are_not_utf8_are_null() {
    let mut binary = standard();
    binary.headers.push(("blob".to_string(), vec![0xff, 0xfe]));
    binary.key = Some(vec![0xc3]);
    assert_eq!(truth("blob IS NULL", &binary), True);
    assert_eq!(truth("blob = 'x'", &binary), Unknown);
    assert_eq!(truth("__key IS NULL", &binary), True);
}

#[test]
fn three_valued_logic() {
    // UNKNOWN comes from a missing header.
    for (expression, expected) in [
        ("TRUE AND missing = 1", Unknown),
        ("FALSE AND missing = 1", False),
        ("missing = 1 AND FALSE", False),
        ("missing = 1 AND missing = 2", Unknown),
        ("TRUE OR missing = 1", True),
        ("missing = 1 OR TRUE", True),
        ("FALSE OR missing = 1", Unknown),
        ("missing = 1 OR missing = 2", Unknown),
        ("NOT missing = 1", Unknown),
        ("NOT (missing = 1 OR FALSE)", Unknown),
        ("NOT (missing = 1 AND FALSE)", True),
        ("NOT TRUE", False),
        ("NOT FALSE", True),
        ("NOT NOT TRUE", True),
        ("NOT NOT NOT TRUE", False),
        ("NOT NOT missing = 1", Unknown),
        ("region = 'eu' AND amount > 100 AND price < 10", True),
        ("region = 'us' OR amount > 1000 OR price < 10", True),
        ("region = 'us' OR amount > 1000 OR price > 10", False),
    ] {
        check(expression, expected);
    }
}

#[test]
fn precedence_is_not_then_and_then_or() {
    // OR binds loosest: TRUE OR (FALSE AND FALSE).
    check("TRUE OR FALSE AND FALSE", True);
    check("(TRUE OR FALSE) AND FALSE", False);
    check("FALSE AND FALSE OR TRUE", True);
    check("FALSE AND (FALSE OR TRUE)", False);
    // NOT binds tighter than AND and OR.
    check("NOT FALSE AND FALSE", False);
    check("NOT (FALSE AND FALSE)", True);
    check("NOT TRUE OR TRUE", True);
    check("NOT (TRUE OR TRUE)", False);
    // ... and looser than comparisons.
    check("NOT region = 'us'", True);
    check("NOT amount BETWEEN 1 AND 2", True);
    check("NOT region IN ('us') AND amount > 1", True);
    check("((region = 'eu'))", True);
}

#[test]
fn keywords_are_case_insensitive_names_are_not() {
    check("region = 'eu' and amount > 100", True);
    check("region = 'eu' AnD NoT amount < 100", True);
    check("region in ('eu') or false", True);
    check("missing is null", True);
    check("missing Is Not Null", False);
    check("amount between 1 and 300", True);
    check("amount not between 1 and 300", False);
    check("region like 'e%' escape '!'", True);
    check("true", True);
    check("Region = 'eu'", Unknown);
    check("REGION IS NULL", True);
}

#[test]
fn between() {
    for (expression, expected) in [
        ("amount BETWEEN 100 AND 300", True),
        ("amount BETWEEN 250 AND 250", True),
        ("amount BETWEEN 251 AND 300", False),
        ("amount BETWEEN 300 AND 100", False),
        ("amount NOT BETWEEN 100 AND 300", False),
        ("amount NOT BETWEEN 251 AND 300", True),
        ("price BETWEEN 9.98 AND 10", True),
        ("amount BETWEEN -1 AND 1e3", True),
        ("region BETWEEN 'a' AND 'f'", True),
        ("region BETWEEN 'eu' AND 'eu'", True),
        ("region NOT BETWEEN 'a' AND 'f'", False),
        ("__timestamp_ms BETWEEN 0 AND 1000", True),
        ("5 BETWEEN 1 AND 10", True),
        ("amount BETWEEN amount AND amount", True),
    ] {
        check(expression, expected);
    }
}

#[test]
fn in_lists() {
    for (expression, expected) in [
        ("region IN ('us', 'eu')", True),
        ("region IN ('us')", False),
        ("region NOT IN ('us', 'ap')", True),
        ("region NOT IN ('eu')", False),
        ("region IN ('eu', 'eu')", True),
        ("amount IN (1, 250)", True),
        ("amount IN (250.0)", True),
        ("amount IN ('250')", True),
        ("amount NOT IN (1, 2)", True),
        ("price IN (9.99, 1)", True),
        ("__timestamp_ms IN (1000)", True),
        ("__key IN ('order-7')", True),
        ("quote IN ('it''s')", True),
        ("'a' IN ('a', 'b')", True),
        ("-1 IN (-1)", True),
    ] {
        check(expression, expected);
    }
    // Long lists are binary-searched rather than scanned.
    let long: Vec<String> = (0..50).map(|index| format!("'r{index}'")).collect();
    let long = long.join(", ");
    check(&format!("region IN ({long})"), False);
    check(&format!("region IN ({long}, 'eu')"), True);
    check(&format!("'r37' IN ({long})"), True);
    check(&format!("region NOT IN ({long})"), True);
}

#[test]
fn tags_in() {
    for (expression, expected) in [
        ("__tags IN ('paid')", True),
        ("__tags IN ('eu', 'refund')", True),
        ("__tags IN ('refund')", False),
        ("__tags IN ('PAID')", False),
        ("__tags NOT IN ('refund')", True),
        ("__tags NOT IN ('refund', 'paid')", False),
    ] {
        check(expression, expected);
    }
    let mut untagged = standard();
    untagged.tags.clear();
    assert_eq!(truth("__tags IN ('paid')", &untagged), False);
    assert_eq!(truth("__tags NOT IN ('paid')", &untagged), True);
}

#[test]
fn like() {
    for (expression, expected) in [
        ("region LIKE 'eu'", True),
        ("region LIKE 'e%'", True),
        ("region LIKE '%u'", True),
        ("region LIKE 'e_'", True),
        ("region LIKE '_'", False),
        ("region LIKE 'E%'", False),
        ("region NOT LIKE 'us%'", True),
        ("region NOT LIKE 'e%'", False),
        ("\"x-region\" LIKE 'eu-%'", True),
        ("x-region LIKE '%-west'", True),
        ("empty LIKE ''", True),
        ("empty LIKE '%'", True),
        ("empty LIKE '_'", False),
        ("quote LIKE 'it''_'", True),
        ("name LIKE '%dg%'", True),
        ("amount LIKE '2%'", True), // a header is text for LIKE
        ("'50%' LIKE '50!%' ESCAPE '!'", True),
        ("'500' LIKE '50!%' ESCAPE '!'", False),
        ("'a_b' LIKE 'a\\_b' ESCAPE '\\'", True),
        ("'axb' LIKE 'a\\_b' ESCAPE '\\'", False),
        ("'a!b' LIKE 'a!!b' ESCAPE '!'", True),
        ("'a%' LIKE 'a''%' ESCAPE ''''", True),
        ("'a''b' LIKE 'a''%' ESCAPE ''''", False),
    ] {
        check(expression, expected);
    }
}

#[test]
fn quoted_identifiers() {
    check("\"region\" = 'eu'", True);
    check("\"and\" = 'keyword-named'", True);
    check("\"a b\" = 'spaced'", True);
    check("\"x-region\" = x-region", True);
    // Quoted, "__key" is a header; bare, the built-in.
    check("\"__key\" = 'header-named-key'", True);
    check("__key = 'order-7'", True);
    let with_quote = message(&[("say \"hi\"", "yes")]);
    assert_eq!(truth("\"say \"\"hi\"\"\" = 'yes'", &with_quote), True);
    let dotted = message(&[("app.version", "2")]);
    assert_eq!(truth("app.version >= 2", &dotted), True);
}

#[test]
fn first_header_of_a_name_counts() {
    let twice = message(&[("region", "eu"), ("region", "us")]);
    assert_eq!(truth("region = 'eu'", &twice), True);
    assert_eq!(truth("region = 'us'", &twice), False);
}

#[test]
fn flat_chains_of_any_length_evaluate() {
    let terms: Vec<String> = (100..300)
        .map(|index| format!("amount <> {index}"))
        .collect();
    let long_and = terms.join(" AND ");
    assert!(long_and.len() < crate::MAX_SELECTOR_BYTES);
    check(&long_and, False); // amount = 250 is among them
    let long_or = terms.join(" OR ");
    check(&long_or, True);
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let depth = crate::MAX_NESTING_DEPTH;
    let nested = format!("{}TRUE{}", "(".repeat(depth), ")".repeat(depth));
    check(&nested, True);
    let negated = format!("{}TRUE", "NOT ".repeat(depth));
    check(&negated, True); // an even number of NOTs
    let mixed = format!("{}TRUE{}", "NOT (".repeat(depth / 2), ")".repeat(depth / 2));
    check(&mixed, True);
}

#[test]
fn syntax_errors_point_at_the_mistake() {
    for (expression, expected) in [
        ("", "at column 0: expected a condition but found end of input"),
        ("   ", "at column 3: expected a condition but found end of input"),
        (
            "amount > 100 AND x >",
            "at column 20: expected a value after '>' but found end of input",
        ),
        (
            "region = 'eu' AND amount >",
            "at column 26: expected a value after '>' but found end of input",
        ),
        (
            "a = 1 AND",
            "at column 9: expected a condition after AND but found end of input",
        ),
        (
            "a = 1 OR OR b = 2",
            "at column 9: expected a condition after OR but found OR",
        ),
        ("AND a = 1", "at column 0: expected a condition but found AND"),
        (
            "a = 1 b = 2",
            "at column 6: expected AND, OR or end of input after number 1 but found identifier 'b'",
        ),
        ("a = 1)", "at column 5: this ')' has no matching '('"),
        (
            "(a = 1",
            "at column 6: expected ')' to close the '(' at column 0 but found end of input",
        ),
        (
            "((a = 1) OR (b = 2)",
            "at column 19: expected ')' to close the '(' at column 0 but found end of input",
        ),
        ("()", "at column 1: expected a condition after '(' but found ')'"),
        (
            "region",
            "at column 6: expected a comparison operator, IS, BETWEEN, IN or LIKE after property region but found end of input",
        ),
        (
            "region AND a = 1",
            "at column 7: expected a comparison operator, IS, BETWEEN, IN or LIKE after property region but found AND",
        ),
        (
            "'eu'",
            "at column 4: expected a comparison operator, IS, BETWEEN, IN or LIKE after string 'eu' but found end of input",
        ),
        (
            "-5",
            "at column 2: expected a comparison operator, IS, BETWEEN, IN or LIKE after number -5 but found end of input",
        ),
        (
            "a = AND",
            "at column 4: expected a value after '=' but found AND",
        ),
        ("a = )", "at column 4: expected a value after '=' but found ')'"),
        (
            "a = -",
            "at column 5: expected a number after '-' but found end of input",
        ),
        (
            "a = -'x'",
            "at column 5: expected a number after '-' but found string 'x'",
        ),
        (
            "a = --1",
            "at column 5: expected a number after '-' but found '-'",
        ),
        ("a < = 1", "at column 4: expected a value after '<' but found '='"),
        (
            "a IS 5",
            "at column 5: expected NULL or NOT NULL after IS but found number 5",
        ),
        (
            "a IS NOT 5",
            "at column 9: expected NULL after NOT but found number 5",
        ),
        (
            "a NOT = 1",
            "at column 6: expected BETWEEN, IN or LIKE after NOT but found '='",
        ),
        (
            "a NOT NULL",
            "at column 6: expected BETWEEN, IN or LIKE after NOT but found NULL",
        ),
        (
            "a BETWEEN 1 2",
            "at column 12: expected AND between the bounds of BETWEEN after number 1 but found number 2",
        ),
        (
            "a BETWEEN 1 AND",
            "at column 15: expected a value after AND but found end of input",
        ),
        (
            "a BETWEEN AND 2",
            "at column 10: expected a value after BETWEEN but found AND",
        ),
        ("a IN 'x'", "at column 5: expected '(' after IN but found string 'x'"),
        (
            "a IN ()",
            "at column 6: expected a string or number after '(' but found ')'",
        ),
        (
            "a IN ('x',)",
            "at column 10: expected a string or number after ',' but found ')'",
        ),
        (
            "a IN ('x' 'y')",
            "at column 10: expected ',' or ')' after string 'x' but found string 'y'",
        ),
        (
            "a IN ('x'",
            "at column 9: expected ',' or ')' after string 'x' but found end of input",
        ),
        (
            "a IN (b)",
            "at column 6: an IN list holds only string or number literals, not property b",
        ),
        (
            "a IN (TRUE)",
            "at column 6: an IN list holds only string or number literals, not boolean TRUE",
        ),
        (
            "a LIKE",
            "at column 6: expected a pattern in single quotes after LIKE but found end of input",
        ),
        (
            "a LIKE 'x' ESCAPE",
            "at column 17: expected an escape character in single quotes after ESCAPE but found end of input",
        ),
        (
            "a = NULL",
            "at column 4: NULL can only be used in IS NULL or IS NOT NULL (a comparison with NULL is never true)",
        ),
        (
            "NULL IS NULL",
            "at column 0: NULL can only be used in IS NULL or IS NOT NULL (a comparison with NULL is never true)",
        ),
        (
            "__region = 'eu'",
            "at column 0: unknown built-in property '__region': names starting with '__' are reserved for __key, __timestamp_ms and __tags; to read a header of that name, quote it: \"__region\"",
        ),
        (
            "a = 99999999999999999999",
            "at column 4: integer 99999999999999999999 is out of range (64-bit signed); write it with a '.' or an exponent to use a float",
        ),
        (
            "a > -1e999",
            "at column 4: number -1e999 is out of range (64-bit float)",
        ),
        ("a = 'x", "at column 4: this string has no closing quote (')"),
        ("a ! 1", "at column 2: unexpected character '!'"),
        (
            "é = 1 AND a ==",
            "at column 0: unexpected character 'é'",
        ),
        (
            "'é' = 'e' AND",
            "at column 13: expected a condition after AND but found end of input",
        ),
    ] {
        assert_eq!(error(expression), expected, "{expression}");
    }
}

#[test]
fn type_errors_are_parse_errors() {
    for (expression, expected) in [
        (
            "a LIKE 5",
            "at column 7: expected a pattern in single quotes after LIKE but found number 5",
        ),
        (
            "a LIKE b",
            "at column 7: expected a pattern in single quotes after LIKE but found identifier 'b'",
        ),
        (
            "'x' > TRUE",
            "at column 6: cannot compare string 'x' with boolean TRUE",
        ),
        (
            "TRUE = 'x'",
            "at column 0: cannot compare boolean TRUE with string 'x'",
        ),
        ("'5' = 5", "at column 0: cannot compare string '5' with number 5"),
        ("5 = '5'", "at column 4: cannot compare number 5 with string '5'"),
        ("TRUE = 1", "at column 0: cannot compare boolean TRUE with number 1"),
        (
            "__timestamp_ms = 'x'",
            "at column 17: cannot compare __timestamp_ms (a number) with string 'x'",
        ),
        (
            "__timestamp_ms = TRUE",
            "at column 17: cannot compare __timestamp_ms (a number) with boolean TRUE",
        ),
        (
            "flag < TRUE",
            "at column 5: booleans can only be compared with = or <>, not '<'",
        ),
        (
            "TRUE >= FALSE",
            "at column 5: booleans can only be compared with = or <>, not '>='",
        ),
        (
            "a BETWEEN 1 AND 'z'",
            "at column 16: cannot compare number 1 with string 'z'",
        ),
        (
            "'a' BETWEEN 1 AND 2",
            "at column 0: cannot compare string 'a' with number 1",
        ),
        (
            "a BETWEEN TRUE AND FALSE",
            "at column 10: BETWEEN needs numbers or strings; booleans have no order",
        ),
        (
            "a IN ('x', 1)",
            "at column 11: an IN list cannot mix strings and numbers: number 1 after string 'x'",
        ),
        (
            "a IN (1, 'x')",
            "at column 9: an IN list cannot mix strings and numbers: string 'x' after number 1",
        ),
        (
            "__timestamp_ms IN ('1')",
            "at column 19: cannot compare __timestamp_ms (a number) with string '1'",
        ),
        (
            "'a' IN (1)",
            "at column 8: cannot compare string 'a' with number 1",
        ),
        (
            "TRUE IN ('a')",
            "at column 0: IN needs a string or number on its left, not boolean TRUE",
        ),
        (
            "5 LIKE '5'",
            "at column 0: LIKE needs text on its left, not number 5",
        ),
        (
            "__timestamp_ms LIKE '1%'",
            "at column 0: LIKE needs text on its left, not __timestamp_ms (a number)",
        ),
        (
            "TRUE LIKE 'x'",
            "at column 0: LIKE needs text on its left, not boolean TRUE",
        ),
        (
            "a LIKE 'x' ESCAPE 'ab'",
            "at column 18: ESCAPE needs exactly one character, not 'ab'",
        ),
        (
            "a LIKE 'x' ESCAPE ''",
            "at column 18: ESCAPE needs exactly one character, not ''",
        ),
        (
            "a LIKE 'x' ESCAPE '%'",
            "at column 18: the escape character cannot be '%' or '_'",
        ),
        (
            "a LIKE 'a!b' ESCAPE '!'",
            "at column 7: in the LIKE pattern, the escape character '!' must be followed by '%', '_' or itself, not 'b'",
        ),
        (
            "a LIKE 'a!' ESCAPE '!'",
            "at column 7: the LIKE pattern ends with the escape character '!', which must be followed by '%', '_' or itself",
        ),
    ] {
        assert_eq!(error(expression), expected, "{expression}");
    }
}

#[test]
fn tags_only_with_in() {
    let message = "__tags is the set of the message's tags and can only be used as __tags IN ('a', ...) or __tags NOT IN ('a', ...)";
    for (expression, column) in [
        ("__tags = 'a'", 0),
        ("'a' = __tags", 6),
        ("__tags LIKE 'a%'", 0),
        ("__tags IS NULL", 0),
        ("__tags BETWEEN 'a' AND 'b'", 0),
        ("a BETWEEN __tags AND 'b'", 10),
        ("__tags", 0),
        ("__tags AND TRUE", 0),
    ] {
        assert_eq!(
            error(expression),
            format!("at column {column}: {message}"),
            "{expression}"
        );
    }
    assert_eq!(
        error("__tags IN (1)"),
        "at column 11: __tags IN needs a list of strings, not number 1"
    );
}

#[test]
fn limits() {
    let depth = crate::MAX_NESTING_DEPTH;
    let too_deep = format!("{}TRUE{}", "(".repeat(depth + 1), ")".repeat(depth + 1));
    assert_eq!(
        error(&too_deep),
        format!("at column {depth}: the expression nests deeper than 64 levels (each '(' and each NOT is a level)")
    );
    let too_many_nots = format!("{}TRUE", "NOT ".repeat(depth + 1));
    assert_eq!(
        error(&too_many_nots),
        format!(
            "at column {}: the expression nests deeper than 64 levels (each '(' and each NOT is a level)",
            depth * 4
        )
    );
    // Unbalanced and far too deep: refused at the limit, not by the stack.
    let hostile = "(".repeat(crate::MAX_SELECTOR_BYTES);
    assert_eq!(
        error(&hostile),
        format!("at column {depth}: the expression nests deeper than 64 levels (each '(' and each NOT is a level)")
    );
    let hostile = "NOT ".repeat(crate::MAX_SELECTOR_BYTES / 4);
    assert!(error(&hostile).contains("nests deeper than 64 levels"));

    let items: Vec<String> = (0..crate::MAX_IN_LIST_ITEMS)
        .map(|index| index.to_string())
        .collect();
    check(&format!("amount IN ({})", items.join(",")), True);
    let mut over = items.clone();
    over.push("999".to_string());
    let expression = format!("amount IN ({})", over.join(","));
    let column = expression.rfind("999").unwrap();
    assert_eq!(
        error(&expression),
        format!("at column {column}: too many values in the IN list; the limit is 256")
    );
}

#[test]
fn long_literals_are_shortened_in_messages() {
    let long = "x".repeat(100);
    let expression = format!("'{long}' = 5");
    assert_eq!(
        error(&expression),
        format!(
            "at column 0: cannot compare string '{}…' with number 5",
            "x".repeat(40)
        )
    );
}
