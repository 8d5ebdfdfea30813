//! The client's cache of partition routes, fed by `GetRoutes` answers and
//! by the `WatchRoutes` stream; plain data, no IO (time passed in).
//!
//! Two sources can race: a `GetRoutes` answer computed before an ownership
//! change may arrive after the watch already delivered the change, and
//! would put the old owner back (the watch sends only changes, so nothing
//! would correct it). Hence the ordering rule: a watch message always
//! applies (the stream is ordered, and the nameserver sends any later
//! change again), and a `GetRoutes` answer applies to a topic only when
//! nothing updated that topic after the call started.

use crate::cluster::TopicRoutes;
use crate::fast_hash::FastHashMap;
use sluice_proto::v1::TopicRoute;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an update comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A `WatchRoutes` message.
    Watch,
    /// A `GetRoutes` answer to the call stamped `started` by
    /// [`RouteCache::begin_fetch`].
    Fetch { started: u64 },
}

/// What applying one topic's routes did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The topic's routes changed (or appeared, or went away).
    Changed,
    /// Same routes as cached.
    Unchanged,
    /// A `GetRoutes` answer older than the topic's last update: ignored.
    Stale,
}

#[derive(Default)]
pub(crate) struct RouteCache {
    /// Looked up for every produced record, hence the fast hasher.
    topics: FastHashMap<String, Arc<TopicRoutes>>,
    /// When each topic was last asked for with `GetRoutes`.
    last_refresh: HashMap<String, Instant>,
    /// Per topic, the stamp of the last update applied.
    updated: HashMap<String, u64>,
    next_stamp: u64,
}

impl RouteCache {
    pub fn get(&self, topic: &str) -> Option<&Arc<TopicRoutes>> {
        self.topics.get(topic)
    }

    /// The cached topics, sorted (what a route watch covers).
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.keys().cloned().collect();
        names.sort();
        names
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// The topics of `topics` not asked for within `min_interval`.
    pub fn due(&self, topics: &[String], now: Instant, min_interval: Duration) -> Vec<String> {
        topics
            .iter()
            .filter(|topic| {
                self.last_refresh
                    .get(*topic)
                    .is_none_or(|at| now.duration_since(*at) >= min_interval)
            })
            .cloned()
            .collect()
    }

    /// A `GetRoutes` call for `topics` starts: remembers when (for the
    /// rate limit) and returns its stamp for [`Source::Fetch`].
    pub fn begin_fetch(&mut self, topics: &[String], now: Instant) -> u64 {
        for topic in topics {
            self.last_refresh.insert(topic.clone(), now);
        }
        self.stamp()
    }

    /// Applies one topic's routes (an entry with an error removes the
    /// topic).
    pub fn apply(&mut self, route: TopicRoute, source: Source) -> Applied {
        if let Source::Fetch { started } = source {
            if self
                .updated
                .get(&route.topic)
                .is_some_and(|updated| *updated > started)
            {
                return Applied::Stale;
            }
        }
        let stamp = self.stamp();
        self.updated.insert(route.topic.clone(), stamp);
        if route.error != sluice_proto::ErrorCode::None as i32 {
            return match self.topics.remove(&route.topic) {
                Some(_) => Applied::Changed,
                None => Applied::Unchanged,
            };
        }
        let mut partitions = route.partitions;
        partitions.sort_by_key(|partition| partition.partition);
        if self
            .topics
            .get(&route.topic)
            .is_some_and(|cached| cached.partitions == partitions)
        {
            return Applied::Unchanged;
        }
        self.topics
            .insert(route.topic, Arc::new(TopicRoutes { partitions }));
        Applied::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::v1::PartitionRoute;

    fn route(topic: &str, address: &str, epoch: u64) -> TopicRoute {
        TopicRoute {
            topic: topic.to_string(),
            partitions: vec![PartitionRoute {
                partition: 0,
                broker_id: address.to_string(),
                broker_address: address.to_string(),
                epoch,
            }],
            error: 0,
        }
    }

    fn address(cache: &RouteCache, topic: &str) -> Option<String> {
        cache
            .get(topic)
            .map(|routes| routes.partitions[0].broker_address.clone())
    }

    #[test]
    fn a_fetch_answer_older_than_a_watch_update_is_ignored() {
        let mut cache = RouteCache::default();
        let now = Instant::now();
        let started = cache.begin_fetch(&["t".to_string()], now);
        // The owner moves; the watch says so before the fetch answers
        // with what it read before the move.
        assert_eq!(
            cache.apply(route("t", "b", 2), Source::Watch),
            Applied::Changed
        );
        assert_eq!(
            cache.apply(route("t", "a", 1), Source::Fetch { started }),
            Applied::Stale
        );
        assert_eq!(address(&cache, "t").as_deref(), Some("b"));
        // A fetch that starts after the watch update applies.
        let started = cache.begin_fetch(&["t".to_string()], now);
        assert_eq!(
            cache.apply(route("t", "c", 3), Source::Fetch { started }),
            Applied::Changed
        );
        assert_eq!(address(&cache, "t").as_deref(), Some("c"));
    }

    #[test]
    fn of_two_overlapping_fetches_the_one_started_first_cannot_undo_the_other() {
        let mut cache = RouteCache::default();
        let now = Instant::now();
        let first = cache.begin_fetch(&["t".to_string()], now);
        let second = cache.begin_fetch(&["t".to_string()], now);
        assert_eq!(
            cache.apply(route("t", "b", 2), Source::Fetch { started: second }),
            Applied::Changed
        );
        assert_eq!(
            cache.apply(route("t", "a", 1), Source::Fetch { started: first }),
            Applied::Stale
        );
        assert_eq!(address(&cache, "t").as_deref(), Some("b"));
    }

    #[test]
    fn watch_messages_always_apply_and_report_changes_only() {
        let mut cache = RouteCache::default();
        assert_eq!(
            cache.apply(route("t", "a", 1), Source::Watch),
            Applied::Changed
        );
        assert_eq!(
            cache.apply(route("t", "a", 1), Source::Watch),
            Applied::Unchanged
        );
        assert_eq!(
            cache.apply(route("t", "a", 2), Source::Watch),
            Applied::Changed
        );
        let gone = TopicRoute {
            topic: "t".to_string(),
            partitions: Vec::new(),
            error: sluice_proto::ErrorCode::UnknownTopic as i32,
        };
        assert_eq!(cache.apply(gone.clone(), Source::Watch), Applied::Changed);
        assert!(cache.get("t").is_none());
        assert_eq!(cache.apply(gone, Source::Watch), Applied::Unchanged);
    }

    #[test]
    fn partitions_are_indexed_by_number_and_refreshes_rate_limited() {
        let mut cache = RouteCache::default();
        let mut unordered = route("t", "a", 1);
        let mut second = unordered.partitions[0].clone();
        second.partition = 1;
        unordered.partitions.insert(0, second);
        cache.apply(unordered, Source::Watch);
        let routes = cache.get("t").expect("cached");
        assert_eq!(routes.partitions[0].partition, 0);
        assert_eq!(routes.partitions[1].partition, 1);
        assert_eq!(cache.topic_names(), vec!["t".to_string()]);

        let now = Instant::now();
        let topics = ["t".to_string(), "u".to_string()];
        cache.begin_fetch(&topics[..1], now);
        let interval = Duration::from_millis(100);
        assert_eq!(cache.due(&topics, now, interval), vec!["u".to_string()]);
        assert_eq!(cache.due(&topics, now + interval, interval).len(), 2);
    }
}
