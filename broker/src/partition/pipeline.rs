//! The quorum append pipeline over one open segment, as a pure state
//! machine: events in (an append accepted, a replica's acknowledgement or
//! failure, time passing, the next segment prepared), effects out (send to
//! replicas, complete, fail, prepare the next segment) and an end (roll or
//! failure). No IO; time is passed in. `serve.rs` carries out the effects.
//!
//! Rules:
//! - Each accepted append takes the next offset (contiguous from the
//!   segment's base) and the next sequence (1, 2, ...) and is sent to every
//!   healthy replica: the write quorum is the ensemble.
//! - Appends complete strictly in order, once `ack_quorum` replicas
//!   acknowledged them. A replica that acknowledged and failed later still
//!   counts: the entry is durable there.
//! - Stores answer in order, so one number per replica says how far it
//!   acknowledged. An acknowledgement not above the replica's last one, or
//!   above the last sequence sent, is a protocol error that drops the
//!   replica. Acknowledgements of a dropped replica are ignored.
//! - A replica is dropped when its stream errors or refuses an append, when
//!   it cannot take a send (it fell the channel's capacity behind, or its
//!   stream closed), or when it leaves an append unacknowledged for
//!   `replica_ack_timeout`.
//! - After a drop, while `ack_quorum` healthy replicas remain the pipeline
//!   rolls; otherwise every in-flight append fails and the pipeline ends
//!   `Failed` (recovery then fences the segment). Appends that fail in
//!   flight (failure or stop) answer `OutcomeUnknown`: they were sent, and
//!   recovery may keep them.
//! - It also rolls once the segment holds `segment_bytes`, once it is
//!   `segment_age` old and holds data, and, on a degraded ensemble (fewer
//!   replicas than `ensemble_size`), at the first periodic check that finds
//!   enough live stores.
//! - Rolling stops accepting appends and asks for the next segment at the
//!   offset where the last accepted append ends, while the appends in
//!   flight drain. The roll ends once none is in flight and the next
//!   segment's preparation finished, well or not.

use crate::error::BrokerError;
use std::collections::VecDeque;

/// What an append in flight answers when the pipeline fails or stops: it
/// was sent to every healthy replica, so recovery may make it part of the
/// log (ADR 0008, point 5) — neither "written" nor "not written".
fn outcome_unknown(cause: &BrokerError) -> BrokerError {
    BrokerError::OutcomeUnknown(format!(
        "{cause}; the append reached fewer than the ack quorum of stores and may \
         become part of the log at the offset it was given"
    ))
}
use std::time::{Duration, Instant};

/// What the pipeline is configured with for one segment.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Acknowledgements that make an append durable (1..=replicas).
    pub ack_quorum: usize,
    /// Most appends in flight at once (at least 1).
    pub max_in_flight: usize,
    pub replica_ack_timeout: Duration,
    /// Roll once the segment holds this many bytes; 0 = never.
    pub segment_bytes: u64,
    /// Roll once the segment is this old and holds data; None = never.
    pub segment_age: Option<Duration>,
    /// The ensemble size the topic asks for; fewer replicas is degraded.
    pub ensemble_size: usize,
    /// How often a degraded ensemble checks for enough live stores.
    pub degraded_check_every: Duration,
}

/// An append the pipeline holds until it completes or fails.
#[derive(Debug)]
pub(crate) struct Entry<J> {
    pub job: J,
    pub sequence: u64,
    pub base_offset: u64,
    pub end_offset: u64,
}

/// What the caller must do.
#[derive(Debug)]
pub(crate) enum Effect<J> {
    /// The append is durable on `ack_quorum` replicas: answer it.
    Complete(Entry<J>),
    /// The append cannot complete: answer it with the error.
    Fail(J, BrokerError),
    /// A replica was dropped (for the log).
    ReplicaDropped {
        store_id: String,
        error: BrokerError,
    },
    /// Create the next segment at `base_offset`, avoiding `excluded_stores`,
    /// and report with [`AppendPipeline::next_segment_prepared`].
    PrepareNextSegment {
        base_offset: u64,
        excluded_stores: Vec<String>,
    },
}

/// How the pipeline over this segment ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Every accepted append completed; go on with a new segment.
    Roll {
        /// Stores dropped from this ensemble (and from the preparation):
        /// avoided in the next one.
        failed_stores: Vec<String>,
        /// When appends stopped being accepted, and when the last completed.
        stopped_at: Instant,
        drained_at: Instant,
        /// The next segment was prepared and starts at `next_offset`.
        next_segment_ready: bool,
        next_offset: u64,
    },
    /// Fewer than `ack_quorum` healthy replicas are left.
    Failed {
        error: BrokerError,
        failed_stores: Vec<String>,
    },
}

