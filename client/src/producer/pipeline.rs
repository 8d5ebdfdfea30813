//! The per-partition send pipeline and its retry ordering, as a pure state
//! machine (no IO; time passed in).
//!
//! Batches are sent in order with at most `max_in_flight` outstanding. The
//! broker fails every later request of a partition after one failed, so on
//! any error the pipeline stops sending, waits until every in-flight batch
//! has answered, then puts the failed batches back at the front of the
//! queue in their original order and resumes after a backoff. Resending in
//! order therefore never reorders records.
//!
//! When the partition's owner changes (the route names another broker at
//! a higher epoch), the pipeline does not wait for the old owner's
//! answers: it abandons every in-flight attempt and puts the batches back
//! at the front of the queue in their original order, to be resent to the
//! new owner at once. Each attempt has its own request id, never reused,
//! so a late answer to an abandoned attempt matches nothing and is
//! ignored ([`Effect::Unknown`]). This is safe because the new owner took
//! the partition over by fencing the old owner's segment and rebuilding
//! the idempotent producers' state from the log before serving: a resent
//! batch the old owner made durable is recognised and answered with its
//! original offset; one it did not is appended, after the earlier ones,
//! which are resent first. Without idempotence a resend may write a batch
//! twice, as any retry after an unknown outcome does.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// How the broker answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Success,
    /// Worth retrying (after refreshing routes and a backoff).
    Retriable,
    /// Refused by a quota, nothing written: resend after exactly this
    /// wait (the server's `retry_after_ms`), which is not a failure (the
    /// backoff does not grow).
    Throttled(Duration),
    /// Retrying cannot help; the batch fails.
    Fatal,
}

/// What the caller must do after an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect<B> {
    /// Acknowledge the batch's records.
    Delivered(B),
    /// Fail the batch's records with the error of the answer.
    Failed(B),
    /// The batch will be resent; nothing to report yet.
    Pending,
    /// Nothing matched the request id (a late answer); ignore.
    Unknown,
}

/// The broker an attempt went to: its address and the ownership epoch of
/// the route it was sent under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub address: String,
    pub epoch: u64,
}

impl Owner {
    /// Whether `route` names a different owner that took the partition
    /// over since this one (a higher epoch): an older or equal epoch is a
    /// stale route, and the same address answers its own requests.
    pub fn moved_to(&self, route: &Owner) -> bool {
        !route.address.is_empty() && route.address != self.address && route.epoch > self.epoch
    }
}

/// What a route change did to the pipeline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The owner is the same (or the route is offline or stale).
    No,
    /// The owner changed: these in-flight attempts (request ids) were
    /// abandoned and their batches queued again, in order, in front.
    Yes { abandoned: Vec<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sending,
    /// An error was seen; waiting for in-flight requests to answer.
    Draining,
    /// Resend after this instant.
    Backoff(Instant),
}

pub(crate) struct Pipeline<B> {
    max_in_flight: usize,
    backoff_base: Duration,
    backoff_max: Duration,
    next_sequence: u64,
    /// Waiting to be sent, in send order (sequence ascending).
    queued: VecDeque<(u64, B)>,
    /// request id -> (sequence, batch), sent and unanswered.
    in_flight: BTreeMap<u64, (u64, B)>,
    /// Failed retriably during this drain; resent in sequence order.
    to_retry: BTreeMap<u64, B>,
    state: State,
    /// Consecutive failed rounds, for the backoff.
    attempts: u32,
    /// Where the last attempt went; kept after it answered, so a route
    /// change during a backoff is noticed too.
    sent_to: Option<Owner>,
    /// Owner changes followed so far (each abandons the attempts then in
    /// flight).
    moves: u64,
    /// Moved and nothing delivered since: the new owner is most likely
    /// still taking the partition over (answering UNAVAILABLE), so its
    /// retries wait the base backoff without doubling; the first delivery
    /// ends this.
    fresh_owner: bool,
    /// The latest end of the waits throttled answers named during this
    /// drain: the resend waits for it instead of the backoff.
    throttled_until: Option<Instant>,
}

