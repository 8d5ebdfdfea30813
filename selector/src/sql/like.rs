//! `LIKE` patterns, compiled once from the pattern literal into the pieces
//! between its `%`s. A match checks the first piece at the start of the
//! text, the last at its end, and finds the others left to right in
//! between, each at its leftmost place (which is always safe: a later place
//! leaves less room for the rest). Pieces without `_` are found with the
//! standard library's linear substring search, so the usual `%word%`
//! patterns take time linear in the text; a piece with `_` is tried at each
//! place, at most (piece length × text length) steps. Never exponential,
//! whatever the pattern (`%a%a%a%…b` included).

/// One element of a piece of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceElement {
    /// This exact character.
    Literal(char),
    /// `_`: any one character.
    AnyCharacter,
}

/// The part of a pattern between two `%` (or an end and a `%`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    elements: Box<[PieceElement]>,
    /// The piece as a string when it has no `_`, for substring search.
    literal: Option<String>,
}

impl Piece {
    fn new(elements: Vec<PieceElement>) -> Piece {
        let literal = elements
            .iter()
            .map(|element| match element {
                PieceElement::Literal(character) => Some(*character),
                PieceElement::AnyCharacter => None,
            })
            .collect();
        Piece {
            elements: elements.into_boxed_slice(),
            literal,
        }
    }

    /// Where the piece ends if it matches `text` starting at byte `start`.
    fn match_at(&self, text: &str, start: usize) -> Option<usize> {
        let mut characters = text.get(start..)?.chars();
        let mut end = start;
        for element in self.elements.iter() {
            let character = characters.next()?;
            if let PieceElement::Literal(expected) = element {
                if *expected != character {
                    return None;
                }
            }
            end += character.len_utf8();
        }
        Some(end)
    }

    /// Where the leftmost match at or after byte `from` in `text` ends.
    fn find_from(&self, text: &str, from: usize) -> Option<usize> {
        let rest = text.get(from..)?;
        if let Some(literal) = &self.literal {
            return rest
                .find(literal.as_str())
                .map(|offset| from + offset + literal.len());
        }
        rest.char_indices()
            .find_map(|(offset, _)| self.match_at(text, from + offset))
    }
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    /// The pieces between `%`s: one if there is no `%`, else one more than
    /// there are `%`s (the first and last may be empty).
    pieces: Box<[Piece]>,
}

impl LikePattern {
    /// Compiles `pattern`, where `escape` (if any) makes the next `%`, `_`
    /// or escape character literal. The error says what is wrong; the
    /// caller knows where the pattern is.
    pub(crate) fn compile(pattern: &str, escape: Option<char>) -> Result<LikePattern, String> {
        let mut pieces = Vec::new();
        let mut elements = Vec::new();
        let mut previous_was_any_run = false;
        let mut characters = pattern.chars();
        while let Some(character) = characters.next() {
            let element = if Some(character) == escape {
                match characters.next() {
                    Some(escaped) if escaped == '%' || escaped == '_' || escaped == character => {
                        PieceElement::Literal(escaped)
                    }
                    Some(other) => {
                        return Err(format!(
                            "in the LIKE pattern, the escape character {character:?} must be followed by '%', '_' or itself, not {other:?}"
                        ))
                    }
                    None => {
                        return Err(format!(
                            "the LIKE pattern ends with the escape character {character:?}, which must be followed by '%', '_' or itself"
                        ))
                    }
                }
            } else {
                match character {
                    '%' => {
                        // '%%' is '%': no empty piece between them.
                        if !previous_was_any_run {
                            pieces.push(Piece::new(std::mem::take(&mut elements)));
                        }
                        previous_was_any_run = true;
                        continue;
                    }
                    '_' => PieceElement::AnyCharacter,
                    other => PieceElement::Literal(other),
                }
            };
            previous_was_any_run = false;
            elements.push(element);
        }
        pieces.push(Piece::new(elements));
        Ok(LikePattern {
            pieces: pieces.into_boxed_slice(),
        })
    }

