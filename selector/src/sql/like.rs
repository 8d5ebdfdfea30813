//! `LIKE` patterns: compiled once from the pattern literal, matched with the
//! greedy two-pointer algorithm that backtracks only to the last `%`, so a
//! match takes at most (pattern length × text length) steps whatever the
//! pattern (no exponential blow-up on `%a%a%a%…b`).

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LikeElement {
    /// This exact character.
    Literal(char),
    /// `_`: any one character.
    AnyCharacter,
    /// `%`: any run of characters, also empty. Never two in a row.
    AnyRun,
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    elements: Box<[LikeElement]>,
}

impl LikePattern {
    /// Compiles `pattern`, where `escape` (if any) makes the next `%`, `_`
    /// or escape character literal. The error says what is wrong; the
    /// caller knows where the pattern is.
    pub(crate) fn compile(pattern: &str, escape: Option<char>) -> Result<LikePattern, String> {
        let mut elements = Vec::with_capacity(pattern.len());
        let mut characters = pattern.chars();
        while let Some(character) = characters.next() {
            let element = if Some(character) == escape {
                match characters.next() {
                    Some(escaped) if escaped == '%' || escaped == '_' || escaped == character => {
                        LikeElement::Literal(escaped)
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
                    '%' => LikeElement::AnyRun,
                    '_' => LikeElement::AnyCharacter,
                    other => LikeElement::Literal(other),
                }
            };
            if element == LikeElement::AnyRun && elements.last() == Some(&LikeElement::AnyRun) {
                continue;
            }
            elements.push(element);
        }
        Ok(LikePattern {
            elements: elements.into_boxed_slice(),
        })
    }

    /// True if the whole of `text` matches the whole pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let elements = &self.elements;
        let mut element_index = 0;
        let mut text_index = 0; // byte offset, always on a character boundary
                                // After the last '%': the element following it, and the text offset
                                // that '%' currently stops at; a mismatch lets it take one more
                                // character.
        let mut last_any_run: Option<(usize, usize)> = None;
        loop {
            let next_character = text[text_index..].chars().next();
            if let Some(element) = elements.get(element_index) {
                match (element, next_character) {
                    (LikeElement::AnyRun, _) => {
                        element_index += 1;
                        last_any_run = Some((element_index, text_index));
                        continue;
                    }
                    (LikeElement::AnyCharacter, Some(character)) => {
                        element_index += 1;
                        text_index += character.len_utf8();
                        continue;
                    }
                    (LikeElement::Literal(expected), Some(character)) if *expected == character => {
                        element_index += 1;
                        text_index += character.len_utf8();
                        continue;
                    }
                    _ => {}
                }
            } else if next_character.is_none() {
                return true;
            }
            // Mismatch: let the last '%' swallow one more character, or fail.
            let Some((resume_element, resume_text)) = last_any_run else {
                return false;
            };
            let Some(swallowed) = text[resume_text..].chars().next() else {
                return false;
            };
            let resume_text = resume_text + swallowed.len_utf8();
            last_any_run = Some((resume_element, resume_text));
            element_index = resume_element;
            text_index = resume_text;
        }
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
    fn hostile_pattern_finishes() {
        // Exponential for a naive backtracker; at most pattern × text steps
        // here.
        let pattern = "%a".repeat(1000) + "b";
        let text = "a".repeat(100_000);
        assert!(!like(&pattern, &text));
        let text = "a".repeat(100_000) + "b";
        assert!(like(&pattern, &text));
    }
}