#[derive(Debug)]
struct Replica {
    store_id: String,
    acknowledged_sequence: u64,
    failed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextSegment {
    Preparing,
    Ready,
    Unavailable,
}

#[derive(Debug)]
struct Rolling {
    since: Instant,
    drained_at: Option<Instant>,
    next: NextSegment,
}

pub(crate) struct AppendPipeline<J> {
    settings: Settings,
    replicas: Vec<Replica>,
    next_offset: u64,
    /// The last sequence sent.
    sequence: u64,
    in_flight: VecDeque<Entry<J>>,
    /// Send times of appends some healthy replica has not acknowledged.
    unacknowledged: VecDeque<(u64, Instant)>,
    size_bytes: u64,
    opened_at: Instant,
    roll_at: Option<Instant>,
    degraded_check_at: Option<Instant>,
    rolling: Option<Rolling>,
    /// Stores the next segment's preparation failed on.
    preparation_failed_stores: Vec<String>,
    effects: VecDeque<Effect<J>>,
    end: Option<End>,
}

impl<J> AppendPipeline<J> {
    /// A pipeline over a segment whose replicas are `store_ids` (in the
    /// order the caller indexes them), appending from `base_offset`.
    pub fn new(
        settings: Settings,
        store_ids: Vec<String>,
        base_offset: u64,
        opened_at: Instant,
    ) -> Self {
        assert!(!store_ids.is_empty(), "a segment has at least one replica");
        let mut settings = settings;
        settings.ack_quorum = settings.ack_quorum.clamp(1, store_ids.len());
        settings.max_in_flight = settings.max_in_flight.max(1);
        // A time beyond the clock's range (segment_ms = u64::MAX) is never.
        let roll_at = settings
            .segment_age
            .and_then(|age| opened_at.checked_add(age));
        let degraded_check_at = (store_ids.len() < settings.ensemble_size)
            .then(|| opened_at.checked_add(settings.degraded_check_every))
            .flatten();
        Self {
            settings,
            replicas: store_ids
                .into_iter()
                .map(|store_id| Replica {
                    store_id,
                    acknowledged_sequence: 0,
                    failed: false,
                })
                .collect(),
            next_offset: base_offset,
            sequence: 0,
            in_flight: VecDeque::new(),
            unacknowledged: VecDeque::new(),
            size_bytes: 0,
            opened_at,
            roll_at,
            degraded_check_at,
            rolling: None,
            preparation_failed_stores: Vec::new(),
            effects: VecDeque::new(),
            end: None,
        }
    }

    /// Whether a new append may be accepted now.
    pub fn accepts_appends(&self) -> bool {
        self.end.is_none()
            && self.rolling.is_none()
            && self.in_flight.len() < self.settings.max_in_flight
    }

    /// The offset the next accepted append gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Accepts an append of `record_count` records and `size_bytes` bytes
    /// at [`Self::next_offset`]. Returns its sequence and the replicas to
    /// send it to; report each that cannot take it with
    /// [`Self::send_failed`].
    pub fn append(
        &mut self,
        job: J,
        record_count: u32,
        size_bytes: u64,
        now: Instant,
    ) -> (u64, Vec<usize>) {
        assert!(self.accepts_appends(), "append while not accepting");
        self.sequence += 1;
        let base_offset = self.next_offset;
        let end_offset = base_offset + u64::from(record_count);
        assert!(
            end_offset > base_offset,
            "an append holds at least one record"
        );
        self.next_offset = end_offset;
        self.size_bytes += size_bytes;
        self.in_flight.push_back(Entry {
            job,
            sequence: self.sequence,
            base_offset,
            end_offset,
        });
        self.unacknowledged.push_back((self.sequence, now));
        if self.settings.segment_bytes > 0 && self.size_bytes >= self.settings.segment_bytes {
            self.start_rolling(now);
        }
        let healthy = (0..self.replicas.len())
            .filter(|index| !self.replicas[*index].failed)
            .collect();
        (self.sequence, healthy)
    }

