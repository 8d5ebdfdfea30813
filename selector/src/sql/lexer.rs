//! Splits an SQL selector into tokens, each with the character column it
//! starts at, and refuses characters the grammar has no use for (with a hint
//! for the operators people bring from other languages).

use crate::SelectorError;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenKind {
    /// A bare identifier or keyword, as written.
    Word(String),
    /// `"name"`, with `""` already turned into `"`.
    QuotedIdentifier(String),
    /// `'text'`, with `''` already turned into `'`.
    String(String),
    /// Digits, fraction and exponent as written, without a sign.
    Number(String),
    LeftParenthesis,
    RightParenthesis,
    Comma,
    Minus,
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    /// 0-based character column of its first character.
    pub(crate) position: usize,
}

fn is_identifier_start(character: char) -> bool {
    character.is_ascii_alphabetic() || character == '_'
}

fn is_identifier_part(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-')
}

/// The tokens of `expression`, ending with one `End` token.
pub(crate) fn tokenize(expression: &str) -> Result<Vec<Token>, SelectorError> {
    let characters: Vec<char> = expression.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        let start = index;
        let peek = characters.get(index + 1).copied();
        let kind = match character {
            _ if character.is_whitespace() => {
                index += 1;
                continue;
            }
            '(' => TokenKind::LeftParenthesis,
            ')' => TokenKind::RightParenthesis,
            ',' => TokenKind::Comma,
            '-' => TokenKind::Minus,
            '=' if peek == Some('=') => {
                return Err(SelectorError::new(
                    start,
                    "'==' is not an operator; use '=' for equal",
                ))
            }
            '=' => TokenKind::Equal,
            '!' if peek == Some('=') => {
                return Err(SelectorError::new(
                    start,
                    "'!=' is not an operator; use '<>' for not equal",
                ))
            }
            '<' if peek == Some('>') => {
                index += 1;
                TokenKind::NotEqual
            }
            '<' if peek == Some('=') => {
                index += 1;
                TokenKind::LessOrEqual
            }
            '<' => TokenKind::Less,
            '>' if peek == Some('=') => {
                index += 1;
                TokenKind::GreaterOrEqual
            }
            '>' => TokenKind::Greater,
            '&' => {
                return Err(SelectorError::new(
                    start,
                    "unexpected character '&'; use AND to combine conditions",
                ))
            }
            '|' => {
                return Err(SelectorError::new(
                    start,
                    "unexpected character '|'; use OR to combine conditions",
                ))
            }
            '\'' => {
                let text = read_quoted(&characters, &mut index, '\'').ok_or_else(|| {
                    SelectorError::new(start, "this string has no closing quote (')")
                })?;
                tokens.push(Token {
                    kind: TokenKind::String(text),
                    position: start,
                });
                continue;
            }
            '"' => {
                let name = read_quoted(&characters, &mut index, '"').ok_or_else(|| {
                    SelectorError::new(start, "this quoted identifier has no closing '\"'")
                })?;
                if name.is_empty() {
                    return Err(SelectorError::new(
                        start,
                        "a quoted identifier cannot be empty",
                    ));
                }
                tokens.push(Token {
                    kind: TokenKind::QuotedIdentifier(name),
                    position: start,
                });
                continue;
            }
            _ if character.is_ascii_digit()
                || (character == '.' && peek.is_some_and(|next| next.is_ascii_digit())) =>
            {
                let text = read_number(&characters, &mut index)?;
                tokens.push(Token {
                    kind: TokenKind::Number(text),
                    position: start,
                });
                continue;
            }
            _ if is_identifier_start(character) => {
                while index < characters.len() && is_identifier_part(characters[index]) {
                    index += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Word(characters[start..index].iter().collect()),
                    position: start,
                });
                continue;
            }
            _ => {
                return Err(SelectorError::new(
                    start,
                    format!("unexpected character {character:?}"),
                ))
            }
        };
        index += 1;
        tokens.push(Token {
            kind,
            position: start,
        });
    }
    tokens.push(Token {
        kind: TokenKind::End,
        position: characters.len(),
    });
    Ok(tokens)
}

/// Reads from the opening `quote` at `index` to its closing one, a doubled
/// quote standing for one; leaves `index` after the closing quote. `None`
/// if it is never closed.
fn read_quoted(characters: &[char], index: &mut usize, quote: char) -> Option<String> {
    let mut text = String::new();
    let mut at = *index + 1;
    loop {
        match characters.get(at) {
            None => return None,
            Some(&character) if character == quote => {
                if characters.get(at + 1) == Some(&quote) {
                    text.push(quote);
                    at += 2;
                } else {
                    *index = at + 1;
                    return Some(text);
                }
            }
            Some(&character) => {
                text.push(character);
                at += 1;
            }
        }
    }
}

