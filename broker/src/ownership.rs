//! Registration with the nameservers, the heartbeat loop, and turning each
//! heartbeat's assignment list into started and stopped partitions.
//! Serves only within the session fence of the last successful heartbeat
//! (`session_fence`, ADR 0014): past it, stops every partition.

use crate::clients::nameserver_call;
use crate::error::BrokerError;
use crate::partition::Partition;
use crate::session_fence::SessionTerms;
use crate::tail_cache::PartitionKey;
use crate::Shared;
use sluice_proto::v1::{
    DeregisterNodeRequest, GetProducerIdKeyRequest, HeartbeatRequest, NodeKind, NodeLoad,
    OfflinePartition, PartitionAssignment, RegisterNodeRequest, TopicConfig,
};
use sluice_proto::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Smallest heartbeat interval honoured, whatever the nameserver says.
const MIN_HEARTBEAT_INTERVAL_MS: u64 = 50;
const INITIAL_REGISTER_BACKOFF_MS: u64 = 50;

struct Session {
    session_id: u64,
    heartbeat_interval: Duration,
    terms: SessionTerms,
    /// When the registration that created the session was sent.
    sent_at: Instant,
}

/// Turns the broker's running count of produce bytes into a rate between
/// two heartbeats.
struct RateMeter {
    since: Instant,
    bytes_then: u64,
}