    /// True if the whole of `text` matches the whole pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let (first, last, middle) = match &*self.pieces {
            [only] => return only.match_at(text, 0) == Some(text.len()),
            [first, middle @ .., last] => (first, last, middle),
            [] => return text.is_empty(),
        };
        let Some(mut position) = first.match_at(text, 0) else {
            return false;
        };
        // The last piece must sit exactly at the end, after the first.
        let suffix_start = match last.elements.len() {
            0 => Some(text.len()),
            length => text
                .char_indices()
                .rev()
                .nth(length - 1)
                .map(|(start, _)| start),
        };
        let Some(suffix_start) = suffix_start else {
            return false;
        };
        if suffix_start < position || last.match_at(text, suffix_start) != Some(text.len()) {
            return false;
        }
        let between = &text[..suffix_start];
        for piece in middle {
            match piece.find_from(between, position) {
                Some(end) => position = end,
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(pattern: &str, text: &str) -> bool {
        LikePattern::compile(pattern, None)
            .expect("test patterns without escape are valid")
            .matches(text)
    }

    fn like_escaped(pattern: &str, escape: char, text: &str) -> bool {
        LikePattern::compile(pattern, Some(escape))
            .expect("test patterns are valid")
            .matches(text)
    }

    /// The obvious exponential matcher, as the reference.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('%', rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some(('_', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((character, rest)) => {
                text.first() == Some(character) && reference(rest, &text[1..])
            }
        }
    }

    #[test]
    fn wildcards() {
        assert!(like("", ""));
        assert!(!like("", "a"));
        assert!(like("%", ""));
        assert!(like("%", "anything"));
        assert!(like("%%", "anything"));
        assert!(like("_", "a"));
        assert!(!like("_", ""));
        assert!(!like("_", "ab"));
        assert!(like("eu%", "eu-west"));
        assert!(like("eu%", "eu"));
        assert!(!like("eu%", "us-east"));
        assert!(like("%west", "eu-west"));
        assert!(!like("%west", "eu-west-1"));
        assert!(like("%-%", "eu-west"));
        assert!(!like("%-%", "euwest"));
        assert!(like("e_-w%", "eu-west"));
        assert!(like("a%b%c", "aXXbYYc"));
        assert!(like("a%b%c", "abc"));
        assert!(!like("a%b%c", "acb"));
        assert!(like("%aab", "aaab"));
        assert!(like("%ab%ab", "abxabab"));
        assert!(like("eu", "eu"));
        assert!(!like("eu", "EU"));
        assert!(!like("eu", "eu "));
    }

    #[test]
    fn underscore_is_one_character_not_one_byte() {
        assert!(like("_", "é"));
        assert!(like("caf_", "café"));
        assert!(like("%é", "café"));
        assert!(!like("caf__", "café"));
        assert!(like("_🙂_", "a🙂b"));
    }

    #[test]
    fn escapes() {
        assert!(like_escaped("100!%", '!', "100%"));
        assert!(!like_escaped("100!%", '!', "1000"));
        assert!(like_escaped("a!_b", '!', "a_b"));
        assert!(!like_escaped("a!_b", '!', "axb"));
        assert!(like_escaped("a!!b", '!', "a!b"));
        assert!(like_escaped("%!%%", '!', "50% off"));
        assert!(!like_escaped("%!%%", '!', "50 off"));
        assert!(like_escaped("a\\%", '\\', "a%"));
        // Without ESCAPE the character is ordinary.
        assert!(like("a!b", "a!b"));
    }

    #[test]
    fn escape_errors() {
        assert_eq!(
            LikePattern::compile("a!b", Some('!')),
            Err("in the LIKE pattern, the escape character '!' must be followed by '%', '_' or itself, not 'b'".to_string())
        );
        assert_eq!(
            LikePattern::compile("a!", Some('!')),
            Err("the LIKE pattern ends with the escape character '!', which must be followed by '%', '_' or itself".to_string())
        );
    }

    #[test]
    fn agrees_with_the_reference_on_all_small_cases() {
        let alphabet = ['a', 'b', '%', '_'];
        let mut patterns = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for character in alphabet {
                    next.push(format!("{prefix}{character}"));
                }
            }
            patterns.extend(next.iter().cloned());
            frontier = next;
        }
        let mut texts = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for character in ['a', 'b'] {
                    next.push(format!("{prefix}{character}"));
                }
            }
            texts.extend(next.iter().cloned());
            frontier = next;
        }
        for pattern in &patterns {
            let pattern_characters: Vec<char> = pattern.chars().collect();
            for text in &texts {
                let text_characters: Vec<char> = text.chars().collect();
                assert_eq!(
                    like(pattern, text),
                    reference(&pattern_characters, &text_characters),
                    "{pattern:?} LIKE {text:?}"
                );
            }
        }
    }

    #[test]
    fn agrees_with_the_reference_on_random_cases() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut random = StdRng::seed_from_u64(1);
        let pattern_alphabet = ['a', 'b', 'é', '%', '_'];
        let text_alphabet = ['a', 'b', 'é'];
        for _ in 0..20_000 {
            let pattern: Vec<char> = (0..random.random_range(0..10))
                .map(|_| pattern_alphabet[random.random_range(0..pattern_alphabet.len())])
                .collect();
            let text: Vec<char> = (0..random.random_range(0..12))
                .map(|_| text_alphabet[random.random_range(0..text_alphabet.len())])
                .collect();
            let pattern_string: String = pattern.iter().collect();
            let text_string: String = text.iter().collect();
            assert_eq!(
                like(&pattern_string, &text_string),
                reference(&pattern, &text),
                "{pattern_string:?} LIKE {text_string:?}"
            );
        }
    }

    #[test]
    fn hostile_patterns_finish() {
        // Exponential for a naive backtracker.
        let pattern = "%a".repeat(1000) + "b";
        let text = "a".repeat(100_000);
        assert!(!like(&pattern, &text));
        let text = "a".repeat(100_000) + "b";
        assert!(like(&pattern, &text));
        // Quadratic for a two-pointer matcher; linear substring search here.
        let pattern = format!("%{}b%", "a".repeat(2000));
        let text = "a".repeat(200_000);
        assert!(!like(&pattern, &text));
        let text = "a".repeat(200_000) + "b";
        assert!(like(&pattern, &text));
    }

    #[test]
    fn pieces_do_not_overlap() {
        assert!(!like("ab%ba", "aba"));
        assert!(like("ab%ba", "abba"));
        assert!(!like("a%a", "a"));
        assert!(like("a%a", "aa"));
        assert!(!like("%ab%ab%", "aba"));
        assert!(like("%ab%ab%", "xabyabz"));
        assert!(!like("_%_", "é"));
        assert!(like("_%_", "éé"));
    }
}