    /// The topic was altered (issue 15): roll by the new size and age
    /// limits from now on, counted from when the segment was opened. A
    /// segment already past the new size starts rolling at once; one past
    /// the new age, at the next tick.
    pub fn set_roll_limits(
        &mut self,
        segment_bytes: u64,
        segment_age: Option<Duration>,
        now: Instant,
    ) {
        self.settings.segment_bytes = segment_bytes;
        self.settings.segment_age = segment_age;
        self.roll_at = segment_age.and_then(|age| self.opened_at.checked_add(age));
        if self.end.is_none()
            && self.rolling.is_none()
            && segment_bytes > 0
            && self.size_bytes >= segment_bytes
        {
            self.start_rolling(now);
        }
    }

    /// A replica could not take a send: it fell behind or its stream closed.
    pub fn send_failed(&mut self, replica: usize, now: Instant) {
        let error = BrokerError::Unavailable(format!(
            "store {} fell behind or closed its append stream",
            self.replicas[replica].store_id
        ));
        self.drop_replica(replica, error, now);
    }

    /// A replica acknowledged everything up to `sequence`.
    pub fn acknowledged(&mut self, replica: usize, sequence: u64, now: Instant) {
        let last = self.replicas[replica].acknowledged_sequence;
        if sequence <= last || sequence > self.sequence {
            let error = BrokerError::Internal(format!(
                "store {} acknowledged sequence {sequence} out of order (had {last}, sent {})",
                self.replicas[replica].store_id, self.sequence
            ));
            self.drop_replica(replica, error, now);
            return;
        }
        if self.replicas[replica].failed {
            return;
        }
        self.replicas[replica].acknowledged_sequence = sequence;
        self.complete_durable(now);
    }

    /// A replica's stream failed or it refused an append.
    pub fn replica_failed(&mut self, replica: usize, error: BrokerError, now: Instant) {
        self.drop_replica(replica, error, now);
    }

    /// Every replica's stream ended: nothing in flight can complete.
    pub fn streams_ended(&mut self, error: BrokerError) {
        self.fail(error);
    }

    /// The partition stopped: every append in flight fails with `error`.
    /// Returns nothing; the failures are effects.
    pub fn stop(&mut self, error: BrokerError) {
        let error = outcome_unknown(&error);
        for entry in self.in_flight.drain(..) {
            self.effects
                .push_back(Effect::Fail(entry.job, error.clone()));
        }
    }

    /// When [`Self::tick`] has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let replica_deadline = self
            .unacknowledged
            .front()
            .and_then(|(_, sent_at)| sent_at.checked_add(self.settings.replica_ack_timeout));
        let not_rolling = self.rolling.is_none();
        let roll_at = self.roll_at.filter(|_| not_rolling && self.size_bytes > 0);
        let check_at = self.degraded_check_at.filter(|_| not_rolling);
        [replica_deadline, roll_at, check_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: drops replicas that did not acknowledge in time, rolls
    /// an old segment, checks a degraded ensemble against `live_stores`.
    pub fn tick(&mut self, now: Instant, live_stores: usize) {
        if self.end.is_some() {
            return;
        }
        if let Some(&(overdue, sent_at)) = self.unacknowledged.front() {
            if sent_at
                .checked_add(self.settings.replica_ack_timeout)
                .is_some_and(|deadline| now >= deadline)
            {
                self.drop_overdue(overdue, now);
            }
        }
        if self.rolling.is_none() && self.size_bytes > 0 && self.roll_at.is_some_and(|at| now >= at)
        {
            self.start_rolling(now);
        }
        if self.rolling.is_none() {
            if let Some(at) = self.degraded_check_at.filter(|at| now >= *at) {
                if live_stores >= self.settings.ensemble_size {
                    self.start_rolling(now);
                } else {
                    self.degraded_check_at =
                        at.max(now).checked_add(self.settings.degraded_check_every);
                }
            }
        }
        self.check_drained(now);
    }

    /// The next segment asked for by [`Effect::PrepareNextSegment`] is
    /// ready, or could not be prepared (`failed_stores` failed on the way).
    pub fn next_segment_prepared(&mut self, ready: bool, failed_stores: Vec<String>, now: Instant) {
        if let Some(rolling) = self.rolling.as_mut() {
            rolling.next = if ready {
                NextSegment::Ready
            } else {
                NextSegment::Unavailable
            };
        }
        self.preparation_failed_stores = failed_stores;
        self.check_drained(now);
    }

    /// The next thing to carry out, in order.
    pub fn next_effect(&mut self) -> Option<Effect<J>> {
        self.effects.pop_front()
    }

    /// Set once the pipeline over this segment is over.
    pub fn take_end(&mut self) -> Option<End> {
        self.end.take()
    }

    #[cfg(test)]
    pub fn is_ended(&self) -> bool {
        self.end.is_some()
    }

    fn healthy_replicas(&self) -> usize {
        self.replicas
            .iter()
            .filter(|replica| !replica.failed)
            .count()
    }

    fn failed_stores(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|replica| replica.failed)
            .map(|replica| replica.store_id.clone())
            .collect()
    }

