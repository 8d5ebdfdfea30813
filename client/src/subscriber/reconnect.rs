//! What a subscription stream does after it ended with an error: reopen
//! (after refreshing routes and a backoff) or tell the application. Pure.

use crate::cluster::backoff;
use crate::ClientError;
use sluice_proto::ErrorCode;
use std::time::Duration;

/// The decision after one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reaction {
    /// Refresh the topic's routes before reopening (the owner may have
    /// moved).
    pub refresh_routes: bool,
    /// Report the error to the application (it cannot be cured by
    /// retrying: a missing subscription, a busy exclusive partition, a
    /// refused argument). The stream is still reopened, after
    /// `delay`, in case an operator fixes the cause.
    pub surface: bool,
    /// Wait this long before reopening.
    pub delay: Duration,
}

/// Failures since the stream last opened.
#[derive(Debug, Clone)]
pub(crate) struct ReconnectState {
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    consecutive_failures: u32,
    /// The code last surfaced, so a stream that keeps failing the same way
    /// reports it once rather than on every attempt.
    surfaced: Option<ErrorCode>,
}

impl ReconnectState {
    pub fn new(backoff_initial_ms: u64, backoff_max_ms: u64) -> Self {
        Self {
            backoff_initial_ms: backoff_initial_ms.max(1),
            backoff_max_ms,
            consecutive_failures: 0,
            surfaced: None,
        }
    }

    /// The stream opened: the next failure starts the backoff over.
    pub fn opened(&mut self) {
        self.consecutive_failures = 0;
        self.surfaced = None;
    }

    /// Whether an error is one that reopening cures (owner moved, broker
    /// unavailable or shutting down, connection lost).
    pub fn is_retriable(error: &ClientError) -> bool {
        error.is_retriable() || error.needs_route_refresh()
    }

    /// The stream was ended because the partition moved: the new owner
    /// is opened at once, and its failures back off from the start.
    pub fn moved(&mut self) {
        self.consecutive_failures = 0;
    }

    pub fn failed(&mut self, error: &ClientError) -> Reaction {
        let attempt = self.consecutive_failures;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if Self::is_retriable(error) {
            return Reaction {
                refresh_routes: error.needs_route_refresh(),
                surface: false,
                delay: backoff(attempt, self.backoff_initial_ms, self.backoff_max_ms),
            };
        }
        let code = error.code().unwrap_or(ErrorCode::Internal);
        let surface = self.surfaced != Some(code);
        self.surfaced = Some(code);
        Reaction {
            refresh_routes: false,
            surface,
            // Nobody can fix these quickly: retry slowly.
            delay: Duration::from_millis(self.backoff_max_ms.max(self.backoff_initial_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::SluiceError;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server(SluiceError::new(code, "test"))
    }

    #[test]
    fn a_move_starts_the_backoff_over() {
        let mut state = ReconnectState::new(100, 1000);
        for _ in 0..4 {
            state.failed(&server(ErrorCode::Unavailable));
        }
        assert!(state.failed(&server(ErrorCode::Unavailable)).delay > Duration::from_millis(100));
        // The stream moved to a new owner: its first refusal (still taking
        // over) waits only the initial backoff.
        state.moved();
        assert_eq!(
            state.failed(&server(ErrorCode::Unavailable)).delay,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn owner_changes_reopen_with_growing_backoff() {
        let mut state = ReconnectState::new(100, 1000);
        for code in [
            ErrorCode::NotOwner,
            ErrorCode::Unavailable,
            ErrorCode::ShuttingDown,
            ErrorCode::UnknownPartition,
        ] {
            let reaction = state.failed(&server(code));
            assert!(reaction.refresh_routes, "{code:?}");
            assert!(!reaction.surface, "{code:?}");
        }
        assert_eq!(
            state.failed(&server(ErrorCode::NotOwner)).delay,
            Duration::from_millis(1000)
        );
        state.opened();
        assert_eq!(
            state.failed(&server(ErrorCode::NotOwner)).delay,
            Duration::from_millis(100)
        );
        let transport = ClientError::Transport {
            address: "a".into(),
            message: "refused".into(),
        };
        let reaction = state.failed(&transport);
        assert!(reaction.refresh_routes && !reaction.surface);
        assert_eq!(reaction.delay, Duration::from_millis(200));
    }

    #[test]
    fn application_errors_are_surfaced_once_per_streak() {
        let mut state = ReconnectState::new(100, 5000);
        for code in [
            ErrorCode::UnknownSubscription,
            ErrorCode::ConsumerBusy,
            ErrorCode::InvalidArgument,
        ] {
            assert!(!ReconnectState::is_retriable(&server(code)));
        }
        let first = state.failed(&server(ErrorCode::ConsumerBusy));
        assert!(first.surface && !first.refresh_routes);
        assert_eq!(first.delay, Duration::from_millis(5000));
        assert!(!state.failed(&server(ErrorCode::ConsumerBusy)).surface);
        assert!(
            state
                .failed(&server(ErrorCode::UnknownSubscription))
                .surface
        );
        state.opened();
        assert!(
            state
                .failed(&server(ErrorCode::UnknownSubscription))
                .surface
        );
    }
}
