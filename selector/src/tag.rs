//! Tag expressions: `tagA || tagB`, or `*` / empty for every message. The
//! syntax is documented at the top of the crate.

use crate::{SelectorError, MAX_TAGS};

/// The tags a tag expression lists, sorted and without duplicates so a
/// lookup is a binary search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagSet {
    tags: Box<[String]>,
}

impl TagSet {
    /// True if any of `message_tags` is in the set.
    pub(crate) fn matches_any(&self, message_tags: &[String]) -> bool {
        message_tags.iter().any(|tag| self.contains(tag))
    }

    fn contains(&self, tag: &str) -> bool {
        crate::sorted_contains(&self.tags, tag)
    }
}

fn is_tag_character(character: char) -> bool {
    !character.is_whitespace() && character != '|'
}

/// Parses a tag expression; `None` means every message (`*` or empty).
pub(crate) fn parse(expression: &str) -> Result<Option<TagSet>, SelectorError> {
    let characters: Vec<char> = expression.chars().collect();
    let skip_whitespace = |mut index: usize| {
        while index < characters.len() && characters[index].is_whitespace() {
            index += 1;
        }
        index
    };
    let mut index = skip_whitespace(0);
    if index == characters.len() {
        return Ok(None);
    }
    let mut tags: Vec<String> = Vec::new();
    let mut star_position = None;
    loop {
        let start = index;
        while index < characters.len() && is_tag_character(characters[index]) {
            index += 1;
        }
        if start == index {
            // Only reachable at the start (a '|') or after '||'.
            let found = match characters.get(start) {
                None => "end of input".to_string(),
                Some('|') if characters.get(start + 1) == Some(&'|') => "'||'".to_string(),
                Some(character) => format!("{character:?}"),
            };
            let after = if tags.is_empty() { "" } else { " after '||'" };
            return Err(SelectorError::new(
                start,
                format!("expected a tag{after} but found {found}"),
            ));
        }
        if tags.len() == MAX_TAGS {
            return Err(SelectorError::new(
                start,
                format!("too many tags; the limit is {MAX_TAGS}"),
            ));
        }
        let tag: String = characters[start..index].iter().collect();
        if tag == "*" {
            star_position = Some(start);
        }
        tags.push(tag);
        index = skip_whitespace(index);
        match (characters.get(index), characters.get(index + 1)) {
            (None, _) => break,
            (Some('|'), Some('|')) => index = skip_whitespace(index + 2),
            (Some('|'), _) => {
                return Err(SelectorError::new(
                    index,
                    "a single '|' is not a separator; separate tags with '||'",
                ))
            }
            (Some(_), _) => {
                let next_end = (index..characters.len())
                    .find(|&end| !is_tag_character(characters[end]))
                    .unwrap_or(characters.len());
                let next: String = characters[index..next_end].iter().collect();
                return Err(SelectorError::new(
                    index,
                    format!(
                        "expected '||' or end of input after tag '{}' but found '{next}' (tags cannot contain whitespace)",
                        tags.last().map(String::as_str).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    if let Some(position) = star_position {
        if tags.len() == 1 {
            return Ok(None);
        }
        return Err(SelectorError::new(
            position,
            "'*' selects all tags and must be the whole expression",
        ));
    }
    tags.sort_unstable();
    tags.dedup();
    Ok(Some(TagSet {
        tags: tags.into_boxed_slice(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|tag| tag.to_string()).collect()
    }

    fn set(expression: &str) -> TagSet {
        match parse(expression) {
            Ok(Some(set)) => set,
            other => panic!("{expression:?} should be a tag list, got {other:?}"),
        }
    }

    fn error(expression: &str) -> String {
        match parse(expression) {
            Err(error) => error.to_string(),
            Ok(parsed) => panic!("{expression:?} should fail, parsed {parsed:?}"),
        }
    }

    #[test]
    fn star_and_empty_select_everything() {
        for expression in ["", "*", "   ", " * ", "\t*\n"] {
            assert_eq!(parse(expression), Ok(None), "{expression:?}");
        }
    }

    #[test]
    fn lists_with_and_without_spaces() {
        let parsed = set("tagA || tagB||tagC");
        assert_eq!(&*parsed.tags, &tags(&["tagA", "tagB", "tagC"])[..]);
        let parsed = set("  only  ");
        assert_eq!(&*parsed.tags, &tags(&["only"])[..]);
        let parsed = set("b || a || b");
        assert_eq!(&*parsed.tags, &tags(&["a", "b"])[..]);
        // Any non-whitespace character but '|' belongs to a tag.
        let parsed = set("order.paid || x-y || ü*");
        assert_eq!(&*parsed.tags, &tags(&["order.paid", "x-y", "ü*"])[..]);
    }

    #[test]
    fn matches_if_any_message_tag_is_listed() {
        let parsed = set("a || b || c");
        assert!(parsed.matches_any(&tags(&["x", "b"])));
        assert!(parsed.matches_any(&tags(&["c"])));
        assert!(!parsed.matches_any(&tags(&["x", "y"])));
        assert!(!parsed.matches_any(&[]));
        // Case-sensitive, whole tags only.
        assert!(!parsed.matches_any(&tags(&["A"])));
        assert!(!parsed.matches_any(&tags(&["ab"])));
    }

    #[test]
    fn matches_in_large_sets() {
        let expression: Vec<String> = (0..MAX_TAGS).map(|index| format!("t{index}")).collect();
        let parsed = set(&expression.join("||"));
        for index in 0..MAX_TAGS {
            assert!(parsed.matches_any(&tags(&[&format!("t{index}")])));
        }
        assert!(!parsed.matches_any(&tags(&["t256", "t", ""])));
    }

    #[test]
    fn errors_point_at_the_mistake() {
        assert_eq!(
            error("a || "),
            "at column 5: expected a tag after '||' but found end of input"
        );
        assert_eq!(
            error("a || || b"),
            "at column 5: expected a tag after '||' but found '||'"
        );
        assert_eq!(error("|| a"), "at column 0: expected a tag but found '||'");
        assert_eq!(error("| a"), "at column 0: expected a tag but found '|'");
        assert_eq!(
            error("a | b"),
            "at column 2: a single '|' is not a separator; separate tags with '||'"
        );
        assert_eq!(
            error("a ||| b"),
            "at column 4: expected a tag after '||' but found '|'"
        );
        assert_eq!(
            error("tag a"),
            "at column 4: expected '||' or end of input after tag 'tag' but found 'a' (tags cannot contain whitespace)"
        );
        assert_eq!(
            error("a || *"),
            "at column 5: '*' selects all tags and must be the whole expression"
        );
        assert_eq!(
            error("* || a"),
            "at column 0: '*' selects all tags and must be the whole expression"
        );
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        assert_eq!(
            error("été || "),
            "at column 7: expected a tag after '||' but found end of input"
        );
    }

    #[test]
    fn too_many_tags() {
        let at_limit: Vec<String> = (0..MAX_TAGS).map(|index| format!("t{index}")).collect();
        assert!(parse(&at_limit.join("||")).is_ok());
        let over_limit: Vec<String> = (0..=MAX_TAGS).map(|index| format!("t{index}")).collect();
        let expression = over_limit.join("||");
        let column = expression.find("t256").unwrap();
        assert_eq!(
            error(&expression),
            format!("at column {column}: too many tags; the limit is 256")
        );
    }
}