    /// Replicas (failed or not) that acknowledged `sequence`.
    fn acknowledgements(&self, sequence: u64) -> usize {
        self.replicas
            .iter()
            .filter(|replica| replica.acknowledged_sequence >= sequence)
            .count()
    }

    fn complete_durable(&mut self, now: Instant) {
        while self
            .in_flight
            .front()
            .is_some_and(|entry| self.acknowledgements(entry.sequence) >= self.settings.ack_quorum)
        {
            if let Some(entry) = self.in_flight.pop_front() {
                self.effects.push_back(Effect::Complete(entry));
            }
        }
        let slowest = self
            .replicas
            .iter()
            .filter(|replica| !replica.failed)
            .map(|replica| replica.acknowledged_sequence)
            .min()
            .unwrap_or(u64::MAX);
        while self
            .unacknowledged
            .front()
            .is_some_and(|(sequence, _)| *sequence <= slowest)
        {
            self.unacknowledged.pop_front();
        }
        self.check_drained(now);
    }

    fn drop_overdue(&mut self, overdue: u64, now: Instant) {
        let timeout_ms = self.settings.replica_ack_timeout.as_millis();
        let late: Vec<usize> = (0..self.replicas.len())
            .filter(|index| {
                let replica = &self.replicas[*index];
                !replica.failed && replica.acknowledged_sequence < overdue
            })
            .collect();
        for index in late {
            let error = BrokerError::Timeout(format!(
                "store {} did not acknowledge an append within {timeout_ms} ms",
                self.replicas[index].store_id
            ));
            self.drop_replica(index, error, now);
        }
    }

    fn drop_replica(&mut self, replica: usize, error: BrokerError, now: Instant) {
        if self.end.is_some() || self.replicas[replica].failed {
            return;
        }
        self.replicas[replica].failed = true;
        self.effects.push_back(Effect::ReplicaDropped {
            store_id: self.replicas[replica].store_id.clone(),
            error: error.clone(),
        });
        if self.healthy_replicas() < self.settings.ack_quorum {
            self.fail(error);
            return;
        }
        // The dropped replica no longer holds back the slowest
        // acknowledgement.
        self.complete_durable(now);
        self.start_rolling(now);
    }

    fn fail(&mut self, error: BrokerError) {
        if self.end.is_some() {
            return;
        }
        // Appends that reached the ack quorum completed already; the rest
        // cannot, but were sent: recovery may keep them.
        let unknown = outcome_unknown(&error);
        for entry in self.in_flight.drain(..) {
            self.effects
                .push_back(Effect::Fail(entry.job, unknown.clone()));
        }
        self.end = Some(End::Failed {
            error,
            failed_stores: self.failed_stores(),
        });
    }

    fn start_rolling(&mut self, now: Instant) {
        if self.rolling.is_some() || self.end.is_some() {
            return;
        }
        self.rolling = Some(Rolling {
            since: now,
            drained_at: None,
            next: NextSegment::Preparing,
        });
        // Nothing is sent to the next segment before every append to this
        // one reached the ack quorum.
        self.effects.push_back(Effect::PrepareNextSegment {
            base_offset: self.next_offset,
            excluded_stores: self.failed_stores(),
        });
        self.check_drained(now);
    }

    fn check_drained(&mut self, now: Instant) {
        if self.end.is_some() || !self.in_flight.is_empty() {
            return;
        }
        let mut failed_stores = self.failed_stores();
        let Some(rolling) = self.rolling.as_mut() else {
            return;
        };
        let drained_at = *rolling.drained_at.get_or_insert(now);
        if rolling.next == NextSegment::Preparing {
            return;
        }
        for store in self.preparation_failed_stores.drain(..) {
            if !failed_stores.contains(&store) {
                failed_stores.push(store);
            }
        }
        self.end = Some(End::Roll {
            failed_stores,
            stopped_at: rolling.since,
            drained_at,
            next_segment_ready: rolling.next == NextSegment::Ready,
            next_offset: self.next_offset,
        });
    }
}

#[cfg(test)]
mod tests;
