//! Recursive-descent parser for SQL selectors that type-checks as it goes
//! and builds the compiled [`Condition`]. Recursion happens only at `(`,
//! which counts against `MAX_NESTING_DEPTH` (as does `NOT`, parsed in a
//! loop), so hostile input cannot exhaust the stack.

use super::lexer::{tokenize, Token, TokenKind};
use super::like::LikePattern;
use super::number::{self, Number};
use super::{BooleanOperand, Comparison, Condition, NumberOperand, Property, TextOperand};
use crate::{SelectorError, MAX_IN_LIST_ITEMS, MAX_NESTING_DEPTH};

/// Compiles an SQL selector, or says where and why it is wrong.
pub(crate) fn compile(expression: &str) -> Result<Condition, SelectorError> {
    let mut parser = Parser {
        tokens: tokenize(expression)?,
        index: 0,
    };
    let condition = parser.condition(0)?;
    match parser.peek().kind {
        TokenKind::End => Ok(condition),
        TokenKind::RightParenthesis => Err(SelectorError::new(
            parser.peek().position,
            "this ')' has no matching '('",
        )),
        _ => Err(parser.expected("AND, OR or end of input")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    And,
    Or,
    Not,
    Between,
    In,
    Like,
    Escape,
    Is,
    Null,
    True,
    False,
}

const KEYWORDS: [(&str, Keyword); 11] = [
    ("AND", Keyword::And),
    ("OR", Keyword::Or),
    ("NOT", Keyword::Not),
    ("BETWEEN", Keyword::Between),
    ("IN", Keyword::In),
    ("LIKE", Keyword::Like),
    ("ESCAPE", Keyword::Escape),
    ("IS", Keyword::Is),
    ("NULL", Keyword::Null),
    ("TRUE", Keyword::True),
    ("FALSE", Keyword::False),
];

fn keyword(word: &str) -> Option<Keyword> {
    KEYWORDS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(word))
        .map(|(_, keyword)| *keyword)
}

/// Shortens what the user wrote for quoting in a message.
fn excerpt(text: &str) -> String {
    const MAX_CHARACTERS: usize = 40;
    if text.chars().count() <= MAX_CHARACTERS {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX_CHARACTERS).collect();
        format!("{head}…")
    }
}

/// How a token is named in messages: "end of input", "AND", "'('", ...
fn describe(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Word(word) => match keyword(word) {
            Some(_) => word.to_ascii_uppercase(),
            None => format!("identifier '{}'", excerpt(word)),
        },
        TokenKind::QuotedIdentifier(name) => format!("identifier \"{}\"", excerpt(name)),
        TokenKind::String(text) => format!("string '{}'", excerpt(text)),
        TokenKind::Number(text) => format!("number {}", excerpt(text)),
        TokenKind::LeftParenthesis => "'('".to_string(),
        TokenKind::RightParenthesis => "')'".to_string(),
        TokenKind::Comma => "','".to_string(),
        TokenKind::Minus => "'-'".to_string(),
        TokenKind::Equal => "'='".to_string(),
        TokenKind::NotEqual => "'<>'".to_string(),
        TokenKind::Less => "'<'".to_string(),
        TokenKind::LessOrEqual => "'<='".to_string(),
        TokenKind::Greater => "'>'".to_string(),
        TokenKind::GreaterOrEqual => "'>='".to_string(),
        TokenKind::End => "end of input".to_string(),
    }
}

/// An operand as parsed, before the comparison it is in decides its type.
#[derive(Debug, Clone)]
enum Value {
    String(String),
    Number(Number),
    Boolean(bool),
    Property(Property),
    Timestamp,
    Tags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Numeric,
    Text,
    Boolean,
}

#[derive(Debug, Clone)]
struct Operand {
    value: Value,
    position: usize,
    /// How messages name it: "string 'eu'", "property region", ...
    description: String,
}

impl Operand {
    /// The type it imposes on a comparison; properties (text) impose none.
    fn mode(&self) -> Option<Mode> {
        match self.value {
            Value::String(_) => Some(Mode::Text),
            Value::Number(_) | Value::Timestamp => Some(Mode::Numeric),
            Value::Boolean(_) => Some(Mode::Boolean),
            Value::Property(_) | Value::Tags => None,
        }
    }