impl<B> Pipeline<B> {
    pub fn new(max_in_flight: usize, backoff_base: Duration, backoff_max: Duration) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            backoff_base,
            backoff_max,
            next_sequence: 0,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            to_retry: BTreeMap::new(),
            state: State::Sending,
            attempts: 0,
            sent_to: None,
            moves: 0,
            fresh_owner: false,
            throttled_until: None,
        }
    }

    /// Queues a new batch behind everything already queued.
    pub fn push(&mut self, batch: B) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.queued.push_back((sequence, batch));
    }

    /// True when the next queued batch may be sent now.
    pub fn can_send(&mut self, now: Instant) -> bool {
        if let State::Backoff(until) = self.state {
            if now < until {
                return false;
            }
            self.state = State::Sending;
        }
        self.state == State::Sending
            && !self.queued.is_empty()
            && self.in_flight.len() < self.max_in_flight
    }

    /// Moves the next queued batch to in-flight under `request_id`, sent
    /// to `owner`. Call only after [`Pipeline::can_send`] said yes and
    /// [`Pipeline::may_send_to`] agreed.
    pub fn send_next(&mut self, request_id: u64, owner: &Owner) -> Option<&B> {
        let (sequence, batch) = self.queued.pop_front()?;
        if self.sent_to.as_ref() != Some(owner) {
            self.sent_to = Some(owner.clone());
        }
        self.in_flight.insert(request_id, (sequence, batch));
        self.in_flight.get(&request_id).map(|(_, batch)| batch)
    }

    /// Whether a batch may go to `address` now: not while earlier ones
    /// are in flight to another broker (they answer first, or are
    /// abandoned by [`Pipeline::on_route`]), or a move could reorder.
    pub fn may_send_to(&self, address: &str) -> bool {
        self.in_flight.is_empty()
            || self
                .sent_to
                .as_ref()
                .is_none_or(|owner| owner.address == address)
    }

    /// The partition's route is now `route`. If it names a new owner
    /// ([`Owner::moved_to`]), every in-flight attempt is abandoned and its
    /// batch queued again in front, in original order, with the ones
    /// waiting for a retry; a running backoff ends (the new owner has not
    /// failed anything yet).
    pub fn on_route(&mut self, route: &Owner) -> Moved {
        let moved = self
            .sent_to
            .as_ref()
            .is_some_and(|owner| owner.moved_to(route));
        if !moved {
            return Moved::No;
        }
        self.sent_to = None;
        self.moves += 1;
        let abandoned: Vec<u64> = self.in_flight.keys().copied().collect();
        for (_, (sequence, batch)) in std::mem::take(&mut self.in_flight) {
            self.to_retry.insert(sequence, batch);
        }
        let retry = std::mem::take(&mut self.to_retry);
        for (sequence, batch) in retry.into_iter().rev() {
            self.queued.push_front((sequence, batch));
        }
        self.state = State::Sending;
        self.attempts = 0;
        self.fresh_owner = true;
        self.throttled_until = None;
        Moved::Yes { abandoned }
    }

    /// Where the last attempt went.
    pub fn sent_to(&self) -> Option<&Owner> {
        self.sent_to.as_ref()
    }

    /// Owner changes followed so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// True when nothing is queued, in flight or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty() && self.to_retry.is_empty()
    }

    /// When a backoff ends, if one is running.
    pub fn backoff_until(&self) -> Option<Instant> {
        match self.state {
            State::Backoff(until) => Some(until),
            _ => None,
        }
    }

    /// Applies the answer to `request_id`.
    pub fn on_answer(&mut self, request_id: u64, answer: Answer, now: Instant) -> Effect<B> {
        let Some((sequence, batch)) = self.in_flight.remove(&request_id) else {
            return Effect::Unknown;
        };
        let effect = match answer {
            Answer::Success => {
                if self.state == State::Sending {
                    self.attempts = 0;
                }
                self.fresh_owner = false;
                Effect::Delivered(batch)
            }
            Answer::Fatal if self.state == State::Sending => {
                // Later in-flight requests fail because of this one: drain
                // and resend them.
                self.state = State::Draining;
                Effect::Failed(batch)
            }
            Answer::Throttled(wait) => {
                let until = crate::cluster::instant_after(now, wait);
                self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
                self.state = State::Draining;
                self.to_retry.insert(sequence, batch);
                Effect::Pending
            }
            // While draining, an error is most likely the broker failing a
            // request behind the first failure, so it is retried.
            Answer::Fatal | Answer::Retriable => {
                self.state = State::Draining;
                self.to_retry.insert(sequence, batch);
                Effect::Pending
            }
        };
        if self.state == State::Draining && self.in_flight.is_empty() {
            self.finish_drain(now);
        }
        effect
    }

    fn finish_drain(&mut self, now: Instant) {
        if self.to_retry.is_empty() {
            self.state = State::Sending;
            return;
        }
        // Failed ones go first, in original order; they all precede the
        // queued ones because they were sent earlier.
        let retry = std::mem::take(&mut self.to_retry);
        for (sequence, batch) in retry.into_iter().rev() {
            self.queued.push_front((sequence, batch));
        }
        if let Some(until) = self.throttled_until.take() {
            // Throttled: resend when the server said, no sooner and no
            // later; the requests behind it failed only because of it.
            self.state = State::Backoff(until);
            return;
        }
        let delay = crate::cluster::backoff(
            self.attempts,
            self.backoff_base.as_millis() as u64,
            self.backoff_max.as_millis() as u64,
        );
        if !self.fresh_owner {
            self.attempts = self.attempts.saturating_add(1);
        }
        self.state = State::Backoff(crate::cluster::instant_after(now, delay));
    }

    /// Removes queued (not in-flight) batches from the front of the queue
    /// while `expired` holds for them, in order; the caller fails them with
    /// a timeout. Queued batches are in enqueue order (retries, which go
    /// back to the front, are older still), so checking only the head is
    /// enough and costs O(1) per call plus O(1) per expired batch, instead
    /// of a scan of the whole queue on every dispatcher round. A younger
    /// batch stuck behind an older one expires once it becomes the head.
    pub fn take_expired(&mut self, mut expired: impl FnMut(&B) -> bool) -> Vec<B> {
        let mut removed = Vec::new();
        while let Some((_, batch)) = self.queued.front() {
            if !expired(batch) {
                break;
            }
            if let Some((_, batch)) = self.queued.pop_front() {
                removed.push(batch);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(max_in_flight: usize) -> Pipeline<&'static str> {
        Pipeline::new(
            max_in_flight,
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
    }

    fn owner(address: &str, epoch: u64) -> Owner {
        Owner {
            address: address.to_string(),
            epoch,
        }
    }

    fn send_all(
        pipeline: &mut Pipeline<&'static str>,
        now: Instant,
        next_id: &mut u64,
    ) -> Vec<(u64, &'static str)> {
        send_all_to(pipeline, now, next_id, &owner("a", 1))
    }

    fn send_all_to(
        pipeline: &mut Pipeline<&'static str>,
        now: Instant,
        next_id: &mut u64,
        to: &Owner,
    ) -> Vec<(u64, &'static str)> {
        let mut sent = Vec::new();
        while pipeline.can_send(now) && pipeline.may_send_to(&to.address) {
            *next_id += 1;
            let batch = *pipeline.send_next(*next_id, to).expect("can_send said yes");
            sent.push((*next_id, batch));
        }
        sent
    }

    #[test]
    fn owner_change_mid_flight_resends_in_order_at_once_and_ignores_the_old_answers() {
        let mut pipeline = pipeline(3);
        let now = Instant::now();
        for batch in ["a", "b", "c", "d"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        let (old, new) = (owner("a", 1), owner("b", 2));
        assert_eq!(send_all_to(&mut pipeline, now, &mut id, &old).len(), 3);
        // Nothing goes to another broker while attempts are in flight to
        // the old one, unless the route says it moved.
        assert!(!pipeline.may_send_to("b"));
        assert_eq!(pipeline.on_route(&old), Moved::No, "same owner");
        assert_eq!(
            pipeline.on_route(&owner("b", 1)),
            Moved::No,
            "a route at no higher epoch is stale"
        );
        assert_eq!(
            pipeline.on_route(&owner("", 2)),
            Moved::No,
            "offline: nowhere to resend"
        );
        assert_eq!(
            pipeline.on_route(&new),
            Moved::Yes {
                abandoned: vec![1, 2, 3]
            }
        );
        assert_eq!(pipeline.moves(), 1);
        // Resent at once (no backoff), in order, then the rest.
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &new),
            vec![(4, "a"), (5, "b"), (6, "c")]
        );
        // The old owner's late answers, success or failure, match nothing.
        assert_eq!(pipeline.on_answer(1, Answer::Success, now), Effect::Unknown);
        assert_eq!(
            pipeline.on_answer(2, Answer::Retriable, now),
            Effect::Unknown
        );
        assert_eq!(pipeline.on_answer(3, Answer::Fatal, now), Effect::Unknown);
        assert_eq!(
            pipeline.backoff_until(),
            None,
            "ignored answers start no drain"
        );
        for (request, batch) in [(4, "a"), (5, "b"), (6, "c")] {
            assert_eq!(
                pipeline.on_answer(request, Answer::Success, now),
                Effect::Delivered(batch)
            );
        }
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &new),
            vec![(7, "d")]
        );
    }

    #[test]
    fn owner_change_while_draining_merges_failed_and_in_flight_in_order() {
        let mut pipeline = pipeline(4);
        let now = Instant::now();
        for batch in ["a", "b", "c", "d", "e"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        send_all_to(&mut pipeline, now, &mut id, &owner("a", 1));
        // "a" delivered, "c" failed (drain starts), "b" and "d" in flight.
        assert_eq!(
            pipeline.on_answer(1, Answer::Success, now),
            Effect::Delivered("a")
        );
        assert_eq!(
            pipeline.on_answer(3, Answer::Retriable, now),
            Effect::Pending
        );
        assert!(!pipeline.can_send(now));
        assert_eq!(
            pipeline.on_route(&owner("b", 2)),
            Moved::Yes {
                abandoned: vec![2, 4]
            }
        );
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &owner("b", 2)),
            vec![(5, "b"), (6, "c"), (7, "d"), (8, "e")]
        );
    }

    #[test]
    fn owner_change_during_a_backoff_ends_it() {
        let mut pipeline = pipeline(1);
        let now = Instant::now();
        pipeline.push("a");
        let mut id = 0;
        send_all_to(&mut pipeline, now, &mut id, &owner("a", 1));
        // The old owner refused it (it is shutting down): a backoff runs.
        assert_eq!(
            pipeline.on_answer(1, Answer::Retriable, now),
            Effect::Pending
        );
        assert!(pipeline.backoff_until().is_some());
        assert!(!pipeline.can_send(now));
        assert_eq!(
            pipeline.on_route(&owner("b", 2)),
            Moved::Yes {
                abandoned: Vec::new()
            }
        );
        assert_eq!(pipeline.backoff_until(), None);
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &owner("b", 2)),
            vec![(2, "a")]
        );
    }

    #[test]
    fn a_new_owner_still_taking_over_is_retried_at_the_base_backoff() {
        let mut pipeline = pipeline(1);
        let now = Instant::now();
        pipeline.push("a");
        pipeline.push("b");
        let mut id = 0;
        send_all_to(&mut pipeline, now, &mut id, &owner("a", 1));
        assert!(matches!(
            pipeline.on_route(&owner("b", 2)),
            Moved::Yes { .. }
        ));
        let mut at = now;
        for _ in 0..5 {
            send_all_to(&mut pipeline, at, &mut id, &owner("b", 2));
            pipeline.on_answer(id, Answer::Retriable, at);
            let until = pipeline.backoff_until().expect("backoff");
            assert_eq!(until - at, Duration::from_millis(10), "no doubling");
            at = until;
        }
        // Once the new owner delivered, failures back off as usual again.
        send_all_to(&mut pipeline, at, &mut id, &owner("b", 2));
        assert_eq!(
            pipeline.on_answer(id, Answer::Success, at),
            Effect::Delivered("a")
        );
        for expected in [10, 20] {
            send_all_to(&mut pipeline, at, &mut id, &owner("b", 2));
            pipeline.on_answer(id, Answer::Retriable, at);
            let until = pipeline.backoff_until().expect("backoff");
            assert_eq!(until - at, Duration::from_millis(expected));
            at = until;
        }
    }

    #[test]
    fn two_owner_changes_in_a_row_resend_to_the_latest_only() {
        let mut pipeline = pipeline(2);
        let now = Instant::now();
        for batch in ["a", "b"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        send_all_to(&mut pipeline, now, &mut id, &owner("a", 1));
        assert!(matches!(
            pipeline.on_route(&owner("b", 2)),
            Moved::Yes { .. }
        ));
        // Before anything was resent to b, c took over from b: nothing is
        // in flight to b, so there is nothing more to abandon.
        assert_eq!(pipeline.on_route(&owner("c", 3)), Moved::No);
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &owner("c", 3)),
            vec![(3, "a"), (4, "b")]
        );
        // After resending to c, d takes over: the attempts on c are
        // abandoned too.
        assert_eq!(
            pipeline.on_route(&owner("d", 4)),
            Moved::Yes {
                abandoned: vec![3, 4]
            }
        );
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &owner("d", 4)),
            vec![(5, "a"), (6, "b")]
        );
        assert_eq!(pipeline.moves(), 2);
        for stale in 1..=4 {
            assert_eq!(
                pipeline.on_answer(stale, Answer::Success, now),
                Effect::Unknown
            );
        }
        assert_eq!(
            pipeline.on_answer(5, Answer::Success, now),
            Effect::Delivered("a")
        );
        assert_eq!(
            pipeline.on_answer(6, Answer::Success, now),
            Effect::Delivered("b")
        );
        assert!(pipeline.is_idle());
    }

    #[test]
    fn a_route_flapping_back_to_the_first_owner_resends_there_again() {
        let mut pipeline = pipeline(2);
        let now = Instant::now();
        for batch in ["a", "b"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        let first = owner("a", 1);
        send_all_to(&mut pipeline, now, &mut id, &first);
        assert!(matches!(
            pipeline.on_route(&owner("b", 2)),
            Moved::Yes { .. }
        ));
        send_all_to(&mut pipeline, now, &mut id, &owner("b", 2));
        // a took the partition back (a new takeover, a higher epoch).
        let back = owner("a", 3);
        assert_eq!(
            pipeline.on_route(&back),
            Moved::Yes {
                abandoned: vec![3, 4]
            }
        );
        assert_eq!(
            send_all_to(&mut pipeline, now, &mut id, &back),
            vec![(5, "a"), (6, "b")]
        );
        // The first attempts on a and those on b are all ignored; only the
        // latest ones count.
        for stale in 1..=4 {
            assert_eq!(
                pipeline.on_answer(stale, Answer::Success, now),
                Effect::Unknown
            );
        }
        assert_eq!(
            pipeline.on_answer(5, Answer::Success, now),
            Effect::Delivered("a")
        );
        assert_eq!(
            pipeline.on_answer(6, Answer::Success, now),
            Effect::Delivered("b")
        );
    }

    #[test]
    fn respects_max_in_flight_and_order() {
        let mut pipeline = pipeline(2);
        let now = Instant::now();
        for batch in ["a", "b", "c"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        let sent = send_all(&mut pipeline, now, &mut id);
        assert_eq!(sent, vec![(1, "a"), (2, "b")]);
        assert_eq!(
            pipeline.on_answer(1, Answer::Success, now),
            Effect::Delivered("a")
        );
        let sent = send_all(&mut pipeline, now, &mut id);
        assert_eq!(sent, vec![(3, "c")]);
        assert_eq!(
            pipeline.on_answer(2, Answer::Success, now),
            Effect::Delivered("b")
        );
        assert_eq!(
            pipeline.on_answer(3, Answer::Success, now),
            Effect::Delivered("c")
        );
        assert!(pipeline.is_idle());
        assert_eq!(pipeline.on_answer(3, Answer::Success, now), Effect::Unknown);
    }

    #[test]
    fn retry_waits_for_in_flight_then_resends_in_original_order() {
        let mut pipeline = pipeline(3);
        let now = Instant::now();
        for batch in ["a", "b", "c", "d"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        assert_eq!(send_all(&mut pipeline, now, &mut id).len(), 3);
        // "a" fails: nothing more is sent until b and c answered.
        assert_eq!(
            pipeline.on_answer(1, Answer::Retriable, now),
            Effect::Pending
        );
        assert!(!pipeline.can_send(now));
        // Answers may come in any order; the broker fails later ones.
        assert_eq!(
            pipeline.on_answer(3, Answer::Retriable, now),
            Effect::Pending
        );
        assert!(!pipeline.can_send(now));
        assert_eq!(
            pipeline.on_answer(2, Answer::Retriable, now),
            Effect::Pending
        );
        // Backoff now runs.
        let until = pipeline
            .backoff_until()
            .expect("backoff after a failed round");
        assert!(!pipeline.can_send(now));
        let resent = send_all(&mut pipeline, until, &mut id);
        assert_eq!(resent, vec![(4, "a"), (5, "b"), (6, "c")]);
        for request in [4, 5, 6] {
            assert!(matches!(
                pipeline.on_answer(request, Answer::Success, until),
                Effect::Delivered(_)
            ));
        }
        assert_eq!(send_all(&mut pipeline, until, &mut id), vec![(7, "d")]);
    }

    #[test]
    fn a_throttled_batch_among_many_in_flight_is_resent_in_order_after_exactly_its_wait() {
        let mut pipeline = pipeline(4);
        for batch in ["a", "b", "c", "d", "e"] {
            pipeline.push(batch);
        }
        let now = Instant::now();
        let mut id = 0;
        let sent = send_all(&mut pipeline, now, &mut id);
        assert_eq!(sent, vec![(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
        assert_eq!(
            pipeline.on_answer(1, Answer::Success, now),
            Effect::Delivered("a")
        );
        // b is throttled for 1.5 s; c and d are refused behind it (the
        // broker's stream is poisoned), some with a shorter wait.
        let wait = Duration::from_millis(1500);
        assert_eq!(
            pipeline.on_answer(2, Answer::Throttled(wait), now),
            Effect::Pending
        );
        assert_eq!(
            pipeline.on_answer(4, Answer::Retriable, now),
            Effect::Pending
        );
        assert!(!pipeline.can_send(now), "nothing is sent while draining");
        assert_eq!(
            pipeline.on_answer(3, Answer::Throttled(Duration::from_millis(10)), now),
            Effect::Pending
        );
        assert_eq!(
            pipeline.backoff_until(),
            Some(now + wait),
            "exactly the longest wait"
        );
        assert!(!pipeline.can_send(now + wait - Duration::from_millis(1)));
        let resent = send_all(&mut pipeline, now + wait, &mut id);
        assert_eq!(resent, vec![(5, "b"), (6, "c"), (7, "d"), (8, "e")]);
        for (id, batch) in resent {
            assert_eq!(
                pipeline.on_answer(id, Answer::Success, now + wait),
                Effect::Delivered(batch)
            );
        }
        assert!(pipeline.is_idle());
        // Throttling is not a failure: a later error backs off from the base.
        pipeline.push("f");
        let later = now + wait * 2;
        assert_eq!(send_all(&mut pipeline, later, &mut id), vec![(9, "f")]);
        pipeline.on_answer(9, Answer::Retriable, later);
        assert_eq!(
            pipeline.backoff_until(),
            Some(later + Duration::from_millis(10))
        );
    }

    #[test]
    fn fatal_error_fails_only_that_batch_and_retries_the_rest() {
        let mut pipeline = pipeline(3);
        let now = Instant::now();
        for batch in ["a", "b", "c"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        send_all(&mut pipeline, now, &mut id);
        assert_eq!(
            pipeline.on_answer(1, Answer::Success, now),
            Effect::Delivered("a")
        );
        assert_eq!(
            pipeline.on_answer(2, Answer::Fatal, now),
            Effect::Failed("b")
        );
        // "c" fails because "b" did; it is resent, not failed.
        assert_eq!(pipeline.on_answer(3, Answer::Fatal, now), Effect::Pending);
        let until = pipeline.backoff_until().expect("c waits for a retry");
        assert_eq!(send_all(&mut pipeline, until, &mut id), vec![(4, "c")]);
    }

    #[test]
    fn fatal_error_alone_resumes_without_backoff() {
        let mut pipeline = pipeline(1);
        let now = Instant::now();
        pipeline.push("a");
        pipeline.push("b");
        let mut id = 0;
        send_all(&mut pipeline, now, &mut id);
        assert_eq!(
            pipeline.on_answer(1, Answer::Fatal, now),
            Effect::Failed("a")
        );
        assert_eq!(pipeline.backoff_until(), None);
        assert_eq!(send_all(&mut pipeline, now, &mut id), vec![(2, "b")]);
    }

    #[test]
    fn backoff_grows_with_consecutive_failures() {
        let mut pipeline = pipeline(1);
        let now = Instant::now();
        pipeline.push("a");
        let mut id = 0;
        send_all(&mut pipeline, now, &mut id);
        pipeline.on_answer(id, Answer::Retriable, now);
        let first = pipeline.backoff_until().expect("backoff") - now;
        let at = now + first;
        send_all(&mut pipeline, at, &mut id);
        pipeline.on_answer(id, Answer::Retriable, at);
        let second = pipeline.backoff_until().expect("backoff") - at;
        assert!(second > first, "{second:?} > {first:?}");
    }

    #[test]
    fn expiry_removes_only_queued_batches_from_the_front_keeping_order() {
        let mut pipeline = pipeline(1);
        let now = Instant::now();
        for batch in ["a", "b", "c", "d"] {
            pipeline.push(batch);
        }
        let mut id = 0;
        send_all(&mut pipeline, now, &mut id);
        // "a" is in flight; "b" and "c" are the oldest queued ones.
        let expired = pipeline.take_expired(|batch| *batch != "d");
        assert_eq!(expired, vec!["b", "c"], "in-flight a is not expired here");
        assert!(pipeline.take_expired(|_| false).is_empty());
        pipeline.on_answer(1, Answer::Success, now);
        assert_eq!(send_all(&mut pipeline, now, &mut id), vec![(2, "d")]);
    }

    #[test]
    fn expiry_looks_only_at_the_head() {
        let mut pipeline = pipeline(1);
        for batch in ["a", "b", "c"] {
            pipeline.push(batch);
        }
        let mut checked = Vec::new();
        let expired = pipeline.take_expired(|batch| {
            checked.push(*batch);
            false
        });
        assert!(expired.is_empty());
        assert_eq!(checked, vec!["a"], "a fresh head stops the check");
    }
}
