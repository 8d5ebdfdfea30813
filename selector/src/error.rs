//! The selector's errors and their one conversion to [`SluiceError`], so the
//! broker can refuse a subscription with `INVALID_ARGUMENT` and the message
//! the user needs.

use sluice_proto::error::{ErrorCode, SluiceError};

/// Why an expression is not a valid selector, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {position}: {message}")]
pub struct SelectorError {
    /// 0-based column (in characters, not bytes) of the mistake; the length
    /// of the expression in characters when the mistake is a missing end.
    pub position: usize,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl SelectorError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

impl From<SelectorError> for SluiceError {
    fn from(error: SelectorError) -> Self {
        SluiceError::new(
            ErrorCode::InvalidArgument,
            format!("invalid selector: {error}"),
        )
    }
}

/// A selector kind name other than `all`, `tag` or `sql`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown selector kind '{given}'; expected all, tag or sql")]
pub struct ParseSelectorKindError {
    /// The name given.
    pub given: String,
}

impl From<ParseSelectorKindError> for SluiceError {
    fn from(error: ParseSelectorKindError) -> Self {
        SluiceError::new(ErrorCode::InvalidArgument, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_invalid_argument_with_the_column() {
        let error = SluiceError::from(SelectorError::new(3, "expected a tag"));
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(
            error.message,
            "invalid selector: at column 3: expected a tag"
        );
        let error = SluiceError::from(ParseSelectorKindError {
            given: "x".to_string(),
        });
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(
            error.message,
            "unknown selector kind 'x'; expected all, tag or sql"
        );
    }
}
