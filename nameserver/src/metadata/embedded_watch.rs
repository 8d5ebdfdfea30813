//! `watch_prefix` for the embedded store: a task polls the store's
//! revision every [`POLL_INTERVAL_MS`] and, when it moved, compares the
//! prefix's keys and mod revisions with the previous look, sending a `Put`
//! for every new or rewritten key and a `Delete` for every vanished one.
//! The embedded store serves `sluice dev` (one process, few keys), where a
//! poll is cheap; all it needs from the store is a read of the revision and
//! the prefix's (key, mod revision) pairs.

use super::{MetadataError, WatchEvent, WatchEvents, WATCH_CHANNEL_EVENTS};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

/// How often the watch looks at the store's revision.
pub const POLL_INTERVAL_MS: u64 = 20;

/// The keys under a prefix with their mod revisions, at a store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub keys: BTreeMap<String, i64>,
}

/// The events that turn `before` into `after`, in key order.
pub fn changes(before: &Snapshot, after: &Snapshot) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = after
        .keys
        .iter()
        .filter(|(key, revision)| before.keys.get(*key) != Some(*revision))
        .map(|(key, _)| WatchEvent::Put(key.clone()))
        .collect();
    events.extend(
        before
            .keys
            .keys()
            .filter(|key| !after.keys.contains_key(*key))
            .map(|key| WatchEvent::Delete(key.clone())),
    );
    events.sort_by(|left, right| event_key(left).cmp(event_key(right)));
    events
}

fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put(key) | WatchEvent::Delete(key) => key,
    }
}

/// Starts the watch. `read(since)` returns `None` when the store is gone,
/// `Some(None)` when its revision is still `since`, else the prefix now.
pub async fn spawn<R, F>(read: R) -> Result<WatchEvents, MetadataError>
where
    R: Fn(i64) -> F + Send + 'static,
    F: Future<Output = Option<Option<Snapshot>>> + Send,
{
    let mut seen = match read(-1).await {
        Some(Some(snapshot)) => snapshot,
        _ => {
            return Err(MetadataError::Unavailable(
                "the embedded store is closed".to_string(),
            ))
        }
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_CHANNEL_EVENTS);
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = sender.closed() => return,
            }
            let now = match read(seen.revision).await {
                None => return,
                Some(None) => continue,
                Some(Some(now)) => now,
            };
            for event in changes(&seen, &now) {
                if sender.try_send(event).is_err() {
                    return;
                }
            }
            seen = now;
        }
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(revision: i64, keys: &[(&str, i64)]) -> Snapshot {
        Snapshot {
            revision,
            keys: keys
                .iter()
                .map(|(key, at)| (key.to_string(), *at))
                .collect(),
        }
    }

    #[test]
    fn new_rewritten_and_vanished_keys_are_reported_in_key_order() {
        let before = snapshot(5, &[("a", 1), ("b", 2), ("c", 3)]);
        let after = snapshot(9, &[("a", 1), ("b", 7), ("d", 9)]);
        assert_eq!(
            changes(&before, &after),
            vec![
                WatchEvent::Put("b".into()),
                WatchEvent::Delete("c".into()),
                WatchEvent::Put("d".into()),
            ]
        );
        assert!(changes(&after, &after).is_empty());
    }
}
