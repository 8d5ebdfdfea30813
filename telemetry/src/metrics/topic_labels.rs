//! The cardinality rule for per-topic labels: the first `max_topic_labels`
//! topics a process records get their own `topic` label value; every later
//! one shares [`OTHER_TOPICS_LABEL`]. A label once given is kept until the
//! process restarts (a deleted topic's series stay, frozen), so the series
//! count of one per-topic family is at most `max_topic_labels + 1`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The label value shared by topics beyond the limit; no topic can have
/// this name (names allow only `[A-Za-z0-9._-]`).
pub const OTHER_TOPICS_LABEL: &str = "<other>";

/// Hands out the `topic` label value of each topic, bounded.
#[derive(Debug)]
pub struct TopicLabels {
    max_topics: usize,
    given: Mutex<HashMap<String, Arc<str>>>,
    other: Arc<str>,
}

impl TopicLabels {
    /// At most `max_topics` distinct topic labels (0: every topic is
    /// [`OTHER_TOPICS_LABEL`]).
    pub fn new(max_topics: usize) -> Self {
        Self {
            max_topics,
            given: Mutex::new(HashMap::new()),
            other: Arc::from(OTHER_TOPICS_LABEL),
        }
    }

    /// The label for `topic`. Called when a partition handle or a
    /// subscription is set up, never per request: callers keep what it
    /// returns (or the series looked up with it).
    pub fn label(&self, topic: &str) -> Arc<str> {
        let mut given = self
            .given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(label) = given.get(topic) {
            return label.clone();
        }
        if given.len() >= self.max_topics {
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(topic);
        given.insert(topic.to_string(), label.clone());
        label
    }

    /// Topics with a label of their own.
    pub fn labelled(&self) -> usize {
        self.given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_beyond_the_limit_share_the_other_label() {
        let labels = TopicLabels::new(2);
        assert_eq!(&*labels.label("a"), "a");
        assert_eq!(&*labels.label("b"), "b");
        assert_eq!(&*labels.label("c"), OTHER_TOPICS_LABEL);
        // Labels given stay given; asking again does not use a slot.
        assert_eq!(&*labels.label("a"), "a");
        assert_eq!(&*labels.label("d"), OTHER_TOPICS_LABEL);
        assert_eq!(labels.labelled(), 2);
    }

    #[test]
    fn a_limit_of_zero_labels_every_topic_other() {
        let labels = TopicLabels::new(0);
        assert_eq!(&*labels.label("a"), OTHER_TOPICS_LABEL);
        assert_eq!(labels.labelled(), 0);
    }
}
