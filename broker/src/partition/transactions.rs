//! The transactions of one partition (ADR 0016 §3.2–3.4, §3.6), as a pure
//! state machine owned by the partition's pipeline task beside the
//! idempotent producers' state: which transactions are open here and where
//! each began, which producers are being verified (their batches held),
//! which transactions ended at which epoch, the aborted transactions of the
//! log, and the last stable offset (LSO). No IO and no clock: offsets and
//! answers are passed in.
//!
//! Rules:
//! - **Data.** A transactional batch of `(pid, e)` is appended only while
//!   `(pid, e)` is *ongoing* here, which only a successful verification
//!   with the transaction coordinator starts ([`PartitionTransactions::
//!   verified`]; KIP-890 "the add is the verification"). The first batch of
//!   `(pid, e)` starts a verification and is held with every later one of
//!   that pid until the answer; other producers are never held.
//!   A batch of an epoch whose marker is here (or pending) is refused
//!   `TRANSACTION_ABORTABLE`; a non-transactional batch of a producer with
//!   an open transaction is `INVALID_TRANSACTION_STATE`.
//! - **Markers.** A marker of `(pid, e)` ends `(pid, e)` when durable.
//!   Ongoing at `e`: appended with the transaction's first offset here.
//!   Ongoing at a higher epoch, or already ended at `e + 1` or later:
//!   already applied, answered OK without an append (retries are
//!   idempotent). Nothing ongoing: appended with no first offset, a fence
//!   that also refuses batches held for a verification of an epoch <= `e`.
//!   Ongoing at a lower epoch: refused as hanging (only after an accepted
//!   data loss). A second marker of a transaction whose marker is in the
//!   pipeline is refused as retriable, never answered OK before the first
//!   is durable.
//! - **Once a marker of `(pid, e)` is accepted into the pipeline no data of
//!   `(pid, <= e)` is**: its ongoing entry is flagged ending, and a marker
//!   with nothing ongoing sets a pending fence, both checked by data.
//! - **LSO** = min(high watermark, first offsets of ongoing transactions).
//!   Offsets are reserved when a batch enters the pipeline, which starts at
//!   the high watermark, so an undurable first offset is never below it.
//!   `None` until the state was rebuilt from the log: nothing is served
//!   read-committed before.
//! - **Aborted index.** Every durable abort marker of a transaction that
//!   wrote data here adds `(pid, first_offset, marker_offset)`; a reader
//!   drops a transactional batch of `pid` within that range.
//! - A pipeline failure or takeover discards this state (held batches fail
//!   with the generation) and rebuilds it from the durable log
//!   ([`PartitionTransactions::apply_log`]), so memory never runs ahead of
//!   the log past a failure.
//! - Bounds: at most `max_open` transactions ongoing or verifying (beyond:
//!   `THROTTLED`), at most `max_ended` ended-epoch entries (least recently
//!   ended forgotten; a shortcut only, safety rests on verification), at
//!   most `max_aborted` aborted transactions (beyond: no new transaction,
//!   `THROTTLED`; entries wholly below the log start are forgotten).

use sluice_proto::batch::control::Marker;
use sluice_proto::batch::BatchHeader;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Ended-epoch entries kept per partition.
pub const MAX_ENDED_PRODUCERS: usize = 100_000;
/// Aborted transactions held per partition (stage 1 keeps the aborted
/// index in broker memory, about 64 bytes each). At the bound no new
/// transaction starts here (`THROTTLED`) until retention deletes the
/// segments holding the oldest ones: dropping an entry would serve
/// aborted records.
pub const MAX_ABORTED_TRANSACTIONS: usize = 100_000;

/// Why a batch or marker is refused; the IO edge maps it to an error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `TRANSACTION_ABORTABLE`: the producer's transaction cannot go on here.
    Abortable(String),
    /// `CONCURRENT_TRANSACTIONS` (retriable): an earlier transaction of the
    /// producer, or a marker, is still completing.
    Concurrent(String),
    /// `INVALID_TRANSACTION_STATE`.
    InvalidState(String),
    /// `THROTTLED`: too many open transactions here.
    Throttled(String),
    /// A marker ending a transaction older than the one open here.
    Hanging(String),
    /// `PRODUCER_FENCED`: the coordinator refused the verification because
    /// another instance holds the transactional id (relayed, ADR 0016 §2.2).
    Fenced(String),
}

