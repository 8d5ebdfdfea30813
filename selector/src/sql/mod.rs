//! SQL-92 selectors: the compiled, type-checked condition tree and its
//! evaluation in three-valued logic. The syntax and semantics users see are
//! documented at the top of the crate; `parser` builds the tree, `lexer`
//! tokenizes, `like` and `number` hold the two non-trivial value rules.
//!
//! Types are settled at parse time: every comparison is compiled as a text,
//! number or boolean comparison, so evaluation never meets a type it does
//! not expect and only headers (text) are converted per message.

mod lexer;
mod like;
mod number;
mod parser;

pub(crate) use parser::compile;

use crate::{sorted_contains, MessageView};
use like::LikePattern;
use number::Number;
use std::cmp::Ordering;

/// A condition's value in SQL's three-valued logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(value: bool) -> Truth {
        if value {
            Truth::True
        } else {
            Truth::False
        }
    }

    /// UNKNOWN when the operands were not all there.
    fn from_option(value: Option<bool>) -> Truth {
        value.map_or(Truth::Unknown, Truth::from_bool)
    }

    fn negate(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    fn negate_if(self, negated: bool) -> Truth {
        if negated {
            self.negate()
        } else {
            self
        }
    }

    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::False, _) | (_, Truth::False) => Truth::False,
            (Truth::True, Truth::True) => Truth::True,
            _ => Truth::Unknown,
        }
    }
}

/// Something read from the message as text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Property {
    Header(String),
    Key,
}

impl Property {
    /// The text, or `None` (NULL) when absent or not UTF-8.
    fn text<'message, M: MessageView + ?Sized>(
        &self,
        message: &'message M,
    ) -> Option<&'message str> {
        let bytes = match self {
            Property::Header(name) => message.header(name),
            Property::Key => message.key(),
        }?;
        std::str::from_utf8(bytes).ok()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TextOperand {
    Literal(String),
    Property(Property),
}

