//! Group commit: the durable parts of writes wait in a queue, and one
//! waiting caller at a time (the flusher) writes everything queued in one
//! redb transaction and one fsync, while new writes keep queueing behind
//! it. Each write is acknowledged once the durable revision reaches its
//! own, so every acknowledged write is on disk, and concurrent writers
//! share fsyncs instead of taking one each.
//!
//! Pure bookkeeping, guarded by the store's lock; the caller does the IO
//! and the waiting (`mod.rs`). A failed disk write leaves memory ahead of
//! the disk, so it fails every later operation until the store is
//! reopened (which reloads what is on disk).

use super::state::DiskWrite;

/// What a caller waiting for revision `needed` to be durable does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// It is durable.
    Done,
    /// A disk write failed: the message.
    Failed(String),
    /// Another caller is flushing: wait for it to finish.
    Wait,
    /// Write these (in order), then report with [`Journal::flushed`].
    Flush(Vec<DiskWrite>),
}

#[derive(Debug)]
pub(super) struct Journal {
    pending: Vec<DiskWrite>,
    /// Revision of the last queued write.
    queued: i64,
    /// Every write up to this revision is on disk.
    durable: i64,
    flushing: bool,
    failed: Option<String>,
}

impl Journal {
    /// A journal whose disk holds everything up to `revision`.
    pub(super) fn durable_at(revision: i64) -> Self {
        Self {
            pending: Vec::new(),
            queued: revision,
            durable: revision,
            flushing: false,
            failed: None,
        }
    }

    /// The error that stopped the store, if one did.
    pub(super) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Queues a durable change; returns the revision to wait for.
    pub(super) fn queue(&mut self, write: DiskWrite) -> i64 {
        debug_assert!(write.revision > self.queued);
        self.queued = write.revision;
        self.pending.push(write);
        self.queued
    }

    /// The revision of the last queued write (what a reader of the current
    /// state waits for, at most).
    pub(super) fn queued(&self) -> i64 {
        self.queued
    }

    /// The next step of a caller waiting for `needed`.
    pub(super) fn next_step(&mut self, needed: i64) -> Step {
        if let Some(error) = &self.failed {
            return Step::Failed(error.clone());
        }
        if self.durable >= needed {
            return Step::Done;
        }
        if self.flushing || self.pending.is_empty() {
            return Step::Wait;
        }
        self.flushing = true;
        Step::Flush(std::mem::take(&mut self.pending))
    }

    /// Reports the end of a flush of writes up to `revision`.
    pub(super) fn flushed(&mut self, revision: i64, result: Result<(), String>) {
        self.flushing = false;
        match result {
            Ok(()) => self.durable = self.durable.max(revision),
            Err(error) => self.failed = Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(revision: i64) -> DiskWrite {
        DiskWrite {
            revision,
            ops: Vec::new(),
        }
    }

    #[test]
    fn one_flush_covers_every_write_queued_before_it() {
        let mut journal = Journal::durable_at(10);
        assert_eq!(journal.next_step(10), Step::Done);
        let first = journal.queue(write(11));
        let second = journal.queue(write(13));
        assert_eq!(journal.queued(), 13);
        // The first waiter flushes both; the second waits for it.
        let Step::Flush(batch) = journal.next_step(first) else {
            panic!("expected a flush");
        };
        assert_eq!(batch, vec![write(11), write(13)]);
        assert_eq!(journal.next_step(second), Step::Wait);
        // Queued meanwhile: the next flush, after this one.
        let third = journal.queue(write(14));
        assert_eq!(journal.next_step(third), Step::Wait);
        journal.flushed(13, Ok(()));
        assert_eq!(journal.next_step(first), Step::Done);
        assert_eq!(journal.next_step(second), Step::Done);
        assert_eq!(journal.next_step(third), Step::Flush(vec![write(14)]));
    }

    #[test]
    fn a_failed_flush_fails_everyone_from_then_on() {
        let mut journal = Journal::durable_at(0);
        let needed = journal.queue(write(1));
        assert!(matches!(journal.next_step(needed), Step::Flush(_)));
        journal.flushed(1, Err("disk full".into()));
        assert_eq!(journal.next_step(needed), Step::Failed("disk full".into()));
        assert_eq!(journal.next_step(0), Step::Failed("disk full".into()));
        assert_eq!(journal.failure(), Some("disk full"));
    }
}