/// What to do with a data batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataVerdict {
    /// Append it (then the idempotence check).
    Append,
    /// Ask the coordinator, then [`PartitionTransactions::hold`] the job.
    Verify {
        producer_id: i64,
        epoch: i16,
    },
    /// A verification of the same transaction is under way: hold the job.
    Hold,
    Refuse(Refusal),
}

/// What to do with a marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerVerdict {
    /// Append it, recording `first_offset`; the held jobs (a fenced
    /// verification's) fail `TRANSACTION_ABORTABLE`.
    Append {
        first_offset: Option<u64>,
    },
    /// Already applied: answer OK, append nothing.
    AlreadyApplied,
    Refuse(Refusal),
}

/// An aborted transaction's range in the log: every batch of
/// `producer_id` in `first_offset..=marker_offset` belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub marker_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    epoch: i16,
    /// Where its first batch here was placed; `None` until one is.
    first_offset: Option<u64>,
    /// That batch's first timestamp (the producer's clock), for the age
    /// of the oldest open transaction (ADR 0016 §9); 0 until it is placed.
    first_timestamp_ms: i64,
    /// Its marker is in the pipeline: no more data.
    ending: bool,
}

#[derive(Debug)]
struct Verifying<J> {
    epoch: i16,
    held: VecDeque<J>,
}

/// Limits of [`PartitionTransactions`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Transactions ongoing or verifying at once.
    pub max_open: usize,
    /// Ended-epoch entries remembered.
    pub max_ended: usize,
    /// Aborted transactions held.
    pub max_aborted: usize,
}

/// The transactions of one partition; `J` is the held append job.
#[derive(Debug)]
pub struct PartitionTransactions<J> {
    limits: Limits,
    ongoing: HashMap<i64, Open>,
    /// `(first_offset, pid)` of ongoing transactions that wrote here.
    by_first_offset: BTreeSet<(u64, i64)>,
    verifying: HashMap<i64, Verifying<J>>,
    /// pid -> highest marker epoch (`txn_epoch + 1`) durable here, with its
    /// recency tick.
    ended: HashMap<i64, (i16, u64)>,
    ended_recency: BTreeMap<u64, i64>,
    clock: u64,
    /// Markers with nothing ongoing, in the pipeline: pid -> txn epoch.
    fences: HashMap<i64, i16>,
    /// Aborted transactions, by marker offset.
    aborted: BTreeMap<u64, AbortedTxn>,
    /// True once rebuilt from the log.
    loaded: bool,
}