impl RateMeter {
    fn new(shared: &Shared) -> Self {
        Self {
            since: Instant::now(),
            bytes_then: shared
                .produced_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn bytes_per_sec(&mut self, shared: &Shared) -> u64 {
        let now = Instant::now();
        let bytes = shared
            .produced_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let elapsed_ms = now.duration_since(self.since).as_millis().max(1) as u64;
        let rate = bytes.saturating_sub(self.bytes_then).saturating_mul(1000) / elapsed_ms;
        self.since = now;
        self.bytes_then = bytes;
        rate
    }
}

/// The owned partitions that are offline, with why.
fn offline_partitions(shared: &Shared) -> Vec<OfflinePartition> {
    let mut offline: Vec<OfflinePartition> = shared
        .partitions()
        .iter()
        .filter_map(|partition| {
            partition.status().offline.map(|reason| OfflinePartition {
                topic: partition.key.topic.clone(),
                partition: partition.key.partition,
                reason,
            })
        })
        .collect();
    offline.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    offline
}

fn load(shared: &Shared, meter: &mut RateMeter) -> NodeLoad {
    let owned: Vec<PartitionKey> = shared
        .partitions()
        .iter()
        .map(|partition| partition.key.clone())
        .collect();
    NodeLoad {
        offline_partitions: offline_partitions(shared),
        damaged_partitions: shared.closed_damage.of(|key| owned.contains(key)),
        partitions: u32::try_from(shared.partition_count()).unwrap_or(u32::MAX),
        bytes_in_per_sec: meter.bytes_per_sec(shared),
        healthy: true,
        repairs_in_progress: shared
            .repair
            .in_progress
            .load(std::sync::atomic::Ordering::Relaxed),
        repaired_segments: shared
            .repair
            .repaired_segments
            .load(std::sync::atomic::Ordering::Relaxed),
        repair_bytes_copied: shared
            .repair
            .bytes_copied
            .load(std::sync::atomic::Ordering::Relaxed),
        ..Default::default()
    }
}

async fn register(shared: &Shared, shutdown: &mut watch::Receiver<bool>) -> Option<Session> {
    let mut backoff_ms = INITIAL_REGISTER_BACKOFF_MS;
    loop {
        let sent_at = Instant::now();
        let attempt = match load_producer_id_key(shared).await {
            Ok(()) => nameserver_call!(
                &shared.clients,
                register_node,
                RegisterNodeRequest {
                    kind: NodeKind::Broker as i32,
                    node_id: shared.config.cluster.node_id.clone(),
                    address: shared.advertised_address.clone(),
                    load: Some(load(shared, &mut RateMeter::new(shared))),
                    rack: shared.config.cluster.rack.clone(),
                }
            ),
            Err(error) => Err(error),
        };
        match attempt {
            Ok(answer) => {
                tracing::info!(
                    session = answer.session_id,
                    lease_ttl_ms = answer.lease_ttl_ms,
                    session_timeout_ms = answer.session_timeout_ms,
                    "registered with the nameserver"
                );
                return Some(Session {
                    session_id: answer.session_id,
                    heartbeat_interval: Duration::from_millis(
                        answer.heartbeat_interval_ms.max(MIN_HEARTBEAT_INTERVAL_MS),
                    ),
                    terms: SessionTerms::new(
                        answer.session_timeout_ms,
                        answer.lease_ttl_ms,
                        shared.config.cluster.session_fence_margin_percent,
                    ),
                    sent_at,
                });
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff_ms, "registration failed; trying the next nameserver");
                shared.clients.next_nameserver();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
            _ = crate::wait_until_set(shutdown) => return None,
        }
        backoff_ms = (backoff_ms * 2).min(shared.config.cluster.register_backoff_max_ms.max(1));
    }
}

/// Fetches the producer-id key (ADR 0015) unless already known: no
/// partition is served before it, so every produce can be checked.
async fn load_producer_id_key(shared: &Shared) -> Result<(), BrokerError> {
    if shared.producer_ids.is_loaded() {
        return Ok(());
    }
    let answer = nameserver_call!(
        &shared.clients,
        get_producer_id_key,
        GetProducerIdKeyRequest {}
    )?;
    shared.producer_ids.load(&answer.key)
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the heartbeat loop does next with a session.
enum Next {
    Register,
    Shutdown,
}

/// Registers, heartbeats and applies assignments until shutdown; then
/// stops every partition and deregisters.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut last_session = None;
    while let Some(session) = register(&shared, &mut shutdown).await {
        last_session = Some(session.session_id);
        if let Next::Shutdown = heartbeat_session(&shared, &session, &mut shutdown).await {
            break;
        }
    }
    shared.serving.stop();
    stop_all(&shared);
    if let Some(session_id) = last_session {
        let result: Result<_, BrokerError> = nameserver_call!(
            &shared.clients,
            deregister_node,
            DeregisterNodeRequest {
                kind: NodeKind::Broker as i32,
                node_id: shared.config.cluster.node_id.clone(),
                session_id,
            }
        );
        if let Err(error) = result {
            tracing::warn!(%error, "deregistration failed; the lease will expire");
        }
    }
}

/// Heartbeats one session until it ends or shutdown. Serves only until
/// the fence of the last successful heartbeat (ADR 0014): past it, stops
/// every partition and registers anew, as when the session expired.
async fn heartbeat_session(
    shared: &Arc<Shared>,
    session: &Session,
    shutdown: &mut watch::Receiver<bool>,
) -> Next {
    let terms = session.terms;
    let mut serving_until = Instant::from_std(terms.serving_until(session.sent_at.into_std()));
    shared.serving.serve_until(serving_until.into_std());
    let mut last_success = session.sent_at;
    let mut meter = RateMeter::new(shared);
    // Assignment changes pushed by the nameserver wake the loop for an
    // early heartbeat (ADR 0014); the follower ends with the session.
    let assignments_changed = Arc::new(Notify::new());
    let _follower = AbortOnDrop(tokio::spawn(crate::assignment_watch::follow(
        shared.clone(),
        session.session_id,
        assignments_changed.clone(),
    )));
    loop {
        // The lease was renewed no earlier than the request left.
        let sent_at = Instant::now();
        let deadline = terms.attempt_deadline(sent_at.into_std(), Some(serving_until.into_std()));
        let deadline = Instant::from_std(deadline);
        let answer = heartbeat_once(shared, session, &mut meter, deadline).await;
        match answer {
            Ok(answer) => {
                last_success = sent_at;
                let until = terms.serving_until(sent_at.into_std());
                shared.serving.serve_until(until);
                serving_until = Instant::from_std(until);
                shared.live_stores.store(
                    usize::try_from(answer.live_stores).unwrap_or(usize::MAX),
                    std::sync::atomic::Ordering::Relaxed,
                );
                reconcile(shared, &answer.assignments);
            }
            Err(error) if error.remote_code() == Some(ErrorCode::SessionExpired) => {
                tracing::warn!("session expired; dropping all partitions and registering again");
                fence(shared);
                return Next::Register;
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed"),
        }
        if Instant::now() >= serving_until {
            // The nameserver may end the session any moment: stop, and
            // take a new session (new epochs) rather than restart the
            // partitions under this one.
            tracing::error!(
                since_last_success_ms = last_success.elapsed().as_millis() as u64,
                "no heartbeat succeeded in time; self-fencing"
            );
            fence(shared);
            return Next::Register;
        }
        let next = (sent_at + session.heartbeat_interval).min(serving_until);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = assignments_changed.notified() => {}
            _ = crate::wait_until_set(shutdown) => return Next::Shutdown,
        }
    }
}

/// One heartbeat, given up at `deadline` (then the next nameserver is tried).
async fn heartbeat_once(
    shared: &Shared,
    session: &Session,
    meter: &mut RateMeter,
    deadline: Instant,
) -> Result<sluice_proto::v1::HeartbeatResponse, BrokerError> {
    let heartbeat = async {
        nameserver_call!(
            &shared.clients,
            heartbeat,
            HeartbeatRequest {
                kind: NodeKind::Broker as i32,
                node_id: shared.config.cluster.node_id.clone(),
                session_id: session.session_id,
                load: Some(load(shared, meter)),
            }
        )
    };
    match tokio::time::timeout_at(deadline, heartbeat).await {
        Ok(answer) => answer,
        Err(_) => {
            shared.clients.next_nameserver();
            Err(BrokerError::Timeout("heartbeat".into()))
        }
    }
}

/// Stops serving: the lease check first (every request refuses at once),
/// then every partition.
fn fence(shared: &Shared) {
    shared.serving.stop();
    if shared.partition_count() > 0 {
        stop_all(shared);
    }
}

/// What should change given the assignment list: partitions to stop and
/// (key, epoch, config) to start.
pub fn diff(
    served: &HashMap<PartitionKey, u64>,
    assignments: &[PartitionAssignment],
) -> (Vec<PartitionKey>, Vec<(PartitionKey, u64, TopicConfig)>) {
    let wanted: HashMap<PartitionKey, (u64, TopicConfig)> = assignments
        .iter()
        .map(|assignment| {
            (
                PartitionKey::new(&assignment.topic, assignment.partition),
                (assignment.epoch, assignment.config.unwrap_or_default()),
            )
        })
        .collect();
    let mut stop: Vec<PartitionKey> = served
        .iter()
        .filter(|(key, epoch)| {
            wanted
                .get(*key)
                .is_none_or(|(wanted_epoch, _)| wanted_epoch != *epoch)
        })
        .map(|(key, _)| key.clone())
        .collect();
    stop.sort();
    let mut start: Vec<(PartitionKey, u64, TopicConfig)> = wanted
        .into_iter()
        .filter(|(key, (epoch, _))| served.get(key) != Some(epoch))
        .map(|(key, (epoch, config))| (key, epoch, config))
        .collect();
    start.sort_by(|left, right| left.0.cmp(&right.0));
    (stop, start)
}

fn reconcile(shared: &Arc<Shared>, assignments: &[PartitionAssignment]) {
    let served: HashMap<PartitionKey, u64> = shared
        .partitions()
        .into_iter()
        .map(|partition| (partition.key.clone(), partition.epoch))
        .collect();
    let (stop, start) = diff(&served, assignments);
    for key in stop {
        stop_partition(shared, &key);
    }
    // Partitions kept under the same epoch take an altered topic's config.
    for assignment in assignments {
        let key = PartitionKey::new(&assignment.topic, assignment.partition);
        if let (Some(partition), Some(config)) = (shared.partition(&key), assignment.config) {
            if partition.epoch == assignment.epoch && partition.set_config(config) {
                tracing::info!(partition = %key, "topic config altered; applied");
            }
        }
    }
    for (key, epoch, config) in start {
        tracing::info!(partition = %key, epoch, "assigned; taking over");
        shared.tail_cache.add_partition(key.clone());
        let partition = Partition::spawn(shared.clone(), key.clone(), epoch, config);
        shared.insert_partition(key, partition);
    }
}

fn stop_partition(shared: &Shared, key: &PartitionKey) {
    if let Some(partition) = shared.remove_partition(key) {
        tracing::info!(partition = %key, epoch = partition.epoch, "no longer assigned; stopping");
        partition.stop();
        shared.tail_cache.remove_partition(key);
        if partition.is_offsets_topic() {
            shared.coordinator.unload_partition(key.partition);
        }
        if partition.is_transaction_log() {
            shared.transactions.unload_partition(key.partition);
        }
    }
}

pub fn stop_all(shared: &Shared) {
    for partition in shared.partitions() {
        stop_partition(shared, &partition.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topic: &str, partition: u32, epoch: u64) -> PartitionAssignment {
        PartitionAssignment {
            topic: topic.into(),
            partition,
            epoch,
            config: None,
        }
    }

    #[test]
    fn new_epoch_restarts_and_missing_stops() {
        let mut served = HashMap::new();
        served.insert(PartitionKey::new("a", 0), 1);
        served.insert(PartitionKey::new("a", 1), 1);
        served.insert(PartitionKey::new("b", 0), 3);
        let (stop, start) = diff(
            &served,
            &[
                assignment("a", 0, 1),
                assignment("a", 1, 2),
                assignment("c", 0, 1),
            ],
        );
        assert_eq!(
            stop,
            vec![PartitionKey::new("a", 1), PartitionKey::new("b", 0)]
        );
        let started: Vec<(PartitionKey, u64)> = start
            .into_iter()
            .map(|(key, epoch, _)| (key, epoch))
            .collect();
        assert_eq!(
            started,
            vec![
                (PartitionKey::new("a", 1), 2),
                (PartitionKey::new("c", 0), 1)
            ]
        );
    }
}