impl TextOperand {
    fn text<'operand, M: MessageView + ?Sized>(
        &'operand self,
        message: &'operand M,
    ) -> Option<&'operand str> {
        match self {
            TextOperand::Literal(text) => Some(text),
            TextOperand::Property(property) => property.text(message),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NumberOperand {
    Literal(Number),
    /// Parsed per message; `None` (UNKNOWN) when it is not a number.
    Property(Property),
    Timestamp,
}

impl NumberOperand {
    fn number<M: MessageView + ?Sized>(&self, message: &M) -> Option<Number> {
        match self {
            NumberOperand::Literal(number) => Some(*number),
            NumberOperand::Property(property) => number::parse_text(property.text(message)?),
            NumberOperand::Timestamp => Some(Number::Integer(message.timestamp_ms())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BooleanOperand {
    Literal(bool),
    /// `true` or `false` in any case; anything else is UNKNOWN.
    Property(Property),
}

impl BooleanOperand {
    fn boolean<M: MessageView + ?Sized>(&self, message: &M) -> Option<bool> {
        match self {
            BooleanOperand::Literal(value) => Some(*value),
            BooleanOperand::Property(property) => {
                let text = property.text(message)?;
                if text.eq_ignore_ascii_case("true") {
                    Some(true)
                } else if text.eq_ignore_ascii_case("false") {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Comparison::Equal => ordering == Ordering::Equal,
            Comparison::NotEqual => ordering != Ordering::Equal,
            Comparison::Less => ordering == Ordering::Less,
            Comparison::LessOrEqual => ordering != Ordering::Greater,
            Comparison::Greater => ordering == Ordering::Greater,
            Comparison::GreaterOrEqual => ordering != Ordering::Less,
        }
    }
}

/// A compiled condition. `And`/`Or` are flat lists, so the tree is only as
/// deep as the expression's parentheses and `NOT`s (bounded by
/// `MAX_NESTING_DEPTH`), and so is the recursion evaluating or dropping it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    Constant(bool),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    CompareText {
        left: TextOperand,
        comparison: Comparison,
        right: TextOperand,
    },
    CompareNumbers {
        left: NumberOperand,
        comparison: Comparison,
        right: NumberOperand,
    },
    CompareBooleans {
        left: BooleanOperand,
        /// `=` when true, `<>` when false.
        equal: bool,
        right: BooleanOperand,
    },
    BetweenText {
        value: TextOperand,
        low: TextOperand,
        high: TextOperand,
        negated: bool,
    },
    BetweenNumbers {
        value: NumberOperand,
        low: NumberOperand,
        high: NumberOperand,
        negated: bool,
    },
    InText {
        value: TextOperand,
        /// Sorted, without duplicates.
        set: Box<[String]>,
        negated: bool,
    },
    InNumbers {
        value: NumberOperand,
        list: Box<[Number]>,
        negated: bool,
    },
    TagsIn {
        /// Sorted, without duplicates.
        set: Box<[String]>,
        negated: bool,
    },
    Like {
        value: TextOperand,
        pattern: LikePattern,
        negated: bool,
    },
    IsNull {
        property: Property,
        negated: bool,
    },
}

impl Condition {
    pub(crate) fn evaluate<M: MessageView + ?Sized>(&self, message: &M) -> Truth {
        match self {
            Condition::Constant(value) => Truth::from_bool(*value),
            Condition::And(conditions) => {
                let mut result = Truth::True;
                for condition in conditions {
                    match condition.evaluate(message) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                result
            }
            Condition::Or(conditions) => {
                let mut result = Truth::False;
                for condition in conditions {
                    match condition.evaluate(message) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                result
            }
            Condition::Not(condition) => condition.evaluate(message).negate(),
            Condition::CompareText {
                left,
                comparison,
                right,
            } => Truth::from_option((|| {
                Some(comparison.holds(left.text(message)?.cmp(right.text(message)?)))
            })()),
            Condition::CompareNumbers {
                left,
                comparison,
                right,
            } => Truth::from_option((|| {
                Some(comparison.holds(number::compare(
                    left.number(message)?,
                    right.number(message)?,
                )))
            })()),
            Condition::CompareBooleans { left, equal, right } => Truth::from_option((|| {
                Some((left.boolean(message)? == right.boolean(message)?) == *equal)
            })(
            )),
            Condition::BetweenText {
                value,
                low,
                high,
                negated,
            } => {
                let value = value.text(message);
                let at_least_low = Truth::from_option((|| Some(value? >= low.text(message)?))());
                let at_most_high = Truth::from_option((|| Some(value? <= high.text(message)?))());
                at_least_low.and(at_most_high).negate_if(*negated)
            }
            Condition::BetweenNumbers {
                value,
                low,
                high,
                negated,
            } => {
                let value = value.number(message);
                let at_least_low = Truth::from_option((|| {
                    Some(number::compare(value?, low.number(message)?) != Ordering::Less)
                })());
                let at_most_high = Truth::from_option((|| {
                    Some(number::compare(value?, high.number(message)?) != Ordering::Greater)
                })());
                at_least_low.and(at_most_high).negate_if(*negated)
            }
            Condition::InText {
                value,
                set,
                negated,
            } => Truth::from_option(value.text(message).map(|text| sorted_contains(set, text)))
                .negate_if(*negated),
            Condition::InNumbers {
                value,
                list,
                negated,
            } => Truth::from_option(value.number(message).map(|number| {
                list.iter()
                    .any(|listed| number::compare(number, *listed) == Ordering::Equal)
            }))
            .negate_if(*negated),
            Condition::TagsIn { set, negated } => {
                Truth::from_bool(message.tags().iter().any(|tag| sorted_contains(set, tag)))
                    .negate_if(*negated)
            }
            Condition::Like {
                value,
                pattern,
                negated,
            } => Truth::from_option(value.text(message).map(|text| pattern.matches(text)))
                .negate_if(*negated),
            Condition::IsNull { property, negated } => {
                Truth::from_bool(property.text(message).is_none()).negate_if(*negated)
            }
        }
    }
}

#[cfg(test)]
mod tests;
