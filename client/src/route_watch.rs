//! The route watch: one `WatchRoutes` stream per client (producer,
//! consumer or subscriber) to one nameserver, covering the topics in its
//! route cache (at most `route_watch_max_topics`), feeding every message
//! into the cache. Owner changes thus reach the client as the nameserver
//! sees them, instead of after a request fails or times out; the
//! rate-limited `GetRoutes` refresh stays as the fallback.
//!
//! The stream is reopened when the set of cached topics changes (at most
//! once per [`ROUTE_WATCH_REOPEN_MIN_INTERVAL_MS`]; the first message of a
//! watch carries every watched topic's routes) and, after it fails or
//! ends, on the next nameserver after a backoff with jitter
//! ([`WatchRetry`], pure). The task holds only a weak reference to the
//! cluster handle, which aborts it when dropped.

use crate::cluster::{backoff, Cluster};
use crate::route_cache::Source;
use crate::ClientError;
use sluice_proto::v1::WatchRoutesRequest;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::watch;

/// First pause before reopening a failed watch, in milliseconds; doubles
/// per consecutive failure.
pub(crate) const ROUTE_WATCH_BACKOFF_MS: u64 = 200;
/// Longest pause before reopening a failed watch, in milliseconds.
pub(crate) const ROUTE_WATCH_BACKOFF_MAX_MS: u64 = 5_000;
/// Least time between two reopenings for a changed topic set, in
/// milliseconds: a client touching many topics at once reopens once.
pub(crate) const ROUTE_WATCH_REOPEN_MIN_INTERVAL_MS: u64 = 100;

/// Which nameserver the next watch goes to and how long to wait before it.
#[derive(Debug, Clone)]
pub(crate) struct WatchRetry {
    nameserver: usize,
    nameservers: usize,
    failures: u32,
}

impl WatchRetry {
    pub fn new(preferred: usize, nameservers: usize) -> Self {
        let nameservers = nameservers.max(1);
        Self {
            nameserver: preferred % nameservers,
            nameservers,
            failures: 0,
        }
    }

    /// The nameserver to open the next watch on.
    pub fn nameserver(&self) -> usize {
        self.nameserver
    }

    /// A watch delivered its first message: the next failure starts the
    /// backoff over (on the same nameserver).
    pub fn delivered(&mut self) {
        self.failures = 0;
    }

    /// A watch failed or ended: move to the next nameserver and wait the
    /// returned time. `jitter` in [0, 1) spreads clients over the second
    /// half of the backoff, so a nameserver restart is not met by every
    /// client at once.
    pub fn failed(&mut self, jitter: f64) -> Duration {
        let full = backoff(
            self.failures,
            ROUTE_WATCH_BACKOFF_MS,
            ROUTE_WATCH_BACKOFF_MAX_MS,
        );
        self.failures = self.failures.saturating_add(1);
        self.nameserver = (self.nameserver + 1) % self.nameservers;
        full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// How one watch ended.
enum Ended {
    /// The cluster handle is gone.
    Dropped,
    /// The cached topics changed: reopen on the same nameserver.
    TopicsChanged,
    Failed(ClientError),
}

/// Runs the watch until the cluster handle is dropped.
pub(crate) async fn run(cluster: Weak<Cluster>, mut changes: watch::Receiver<u64>) {
    let mut retry = match cluster.upgrade() {
        Some(cluster) => {
            let (preferred, count) = cluster.preferred_nameserver();
            WatchRetry::new(preferred, count)
        }
        None => return,
    };
    loop {
        let topics = match cluster.upgrade() {
            Some(cluster) => cluster.watched_topics(),
            None => return,
        };
        if topics.is_empty() {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        match watch_once(&cluster, &mut changes, &mut retry, topics).await {
            Ended::Dropped => return,
            Ended::TopicsChanged => {
                tokio::time::sleep(Duration::from_millis(ROUTE_WATCH_REOPEN_MIN_INTERVAL_MS)).await;
            }
            Ended::Failed(error) => {
                let nameserver = retry.nameserver();
                let delay = retry.failed(rand::random::<f64>());
                tracing::debug!(nameserver, %error, delay_ms = delay.as_millis() as u64, "route watch failed; reopening on the next nameserver");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Opens one watch on the retry's nameserver and applies its messages
/// until it fails, or the cached topics change.
async fn watch_once(
    cluster: &Weak<Cluster>,
    changes: &mut watch::Receiver<u64>,
    retry: &mut WatchRetry,
    topics: Vec<String>,
) -> Ended {
    let Some(strong) = cluster.upgrade() else {
        return Ended::Dropped;
    };
    let (mut client, address) = match strong.nameserver_at(retry.nameserver()) {
        Ok(client) => client,
        Err(error) => return Ended::Failed(error),
    };
    let request = WatchRoutesRequest {
        topics: topics.clone(),
    };
    let opened = strong
        .unary("WatchRoutes", &address, client.watch_routes(request))
        .await;
    drop(strong);
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(error) => return Ended::Failed(error),
    };
    changes.mark_unchanged();
    loop {
        tokio::select! {
            message = stream.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        return Ended::Failed(ClientError::Transport {
                            address,
                            message: "the nameserver ended the route watch".into(),
                        })
                    }
                    Err(status) => return Ended::Failed(ClientError::from_status(&address, &status)),
                };
                let Some(cluster) = cluster.upgrade() else {
                    return Ended::Dropped;
                };
                cluster.apply_routes(response, Source::Watch);
                retry.delivered();
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ended::Dropped;
                }
                let Some(cluster) = cluster.upgrade() else {
                    return Ended::Dropped;
                };
                if cluster.watched_topics() != topics {
                    return Ended::TopicsChanged;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_rotate_nameservers_and_back_off_with_jitter() {
        let mut retry = WatchRetry::new(1, 3);
        assert_eq!(retry.nameserver(), 1);
        let first = retry.failed(0.0);
        assert_eq!(first, Duration::from_millis(ROUTE_WATCH_BACKOFF_MS / 2));
        assert_eq!(retry.nameserver(), 2);
        let second = retry.failed(0.999);
        assert!(second > first && second <= Duration::from_millis(2 * ROUTE_WATCH_BACKOFF_MS));
        assert_eq!(retry.nameserver(), 0, "wraps around");
        for _ in 0..40 {
            let delay = retry.failed(1.0);
            assert!(delay <= Duration::from_millis(ROUTE_WATCH_BACKOFF_MAX_MS));
        }
        // A delivering watch starts the backoff over.
        retry.delivered();
        assert_eq!(
            retry.failed(1.0),
            Duration::from_millis(ROUTE_WATCH_BACKOFF_MS)
        );
    }

    #[test]
    fn no_nameserver_count_does_not_divide_by_zero() {
        let mut retry = WatchRetry::new(5, 0);
        assert_eq!(retry.nameserver(), 0);
        retry.failed(0.5);
        assert_eq!(retry.nameserver(), 0);
    }
}
