//! When a connection is closed for want of activity: a handshake not done
//! within the handshake timeout, or no open stream for the idle timeout.
//! A pure function of the connection's state and the time.

use crate::handshake::Handshake;
use std::time::Duration;
use tokio::time::Instant;

/// The timeouts of `[connections]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub handshake: Duration,
    /// `None`: idle connections are never closed.
    pub idle: Option<Duration>,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No HTTP/2 handshake within the handshake timeout.
    Handshake,
    /// Not HTTP/2.
    NotHttp2,
    /// No open stream for the idle timeout.
    Idle,
    /// Over its principal's connection quota, and told so.
    OverQuota,
    /// Its client certificate is no longer trusted (`connection_trust.rs`).
    Revoked,
}

/// What to do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep it; look again at this instant (`None`: nothing to look at).
    KeepUntil(Option<Instant>),
    Close(CloseReason),
}

/// The state of one connection the verdict depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionActivity {
    pub accepted_at: Instant,
    pub handshake: Handshake,
    pub open_streams: usize,
    /// Since when no stream has been open (the acceptance, at first).
    pub idle_since: Instant,
}

pub fn verdict(timeouts: Timeouts, activity: ConnectionActivity, now: Instant) -> Verdict {
    let deadline = match activity.handshake {
        Handshake::Invalid => return Verdict::Close(CloseReason::NotHttp2),
        Handshake::InProgress => activity.accepted_at + timeouts.handshake,
        Handshake::Done => match timeouts.idle {
            None => return Verdict::KeepUntil(None),
            // Looked at again after a whole timeout: the streams may all
            // have ended by then, and the idle time counts from that.
            Some(idle) if activity.open_streams > 0 => return Verdict::KeepUntil(Some(now + idle)),
            Some(idle) => activity.idle_since + idle,
        },
    };
    if now < deadline {
        return Verdict::KeepUntil(Some(deadline));
    }
    Verdict::Close(match activity.handshake {
        Handshake::InProgress => CloseReason::Handshake,
        _ => CloseReason::Idle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const TIMEOUTS: Timeouts = Timeouts {
        handshake: Duration::from_secs(10),
        idle: Some(Duration::from_secs(60)),
    };

    fn activity(start: Instant, handshake: Handshake, open_streams: usize) -> ConnectionActivity {
        ConnectionActivity {
            accepted_at: start,
            handshake,
            open_streams,
            idle_since: start,
        }
    }

    #[test]
    fn an_unfinished_handshake_is_closed_at_its_timeout() {
        let start = Instant::now();
        let pending = activity(start, Handshake::InProgress, 0);
        assert_eq!(
            verdict(TIMEOUTS, pending, start + 9 * SECOND),
            Verdict::KeepUntil(Some(start + 10 * SECOND))
        );
        assert_eq!(
            verdict(TIMEOUTS, pending, start + 10 * SECOND),
            Verdict::Close(CloseReason::Handshake)
        );
        let invalid = activity(start, Handshake::Invalid, 0);
        assert_eq!(
            verdict(TIMEOUTS, invalid, start),
            Verdict::Close(CloseReason::NotHttp2)
        );
    }

    #[test]
    fn a_connection_without_streams_is_closed_after_the_idle_timeout() {
        let start = Instant::now();
        let mut idle = activity(start, Handshake::Done, 0);
        assert_eq!(
            verdict(TIMEOUTS, idle, start + 59 * SECOND),
            Verdict::KeepUntil(Some(start + 60 * SECOND))
        );
        assert_eq!(
            verdict(TIMEOUTS, idle, start + 60 * SECOND),
            Verdict::Close(CloseReason::Idle)
        );
        // Its last stream ended later: idle from then.
        idle.idle_since = start + 30 * SECOND;
        assert_eq!(
            verdict(TIMEOUTS, idle, start + 60 * SECOND),
            Verdict::KeepUntil(Some(start + 90 * SECOND))
        );
    }

    #[test]
    fn open_streams_keep_a_connection_however_long() {
        let start = Instant::now();
        let busy = activity(start, Handshake::Done, 1);
        let now = start + 3600 * SECOND;
        assert_eq!(
            verdict(TIMEOUTS, busy, now),
            Verdict::KeepUntil(Some(now + 60 * SECOND))
        );
    }

    #[test]
    fn without_an_idle_timeout_only_the_handshake_is_timed() {
        let start = Instant::now();
        let timeouts = Timeouts {
            idle: None,
            ..TIMEOUTS
        };
        let idle = activity(start, Handshake::Done, 0);
        assert_eq!(
            verdict(timeouts, idle, start + 3600 * SECOND),
            Verdict::KeepUntil(None)
        );
        let pending = activity(start, Handshake::InProgress, 0);
        assert_eq!(
            verdict(timeouts, pending, start + 10 * SECOND),
            Verdict::Close(CloseReason::Handshake)
        );
    }
}