    fn as_text(&self) -> Option<TextOperand> {
        match &self.value {
            Value::String(text) => Some(TextOperand::Literal(text.clone())),
            Value::Property(property) => Some(TextOperand::Property(property.clone())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<NumberOperand> {
        match &self.value {
            Value::Number(number) => Some(NumberOperand::Literal(*number)),
            Value::Property(property) => Some(NumberOperand::Property(property.clone())),
            Value::Timestamp => Some(NumberOperand::Timestamp),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<BooleanOperand> {
        match &self.value {
            Value::Boolean(value) => Some(BooleanOperand::Literal(*value)),
            Value::Property(property) => Some(BooleanOperand::Property(property.clone())),
            _ => None,
        }
    }

    /// `__tags` is a set and fits only `__tags [NOT] IN (...)`.
    fn refuse_tags(&self) -> Result<(), SelectorError> {
        if matches!(self.value, Value::Tags) {
            return Err(tags_misused(self.position));
        }
        Ok(())
    }
}

/// The type operands are compared as: numbers win over strings, strings
/// over booleans, and two properties compare as text.
fn common_mode(operands: &[&Operand]) -> Mode {
    let modes: Vec<Mode> = operands
        .iter()
        .filter_map(|operand| operand.mode())
        .collect();
    [Mode::Numeric, Mode::Text, Mode::Boolean]
        .into_iter()
        .find(|mode| modes.contains(mode))
        .unwrap_or(Mode::Text)
}

/// Converts `operand` (one of `operands`) to `mode`, or reports it
/// against the first operand that set the mode, in the order they were
/// written.
fn convert<T>(
    operand: &Operand,
    operands: &[&Operand],
    mode: Mode,
    conversion: impl Fn(&Operand) -> Option<T>,
) -> Result<T, SelectorError> {
    if let Some(converted) = conversion(operand) {
        return Ok(converted);
    }
    let setter = operands
        .iter()
        .find(|candidate| candidate.mode() == Some(mode))
        .copied()
        .unwrap_or(operand);
    let (first, second) = if setter.position < operand.position {
        (setter, operand)
    } else {
        (operand, setter)
    };
    Err(SelectorError::new(
        operand.position,
        format!(
            "cannot compare {} with {}",
            first.description, second.description
        ),
    ))
}

fn tags_misused(position: usize) -> SelectorError {
    SelectorError::new(
        position,
        "__tags is the set of the message's tags and can only be used as __tags IN ('a', ...) or __tags NOT IN ('a', ...)",
    )
}

struct Parser {
    /// Always ends with one `End` token.
    tokens: Vec<Token>,
    index: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        // The index never passes the final `End` token (see `advance`).
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::End {
            self.index += 1;
        }
        token
    }

    fn peek_keyword(&self) -> Option<Keyword> {
        match &self.peek().kind {
            TokenKind::Word(word) => keyword(word),
            _ => None,
        }
    }

    /// "expected {what} after {previous token} but found {next token}", at
    /// the next token.
    fn expected(&self, what: &str) -> SelectorError {
        let after = match self
            .index
            .checked_sub(1)
            .and_then(|index| self.tokens.get(index))
        {
            Some(previous) => format!(" after {}", describe(&previous.kind)),
            None => String::new(),
        };
        self.expected_after(what, &after)
    }

    fn expected_after(&self, what: &str, after: &str) -> SelectorError {
        SelectorError::new(
            self.peek().position,
            format!(
                "expected {what}{after} but found {}",
                describe(&self.peek().kind)
            ),
        )
    }

    fn too_deep(position: usize) -> SelectorError {
        SelectorError::new(
            position,
            format!(
                "the expression nests deeper than {MAX_NESTING_DEPTH} levels (each '(' and each NOT is a level)"
            ),
        )
    }

    /// `and_condition { OR and_condition }`
    fn condition(&mut self, depth: usize) -> Result<Condition, SelectorError> {
        let mut alternatives = vec![self.and_condition(depth)?];
        while self.peek_keyword() == Some(Keyword::Or) {
            self.advance();
            alternatives.push(self.and_condition(depth)?);
        }
        Ok(if alternatives.len() == 1 {
            alternatives.swap_remove(0)
        } else {
            Condition::Or(alternatives)
        })
    }

    /// `not_condition { AND not_condition }`
    fn and_condition(&mut self, depth: usize) -> Result<Condition, SelectorError> {
        let mut conjuncts = vec![self.not_condition(depth)?];
        while self.peek_keyword() == Some(Keyword::And) {
            self.advance();
            conjuncts.push(self.not_condition(depth)?);
        }
        Ok(if conjuncts.len() == 1 {
            conjuncts.swap_remove(0)
        } else {
            Condition::And(conjuncts)
        })
    }

    /// `{ NOT } primary`; NOT NOT x is x in three-valued logic too, so only
    /// the parity is kept.
    fn not_condition(&mut self, mut depth: usize) -> Result<Condition, SelectorError> {
        let mut negated = false;
        while self.peek_keyword() == Some(Keyword::Not) {
            let not = self.advance();
            depth += 1;
            if depth > MAX_NESTING_DEPTH {
                return Err(Self::too_deep(not.position));
            }
            negated = !negated;
        }
        let primary = self.primary(depth)?;
        Ok(if negated {
            Condition::Not(Box::new(primary))
        } else {
            primary
        })
    }

    fn primary(&mut self, depth: usize) -> Result<Condition, SelectorError> {
        if self.peek().kind == TokenKind::LeftParenthesis {
            let open = self.advance();
            if depth + 1 > MAX_NESTING_DEPTH {
                return Err(Self::too_deep(open.position));
            }
            let inner = self.condition(depth + 1)?;
            if self.peek().kind != TokenKind::RightParenthesis {
                return Err(self.expected_after(
                    &format!("')' to close the '(' at column {}", open.position),
                    "",
                ));
            }
            self.advance();
            return Ok(inner);
        }
        let left = self.operand("a condition")?;
        self.predicate(left)
    }

    /// A literal, `TRUE`/`FALSE`, a header or a built-in.
    fn operand(&mut self, what: &str) -> Result<Operand, SelectorError> {
        let token = self.peek().clone();
        let position = token.position;
        let (value, description) = match &token.kind {
            TokenKind::Word(word) => match keyword(word) {
                Some(Keyword::True) => (Value::Boolean(true), "boolean TRUE".to_string()),
                Some(Keyword::False) => (Value::Boolean(false), "boolean FALSE".to_string()),
                Some(Keyword::Null) => {
                    return Err(SelectorError::new(
                        position,
                        "NULL can only be used in IS NULL or IS NOT NULL (a comparison with NULL is never true)",
                    ))
                }
                Some(_) => return Err(self.expected(what)),
                None => match word.as_str() {
                    "__key" => (Value::Property(Property::Key), "__key".to_string()),
                    "__timestamp_ms" => (
                        Value::Timestamp,
                        "__timestamp_ms (a number)".to_string(),
                    ),
                    "__tags" => (Value::Tags, "__tags".to_string()),
                    _ if word.starts_with("__") => {
                        return Err(SelectorError::new(
                            position,
                            format!(
                                "unknown built-in property '{}': names starting with '__' are reserved for __key, __timestamp_ms and __tags; to read a header of that name, quote it: \"{}\"",
                                excerpt(word),
                                excerpt(word)
                            ),
                        ))
                    }
                    _ => (
                        Value::Property(Property::Header(word.clone())),
                        format!("property {}", excerpt(word)),
                    ),
                },
            },
            TokenKind::QuotedIdentifier(name) => (
                Value::Property(Property::Header(name.clone())),
                format!("property \"{}\"", excerpt(name)),
            ),
            TokenKind::String(text) => (
                Value::String(text.clone()),
                format!("string '{}'", excerpt(text)),
            ),
            TokenKind::Number(text) => {
                let number = number::parse_literal(text)
                    .map_err(|message| SelectorError::new(position, message))?;
                (Value::Number(number), format!("number {}", excerpt(text)))
            }
            TokenKind::Minus => {
                self.advance();
                let TokenKind::Number(text) = &self.peek().kind else {
                    return Err(self.expected("a number"));
                };
                let signed = format!("-{text}");
                let number = number::parse_literal(&signed)
                    .map_err(|message| SelectorError::new(position, message))?;
                (Value::Number(number), format!("number {}", excerpt(&signed)))
            }
            _ => return Err(self.expected(what)),
        };
        self.advance();
        Ok(Operand {
            value,
            position,
            description,
        })
    }

    /// What follows a condition's first operand.
    fn predicate(&mut self, left: Operand) -> Result<Condition, SelectorError> {
        let token = self.peek().clone();
        let comparison = match token.kind {
            TokenKind::Equal => Some(Comparison::Equal),
            TokenKind::NotEqual => Some(Comparison::NotEqual),
            TokenKind::Less => Some(Comparison::Less),
            TokenKind::LessOrEqual => Some(Comparison::LessOrEqual),
            TokenKind::Greater => Some(Comparison::Greater),
            TokenKind::GreaterOrEqual => Some(Comparison::GreaterOrEqual),
            _ => None,
        };
        if let Some(comparison) = comparison {
            self.advance();
            let right = self.operand("a value")?;
            return Self::comparison(left, comparison, &token, right);
        }
        match self.peek_keyword() {
            Some(Keyword::Is) => {
                self.advance();
                let negated = self.peek_keyword() == Some(Keyword::Not);
                if negated {
                    self.advance();
                }
                if self.peek_keyword() != Some(Keyword::Null) {
                    return Err(self.expected(if negated { "NULL" } else { "NULL or NOT NULL" }));
                }
                self.advance();
                left.refuse_tags()?;
                Ok(match left.value {
                    Value::Property(property) => Condition::IsNull { property, negated },
                    // Literals and the timestamp are never NULL.
                    _ => Condition::Constant(negated),
                })
            }
            Some(Keyword::Not) => {
                self.advance();
                match self.peek_keyword() {
                    Some(Keyword::Between) => self.between(left, true),
                    Some(Keyword::In) => self.in_list(left, true),
                    Some(Keyword::Like) => self.like(left, true),
                    _ => Err(self.expected("BETWEEN, IN or LIKE")),
                }
            }
            Some(Keyword::Between) => self.between(left, false),
            Some(Keyword::In) => self.in_list(left, false),
            Some(Keyword::Like) => self.like(left, false),
            _ => match left.value {
                Value::Boolean(value) => Ok(Condition::Constant(value)),
                Value::Tags => Err(tags_misused(left.position)),
                _ => Err(self.expected_after(
                    "a comparison operator, IS, BETWEEN, IN or LIKE",
                    &format!(" after {}", left.description),
                )),
            },
        }
    }

    fn comparison(
        left: Operand,
        comparison: Comparison,
        operator: &Token,
        right: Operand,
    ) -> Result<Condition, SelectorError> {
        left.refuse_tags()?;
        right.refuse_tags()?;
        let operands = [&left, &right];
        let mode = common_mode(&operands);
        Ok(match mode {
            Mode::Numeric => Condition::CompareNumbers {
                left: convert(&left, &operands, mode, Operand::as_number)?,
                comparison,
                right: convert(&right, &operands, mode, Operand::as_number)?,
            },
            Mode::Text => Condition::CompareText {
                left: convert(&left, &operands, mode, Operand::as_text)?,
                comparison,
                right: convert(&right, &operands, mode, Operand::as_text)?,
            },
            Mode::Boolean => {
                let left = convert(&left, &operands, mode, Operand::as_boolean)?;
                let right = convert(&right, &operands, mode, Operand::as_boolean)?;
                let equal = match comparison {
                    Comparison::Equal => true,
                    Comparison::NotEqual => false,
                    _ => {
                        return Err(SelectorError::new(
                            operator.position,
                            format!(
                                "booleans can only be compared with = or <>, not {}",
                                describe(&operator.kind)
                            ),
                        ))
                    }
                };
                Condition::CompareBooleans { left, equal, right }
            }
        })
    }

    /// `value [NOT] BETWEEN low AND high`, at BETWEEN.
    fn between(&mut self, value: Operand, negated: bool) -> Result<Condition, SelectorError> {
        self.advance();
        let low = self.operand("a value")?;
        if self.peek_keyword() != Some(Keyword::And) {
            return Err(self.expected("AND between the bounds of BETWEEN"));
        }
        self.advance();
        let high = self.operand("a value")?;
        for operand in [&value, &low, &high] {
            operand.refuse_tags()?;
        }
        let operands = [&value, &low, &high];
        let mode = common_mode(&operands);
        Ok(match mode {
            Mode::Numeric => Condition::BetweenNumbers {
                value: convert(&value, &operands, mode, Operand::as_number)?,
                low: convert(&low, &operands, mode, Operand::as_number)?,
                high: convert(&high, &operands, mode, Operand::as_number)?,
                negated,
            },
            Mode::Text => Condition::BetweenText {
                value: convert(&value, &operands, mode, Operand::as_text)?,
                low: convert(&low, &operands, mode, Operand::as_text)?,
                high: convert(&high, &operands, mode, Operand::as_text)?,
                negated,
            },
            Mode::Boolean => {
                let boolean = operands
                    .iter()
                    .find(|operand| operand.mode() == Some(Mode::Boolean))
                    .map_or(value.position, |operand| operand.position);
                return Err(SelectorError::new(
                    boolean,
                    "BETWEEN needs numbers or strings; booleans have no order",
                ));
            }
        })
    }

    /// `value [NOT] IN (literal, ...)`, at IN.
    fn in_list(&mut self, value: Operand, negated: bool) -> Result<Condition, SelectorError> {
        self.advance();
        if self.peek().kind != TokenKind::LeftParenthesis {
            return Err(self.expected("'('"));
        }
        self.advance();
        let mut items: Vec<Operand> = Vec::new();
        loop {
            if items.len() == MAX_IN_LIST_ITEMS {
                return Err(SelectorError::new(
                    self.peek().position,
                    format!("too many values in the IN list; the limit is {MAX_IN_LIST_ITEMS}"),
                ));
            }
            let item = self.operand("a string or number")?;
            match &item.value {
                Value::String(_) | Value::Number(_) => {}
                _ => {
                    return Err(SelectorError::new(
                        item.position,
                        format!(
                            "an IN list holds only string or number literals, not {}",
                            item.description
                        ),
                    ))
                }
            }
            if let Some(first) = items.first() {
                if first.mode() != item.mode() {
                    return Err(SelectorError::new(
                        item.position,
                        format!(
                            "an IN list cannot mix strings and numbers: {} after {}",
                            item.description, first.description
                        ),
                    ));
                }
            }
            items.push(item);
            match self.peek().kind {
                TokenKind::Comma => {
                    self.advance();
                }
                TokenKind::RightParenthesis => {
                    self.advance();
                    break;
                }
                _ => return Err(self.expected("',' or ')'")),
            }
        }
        let first = &items[0];
        let list_mode = first.mode();
        let mismatch = || {
            SelectorError::new(
                first.position,
                format!(
                    "cannot compare {} with {}",
                    value.description, first.description
                ),
            )
        };
        match (&value.value, value.mode()) {
            (Value::Tags, _) => {
                if list_mode != Some(Mode::Text) {
                    return Err(SelectorError::new(
                        first.position,
                        format!(
                            "__tags IN needs a list of strings, not {}",
                            first.description
                        ),
                    ));
                }
                Ok(Condition::TagsIn {
                    set: sorted_strings(&items),
                    negated,
                })
            }
            (_, Some(Mode::Boolean)) => Err(SelectorError::new(
                value.position,
                format!(
                    "IN needs a string or number on its left, not {}",
                    value.description
                ),
            )),
            (_, Some(left_mode)) if Some(left_mode) != list_mode => Err(mismatch()),
            _ => {
                if list_mode == Some(Mode::Numeric) {
                    let value = value.as_number().ok_or_else(mismatch)?;
                    let list = items
                        .iter()
                        .filter_map(|item| match item.value {
                            Value::Number(number) => Some(number),
                            _ => None,
                        })
                        .collect();
                    Ok(Condition::InNumbers {
                        value,
                        list,
                        negated,
                    })
                } else {
                    let value = value.as_text().ok_or_else(mismatch)?;
                    Ok(Condition::InText {
                        value,
                        set: sorted_strings(&items),
                        negated,
                    })
                }
            }
        }
    }

    /// `value [NOT] LIKE 'pattern' [ESCAPE 'c']`, at LIKE.
    fn like(&mut self, value: Operand, negated: bool) -> Result<Condition, SelectorError> {
        self.advance();
        value.refuse_tags()?;
        let pattern_token = self.peek().clone();
        let TokenKind::String(pattern) = &pattern_token.kind else {
            return Err(self.expected("a pattern in single quotes"));
        };
        self.advance();
        let mut escape = None;
        if self.peek_keyword() == Some(Keyword::Escape) {
            self.advance();
            let escape_token = self.peek().clone();
            let TokenKind::String(escape_text) = &escape_token.kind else {
                return Err(self.expected("an escape character in single quotes"));
            };
            let mut characters = escape_text.chars();
            let (Some(character), None) = (characters.next(), characters.next()) else {
                return Err(SelectorError::new(
                    escape_token.position,
                    format!(
                        "ESCAPE needs exactly one character, not '{}'",
                        excerpt(escape_text)
                    ),
                ));
            };
            if character == '%' || character == '_' {
                return Err(SelectorError::new(
                    escape_token.position,
                    "the escape character cannot be '%' or '_'",
                ));
            }
            self.advance();
            escape = Some(character);
        }
        let pattern = LikePattern::compile(pattern, escape)
            .map_err(|message| SelectorError::new(pattern_token.position, message))?;
        let Some(value_operand) = value.as_text() else {
            return Err(SelectorError::new(
                value.position,
                format!("LIKE needs text on its left, not {}", value.description),
            ));
        };
        Ok(Condition::Like {
            value: value_operand,
            pattern,
            negated,
        })
    }
}

/// The string literals of an IN list, sorted and without duplicates.
fn sorted_strings(items: &[Operand]) -> Box<[String]> {
    let mut strings: Vec<String> = items
        .iter()
        .filter_map(|item| match &item.value {
            Value::String(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    strings.sort_unstable();
    strings.dedup();
    strings.into_boxed_slice()
}
