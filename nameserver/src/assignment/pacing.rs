//! Spacing of reconcile rounds that move partitions between live brokers,
//! as a pure state (time passed in; the reconcile loop holds it).
//!
//! Rules:
//! - A round may make balance moves (up to `max_moves_per_reconcile`) only
//!   when at least `balance_interval_ms` passed since the last round that
//!   applied one; otherwise it may make none. Orphaned partitions are
//!   reassigned in every round regardless.
//! - Only a round that applied at least one balance move starts a new
//!   interval; a round that planned moves but lost every CAS does not.
//! - An interval of 0 spaces nothing: every round may move.
//! - A new assigner starts with no history: its first round may move.
//!
//! With at most one move per topic per round (`plan.rs`), a broker that
//! returns or joins gets at most one partition of each topic, and at most
//! `max_moves_per_reconcile` in all, per `balance_interval_ms`.

use std::time::Duration;
use tokio::time::Instant;

/// When the next balance moves may be made.
#[derive(Debug, Clone)]
pub struct BalancePacing {
    interval: Duration,
    last_moved_at: Option<Instant>,
}

impl BalancePacing {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_moved_at: None,
        }
    }

    /// How many balance moves a round starting at `now` may make.
    pub fn moves_allowed(&self, now: Instant, max_moves: usize) -> usize {
        let due = self
            .last_moved_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if due {
            max_moves
        } else {
            0
        }
    }

    /// When balance moves are next allowed (`None`: now). A reconcile loop
    /// that runs on events must still run a round then while the layout is
    /// not settled, or a returning broker stops halfway.
    pub fn next_move_at(&self) -> Option<Instant> {
        self.last_moved_at.map(|at| at + self.interval)
    }

    /// Records that a round ending at `now` applied `balance_moves` moves.
    pub fn record(&mut self, now: Instant, balance_moves: usize) {
        if balance_moves > 0 {
            self.last_moved_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(5_000);

    #[test]
    fn the_first_round_may_move() {
        let pacing = BalancePacing::new(INTERVAL);
        assert_eq!(pacing.moves_allowed(Instant::now(), 4), 4);
        assert_eq!(pacing.next_move_at(), None);
    }

    #[test]
    fn after_a_move_the_next_moves_wait_for_the_interval() {
        let start = Instant::now();
        let mut pacing = BalancePacing::new(INTERVAL);
        pacing.record(start, 2);
        assert_eq!(pacing.moves_allowed(start, 4), 0);
        assert_eq!(
            pacing.moves_allowed(start + INTERVAL - Duration::from_millis(1), 4),
            0
        );
        assert_eq!(pacing.moves_allowed(start + INTERVAL, 4), 4);
        assert_eq!(pacing.next_move_at(), Some(start + INTERVAL));
    }

    #[test]
    fn rounds_without_moves_start_no_interval() {
        let start = Instant::now();
        let mut pacing = BalancePacing::new(INTERVAL);
        pacing.record(start, 0);
        assert_eq!(pacing.moves_allowed(start, 4), 4);
        pacing.record(start, 1);
        // Rounds that moved nothing while waiting do not push it further.
        pacing.record(start + INTERVAL / 2, 0);
        assert_eq!(pacing.moves_allowed(start + INTERVAL, 4), 4);
    }

    #[test]
    fn a_zero_interval_spaces_nothing() {
        let start = Instant::now();
        let mut pacing = BalancePacing::new(Duration::ZERO);
        pacing.record(start, 3);
        assert_eq!(pacing.moves_allowed(start, 4), 4);
    }

    #[test]
    fn a_clock_reading_before_the_last_move_waits() {
        let start = Instant::now() + INTERVAL;
        let mut pacing = BalancePacing::new(INTERVAL);
        pacing.record(start, 1);
        assert_eq!(
            pacing.moves_allowed(start - Duration::from_millis(10), 4),
            0
        );
    }
}