/// Reads `digits [. digits] [e [+|-] digits]` (or `. digits ...`) starting at
/// `index`; a letter, digit-less exponent or second `.` right after it is an
/// error rather than the start of another token.
fn read_number(characters: &[char], index: &mut usize) -> Result<String, SelectorError> {
    let start = *index;
    let mut at = *index;
    let skip_digits = |at: &mut usize| {
        while characters.get(*at).is_some_and(char::is_ascii_digit) {
            *at += 1;
        }
    };
    skip_digits(&mut at);
    if characters.get(at) == Some(&'.') {
        at += 1;
        skip_digits(&mut at);
    }
    if matches!(characters.get(at), Some('e' | 'E')) {
        let exponent_at = at;
        at += 1;
        if matches!(characters.get(at), Some('+' | '-')) {
            at += 1;
        }
        let digits_start = at;
        skip_digits(&mut at);
        if at == digits_start {
            return Err(SelectorError::new(
                exponent_at,
                "the exponent of this number has no digits",
            ));
        }
    }
    if let Some(&next) = characters.get(at) {
        if is_identifier_part(next) && next != '-' {
            return Err(SelectorError::new(
                at,
                format!(
                    "unexpected character {next:?} right after the number {}",
                    characters[start..at].iter().collect::<String>()
                ),
            ));
        }
    }
    *index = at;
    Ok(characters[start..at].iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(expression: &str) -> Vec<TokenKind> {
        tokenize(expression)
            .expect("test expressions are valid")
            .into_iter()
            .map(|token| token.kind)
            .collect()
    }

    fn error(expression: &str) -> String {
        match tokenize(expression) {
            Err(error) => error.to_string(),
            Ok(tokens) => panic!("{expression:?} should fail, got {tokens:?}"),
        }
    }

    fn word(text: &str) -> TokenKind {
        TokenKind::Word(text.to_string())
    }

    #[test]
    fn operators_and_punctuation() {
        use TokenKind::*;
        assert_eq!(
            kinds("= <> < <= > >= ( ) , -"),
            vec![
                Equal,
                NotEqual,
                Less,
                LessOrEqual,
                Greater,
                GreaterOrEqual,
                LeftParenthesis,
                RightParenthesis,
                Comma,
                Minus,
                End
            ]
        );
        assert_eq!(
            kinds("a>=-1"),
            vec![word("a"), GreaterOrEqual, Minus, Number("1".into()), End]
        );
        assert_eq!(
            kinds("a<>'x'"),
            vec![word("a"), NotEqual, String("x".into()), End]
        );
    }

    #[test]
    fn identifiers_take_dots_and_dashes() {
        assert_eq!(
            kinds("x-region.name_2 _a"),
            vec![word("x-region.name_2"), word("_a"), TokenKind::End]
        );
        // A dash right after an identifier belongs to it.
        assert_eq!(kinds("a-1"), vec![word("a-1"), TokenKind::End]);
    }

    #[test]
    fn strings_and_quoted_identifiers_unescape_doubled_quotes() {
        assert_eq!(
            kinds("'it''s' '' \"x\"\"y\" \"a b\""),
            vec![
                TokenKind::String("it's".into()),
                TokenKind::String(String::new()),
                TokenKind::QuotedIdentifier("x\"y".into()),
                TokenKind::QuotedIdentifier("a b".into()),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn numbers() {
        use TokenKind::Number;
        assert_eq!(
            kinds("1 1.5 1. .5 1e3 1E+3 2e-1 007"),
            vec![
                Number("1".into()),
                Number("1.5".into()),
                Number("1.".into()),
                Number(".5".into()),
                Number("1e3".into()),
                Number("1E+3".into()),
                Number("2e-1".into()),
                Number("007".into()),
                TokenKind::End
            ]
        );
    }

    #[test]
    fn positions_are_character_columns() {
        let tokens = tokenize("'é' = x").expect("valid");
        let positions: Vec<usize> = tokens.iter().map(|token| token.position).collect();
        assert_eq!(positions, vec![0, 4, 6, 7]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            error("a = 'abc"),
            "at column 4: this string has no closing quote (')"
        );
        assert_eq!(
            error("\"abc = 1"),
            "at column 0: this quoted identifier has no closing '\"'"
        );
        assert_eq!(
            error("\"\" = 1"),
            "at column 0: a quoted identifier cannot be empty"
        );
        assert_eq!(error("a = 1 # x"), "at column 6: unexpected character '#'");
        assert_eq!(error("a = ü"), "at column 4: unexpected character 'ü'");
        assert_eq!(
            error("a = \u{1}"),
            "at column 4: unexpected character '\\u{1}'"
        );
        assert_eq!(
            error("a != 1"),
            "at column 2: '!=' is not an operator; use '<>' for not equal"
        );
        assert_eq!(error("a ! 1"), "at column 2: unexpected character '!'");
        assert_eq!(
            error("a == 1"),
            "at column 2: '==' is not an operator; use '=' for equal"
        );
        assert_eq!(
            error("a = 1 && b = 2"),
            "at column 6: unexpected character '&'; use AND to combine conditions"
        );
        assert_eq!(
            error("a = 1 || b = 2"),
            "at column 6: unexpected character '|'; use OR to combine conditions"
        );
        assert_eq!(
            error("a = 12abc"),
            "at column 6: unexpected character 'a' right after the number 12"
        );
        assert_eq!(
            error("a = 1.2.3"),
            "at column 7: unexpected character '.' right after the number 1.2"
        );
        assert_eq!(
            error("a = 1e"),
            "at column 5: the exponent of this number has no digits"
        );
        assert_eq!(
            error("a = 1e+x"),
            "at column 5: the exponent of this number has no digits"
        );
        assert_eq!(error("a = ."), "at column 4: unexpected character '.'");
    }
}