impl<J> PartitionTransactions<J> {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_open: limits.max_open.max(1),
                max_ended: limits.max_ended.max(1),
                max_aborted: limits.max_aborted.max(1),
            },
            ongoing: HashMap::new(),
            by_first_offset: BTreeSet::new(),
            verifying: HashMap::new(),
            ended: HashMap::new(),
            ended_recency: BTreeMap::new(),
            clock: 0,
            fences: HashMap::new(),
            aborted: BTreeMap::new(),
            loaded: false,
        }
    }

    /// True while `producer_id` has a transaction open or being verified
    /// here (the idempotence LRU must not forget it).
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.ongoing.contains_key(&producer_id) || self.verifying.contains_key(&producer_id)
    }

    /// Producers with a transaction open or being verified here.
    pub fn open_producers(&self) -> Vec<i64> {
        self.ongoing
            .keys()
            .chain(self.verifying.keys())
            .copied()
            .collect()
    }

    fn ended_epoch(&self, producer_id: i64) -> Option<i16> {
        self.ended.get(&producer_id).map(|&(epoch, _)| epoch)
    }

    /// Judges a data batch about to enter the pipeline.
    pub fn check_data(&self, header: &BatchHeader) -> DataVerdict {
        let producer_id = header.producer_id;
        if !header.transactional {
            if producer_id >= 0 && self.is_open(producer_id) {
                return DataVerdict::Refuse(Refusal::InvalidState(format!(
                    "producer {producer_id} sent a non-transactional batch while its transaction is open"
                )));
            }
            return DataVerdict::Append;
        }
        let epoch = header.producer_epoch;
        let ended = self
            .ended_epoch(producer_id)
            .is_some_and(|ended| ended > epoch);
        let fenced = self.fences.get(&producer_id).is_some_and(|&e| e >= epoch);
        if ended || fenced {
            return abortable(
                producer_id,
                epoch,
                "its transaction at this epoch ended here",
            );
        }
        if let Some(open) = self.ongoing.get(&producer_id) {
            return match open.epoch.cmp(&epoch) {
                std::cmp::Ordering::Greater => {
                    abortable(producer_id, epoch, "a later transaction is open here")
                }
                std::cmp::Ordering::Equal if open.ending => {
                    abortable(producer_id, epoch, "its transaction is ending here")
                }
                std::cmp::Ordering::Equal => DataVerdict::Append,
                std::cmp::Ordering::Less => DataVerdict::Refuse(Refusal::Concurrent(format!(
                    "producer {producer_id}: the marker of epoch {} has not arrived yet",
                    open.epoch
                ))),
            };
        }
        if let Some(verifying) = self.verifying.get(&producer_id) {
            return match verifying.epoch.cmp(&epoch) {
                std::cmp::Ordering::Equal => DataVerdict::Hold,
                std::cmp::Ordering::Greater => {
                    abortable(producer_id, epoch, "a later transaction is being verified")
                }
                std::cmp::Ordering::Less => DataVerdict::Refuse(Refusal::Concurrent(format!(
                    "producer {producer_id}: epoch {} is still being verified",
                    verifying.epoch
                ))),
            };
        }
        if self.ongoing.len() + self.verifying.len() >= self.limits.max_open {
            return DataVerdict::Refuse(Refusal::Throttled(format!(
                "{} transactions are open on this partition, the limit ([produce] max_open_transactions_per_partition)",
                self.limits.max_open
            )));
        }
        if self.aborted.len() >= self.limits.max_aborted {
            return DataVerdict::Refuse(Refusal::Throttled(format!(
                "this partition holds {} aborted transactions, the most it indexes; new transactions wait for retention",
                self.aborted.len()
            )));
        }
        DataVerdict::Verify { producer_id, epoch }
    }

    /// Forgets aborted transactions whose marker lies below `log_start`:
    /// retention deleted all their batches.
    pub fn forget_aborted_before(&mut self, log_start: u64) {
        self.aborted = self.aborted.split_off(&log_start);
    }

    /// Starts a verification of `(producer_id, epoch)` (after
    /// [`DataVerdict::Verify`]) or holds behind one (after
    /// [`DataVerdict::Hold`]).
    pub fn hold(&mut self, producer_id: i64, epoch: i16, job: J) {
        self.verifying
            .entry(producer_id)
            .or_insert_with(|| Verifying {
                epoch,
                held: VecDeque::new(),
            })
            .held
            .push_back(job);
    }

    /// The coordinator's answer to the verification of `(producer_id,
    /// epoch)`, checked again against the state. Returns the held jobs in
    /// arrival order and what to do with them: `Ok` to append (each goes
    /// through [`Self::check_data`] again, which now says `Append`), or
    /// the refusal for all. A stale answer (no such verification) releases
    /// nothing.
    pub fn verified(
        &mut self,
        producer_id: i64,
        epoch: i16,
        answer: Result<(), Refusal>,
    ) -> (Vec<J>, Result<(), Refusal>) {
        match self.verifying.get(&producer_id) {
            Some(verifying) if verifying.epoch == epoch => {}
            _ => return (Vec::new(), Ok(())),
        }
        let Some(verifying) = self.verifying.remove(&producer_id) else {
            return (Vec::new(), Ok(()));
        };
        let jobs: Vec<J> = verifying.held.into_iter().collect();
        if let Err(refusal) = answer {
            return (jobs, Err(refusal));
        }
        let ended = self
            .ended_epoch(producer_id)
            .is_some_and(|ended| ended > epoch);
        let fenced = self.fences.get(&producer_id).is_some_and(|&e| e >= epoch);
        let later = self
            .ongoing
            .get(&producer_id)
            .is_some_and(|open| open.epoch != epoch);
        if ended || fenced || later {
            let refusal = abortable_refusal(
                producer_id,
                epoch,
                "its marker arrived during the verification",
            );
            return (jobs, Err(refusal));
        }
        self.ongoing.entry(producer_id).or_insert(Open {
            epoch,
            first_offset: None,
            first_timestamp_ms: 0,
            ending: false,
        });
        (jobs, Ok(()))
    }

    /// A batch [`Self::check_data`] let through entered the pipeline at
    /// `base_offset`.
    pub fn data_appending(&mut self, header: &BatchHeader, base_offset: u64) {
        if !header.transactional {
            return;
        }
        if let Some(open) = self.ongoing.get_mut(&header.producer_id) {
            if open.epoch == header.producer_epoch && open.first_offset.is_none() {
                open.first_offset = Some(base_offset);
                open.first_timestamp_ms = header.first_timestamp_ms;
                self.by_first_offset
                    .insert((base_offset, header.producer_id));
            }
        }
    }

    /// Judges a marker about to enter the pipeline. On `Append` the held
    /// jobs returned (a verification the marker fences) must fail.
    pub fn check_marker(&mut self, marker: &Marker) -> (MarkerVerdict, Vec<J>) {
        let producer_id = marker.producer_id;
        let txn_epoch = marker.txn_epoch;
        let in_flight = || {
            MarkerVerdict::Refuse(Refusal::Concurrent(format!(
                "a marker of producer {producer_id} epoch {txn_epoch} is being appended"
            )))
        };
        if self
            .ended_epoch(producer_id)
            .is_some_and(|ended| ended > txn_epoch)
        {
            return (MarkerVerdict::AlreadyApplied, Vec::new());
        }
        if let Some(&fence) = self.fences.get(&producer_id) {
            if fence >= txn_epoch {
                return (in_flight(), Vec::new());
            }
        }
        if let Some(open) = self.ongoing.get_mut(&producer_id) {
            return match open.epoch.cmp(&txn_epoch) {
                std::cmp::Ordering::Greater => (MarkerVerdict::AlreadyApplied, Vec::new()),
                std::cmp::Ordering::Equal if open.ending => (in_flight(), Vec::new()),
                std::cmp::Ordering::Equal => {
                    open.ending = true;
                    let first_offset = open.first_offset;
                    (MarkerVerdict::Append { first_offset }, Vec::new())
                }
                std::cmp::Ordering::Less => (
                    MarkerVerdict::Refuse(Refusal::Hanging(format!(
                        "producer {producer_id}: a marker of epoch {txn_epoch} while epoch {} is open here",
                        open.epoch
                    ))),
                    Vec::new(),
                ),
            };
        }
        let fenced = match self.verifying.get(&producer_id) {
            Some(verifying) if verifying.epoch <= txn_epoch => self
                .verifying
                .remove(&producer_id)
                .map(|verifying| verifying.held.into_iter().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        self.fences.insert(producer_id, txn_epoch);
        (MarkerVerdict::Append { first_offset: None }, fenced)
    }

    /// A marker is durable at `marker_offset`: its transaction ends.
    pub fn marker_durable(&mut self, marker: &Marker, marker_offset: u64) {
        let producer_id = marker.producer_id;
        if self.fences.get(&producer_id) == Some(&marker.txn_epoch) {
            self.fences.remove(&producer_id);
        }
        let first_offset = match self.ongoing.get(&producer_id) {
            Some(open) if open.epoch == marker.txn_epoch => {
                let first_offset = open.first_offset;
                self.ongoing.remove(&producer_id);
                if let Some(first) = first_offset {
                    self.by_first_offset.remove(&(first, producer_id));
                }
                first_offset
            }
            _ => None,
        };
        self.end(producer_id, marker.txn_epoch.saturating_add(1));
        if !marker.commit {
            if let Some(first_offset) = first_offset {
                self.aborted.insert(
                    marker_offset,
                    AbortedTxn {
                        producer_id,
                        first_offset,
                        marker_offset,
                    },
                );
            }
        }
    }

    fn end(&mut self, producer_id: i64, marker_epoch: i16) {
        self.clock += 1;
        let tick = self.clock;
        if let Some((epoch, last)) = self.ended.get(&producer_id).copied() {
            self.ended_recency.remove(&last);
            self.ended
                .insert(producer_id, (epoch.max(marker_epoch), tick));
        } else {
            while self.ended.len() >= self.limits.max_ended {
                let Some((_, oldest)) = self.ended_recency.pop_first() else {
                    break;
                };
                self.ended.remove(&oldest);
            }
            self.ended.insert(producer_id, (marker_epoch, tick));
        }
        self.ended_recency.insert(tick, producer_id);
    }

    /// The last stable offset given the high watermark; `None` until the
    /// state was rebuilt from the log.
    pub fn last_stable_offset(&self, high_watermark: u64) -> Option<u64> {
        if !self.loaded {
            return None;
        }
        let first_open = self.by_first_offset.first().map(|&(first, _)| first);
        Some(first_open.map_or(high_watermark, |first| first.min(high_watermark)))
    }

    /// The open transaction holding the LSO back (the lowest first offset
    /// here): `(first_offset, first_timestamp_ms)`; `None` when no open
    /// transaction has data here. O(log n).
    pub fn holding_lso(&self) -> Option<(u64, i64)> {
        let &(first_offset, producer_id) = self.by_first_offset.first()?;
        let open = self.ongoing.get(&producer_id)?;
        Some((first_offset, open.first_timestamp_ms))
    }

    /// Aborted transactions whose range meets `[from, to)`, by marker
    /// offset.
    pub fn aborted_in(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.aborted
            .range(from..)
            .map(|(_, aborted)| *aborted)
            .filter(|aborted| aborted.first_offset < to)
            .collect()
    }

    /// Forgets everything (a failed pipeline or a takeover); returns the
    /// held jobs, which fail. [`Self::apply_log`] and
    /// [`Self::finish_rebuild`] then restore it from the durable log.
    pub fn reset(&mut self) -> Vec<J> {
        let held = self
            .verifying
            .drain()
            .flat_map(|(_, verifying)| verifying.held)
            .collect();
        *self = Self::new(self.limits);
        held
    }

    /// Replays one durable batch at its offsets (rebuild after
    /// [`Self::reset`], in log order from a point before every open
    /// transaction's first batch). `marker` is the parsed control record
    /// of a control batch.
    pub fn apply_log(&mut self, header: &BatchHeader, marker: Option<&Marker>) {
        if let Some(marker) = marker {
            self.apply_marker(marker, header.base_offset);
            return;
        }
        if !header.transactional {
            return;
        }
        let producer_id = header.producer_id;
        let epoch = header.producer_epoch;
        if self
            .ended_epoch(producer_id)
            .is_some_and(|ended| ended > epoch)
        {
            // Data after its own marker: a correct log has none.
            return;
        }
        match self.ongoing.get(&producer_id) {
            Some(open) if open.epoch >= epoch => {}
            Some(open) => {
                // A later epoch's data without the earlier marker: only
                // after an accepted data loss. The later one counts.
                let first = open.first_offset;
                if let Some(first) = first {
                    self.by_first_offset.remove(&(first, producer_id));
                }
                self.open_at(producer_id, epoch, header);
            }
            None => self.open_at(producer_id, epoch, header),
        }
    }

    fn open_at(&mut self, producer_id: i64, epoch: i16, first: &BatchHeader) {
        let first_offset = first.base_offset;
        self.ongoing.insert(
            producer_id,
            Open {
                epoch,
                first_offset: Some(first_offset),
                first_timestamp_ms: first.first_timestamp_ms,
                ending: false,
            },
        );
        self.by_first_offset.insert((first_offset, producer_id));
    }

    /// A marker read back from the log: ends what it ends. One whose data
    /// precede the replay's start adds its abort range from the marker's
    /// own `first_offset`.
    fn apply_marker(&mut self, marker: &Marker, marker_offset: u64) {
        let opened_here = self
            .ongoing
            .get(&marker.producer_id)
            .is_some_and(|open| open.epoch == marker.txn_epoch);
        if !opened_here && !marker.commit {
            if let Some(first_offset) = marker.first_offset.filter(|&first| first < marker_offset) {
                self.aborted.insert(
                    marker_offset,
                    AbortedTxn {
                        producer_id: marker.producer_id,
                        first_offset,
                        marker_offset,
                    },
                );
            }
        }
        self.marker_durable(marker, marker_offset);
    }

    /// The replay reached the high watermark: the LSO is known.
    pub fn finish_rebuild(&mut self) {
        self.loaded = true;
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }
}

fn abortable_refusal(producer_id: i64, epoch: i16, why: &str) -> Refusal {
    Refusal::Abortable(format!(
        "producer {producer_id} epoch {epoch}: {why}; abort the transaction and redo it"
    ))
}

fn abortable(producer_id: i64, epoch: i16, why: &str) -> DataVerdict {
    DataVerdict::Refuse(abortable_refusal(producer_id, epoch, why))
}

#[cfg(test)]
mod tests;
