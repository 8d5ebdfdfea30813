//! Which node sessions this nameserver watches, and which of them went
//! silent for `session_timeout_ms` (ADR 0014). A pure state machine: time
//! is passed in; the IO edge (`handler::sessions`) reads and writes the
//! node keys and acts on the verdicts.
//!
//! **Who may end a session.** Only the nameserver that made the last write
//! to the node key (registration, claim, load update) may delete it: the
//! deletion is a transaction conditional on the key's mod revision as that
//! nameserver wrote it. A nameserver that receives a heartbeat for a
//! session whose key it did not write last (untracked, or the revision it
//! reads differs from the one it wrote) *claims* the session by rewriting
//! the key, conditional on the revision it read, before it answers. So
//! whichever nameserver a node heartbeats through holds the key's current
//! revision, and a nameserver the node left can no longer delete it: its
//! compare fails and it forgets the session.
//!
//! **A metadata outage pauses the clocks.** Nodes cannot renew while
//! the store is unavailable, so when an ending fails for that reason every
//! session gets a new timeout ([`SessionMonitor::paused`]).
//!
//! **No heartbeat is answered for a session being ended.** Once
//! [`SessionMonitor::due`] picked a session, heartbeats for it get
//! [`HeartbeatVerdict::Expired`] until the IO finished, so a heartbeat
//! can never be answered "renewed" after the timeout was decided.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// What to do with one heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatVerdict {
    /// This nameserver holds the key's current revision: renewed.
    Renewed,
    /// Someone else wrote the key last (or nobody here tracks it): rewrite
    /// it, conditional on the revision read, then record the write with
    /// [`SessionMonitor::wrote`].
    Claim,
    /// The session is being ended here: answer `SESSION_EXPIRED`.
    Expired,
}

/// A session to end: delete `key` if its mod revision is still
/// `revision`, then revoke the lease `session`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub key: String,
    pub session: u64,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    session: u64,
    /// When this nameserver last renewed the session (a heartbeat it
    /// answered, or its own write of the key).
    renewed_at: Instant,
    /// Mod revision of this nameserver's last write of the key.
    revision: i64,
    /// Picked by `due`; heartbeats are refused until the IO finished.
    ending: bool,
}

/// The sessions this nameserver watches. Holds one entry per node key that
/// heartbeats here; an entry goes when its session ends or moves to
/// another nameserver.
#[derive(Debug)]
pub struct SessionMonitor {
    timeout: Duration,
    sessions: HashMap<String, Tracked>,
}

impl SessionMonitor {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sessions: HashMap::new(),
        }
    }

    /// A heartbeat of `session`, whose key this request read at `revision`
    /// (holding this session).
    pub fn heartbeat(
        &mut self,
        key: &str,
        session: u64,
        revision: i64,
        now: Instant,
    ) -> HeartbeatVerdict {
        match self.sessions.get_mut(key) {
            Some(tracked) if tracked.session == session && tracked.ending => {
                HeartbeatVerdict::Expired
            }
            Some(tracked) if tracked.session == session && tracked.revision == revision => {
                tracked.renewed_at = now;
                HeartbeatVerdict::Renewed
            }
            _ => HeartbeatVerdict::Claim,
        }
    }

    /// A heartbeat of `session` arrived (before the store renewed it, which
    /// may fail while the store is unavailable). The node is alive and
    /// talks to this nameserver, so this nameserver does not end the
    /// session for silence meanwhile; ending later is always safe (the
    /// node fences itself by its own last *successful* heartbeat), and a
    /// session that moved elsewhere is unaffected (this nameserver's
    /// delete fails).
    pub fn heard(&mut self, key: &str, session: u64, now: Instant) {
        if let Some(tracked) = self.sessions.get_mut(key) {
            if tracked.session == session && !tracked.ending {
                tracked.renewed_at = now;
            }
        }
    }

    /// The metadata store did not answer an ending: an outage pauses
    /// every session's silence clock (nodes cannot renew meanwhile, and
    /// ending later is always safe), and sessions being ended are picked
    /// again only after a new timeout.
    pub fn paused(&mut self, now: Instant) {
        for tracked in self.sessions.values_mut() {
            tracked.renewed_at = tracked.renewed_at.max(now);
            tracked.ending = false;
        }
    }

    /// This nameserver wrote `key` for `session` at `revision` (register,
    /// claim, load update): it holds the session now.
    pub fn wrote(&mut self, key: &str, session: u64, revision: i64, now: Instant) {
        self.sessions.insert(
            key.to_string(),
            Tracked {
                session,
                renewed_at: now,
                revision,
                ending: false,
            },
        );
    }

    /// Sessions silent for the timeout, and those whose ending failed
    /// before (metadata unavailable): marked ending, to be ended by the IO
    /// edge, which reports back with [`Self::finished`].
    pub fn due(&mut self, now: Instant) -> Vec<Expiry> {
        let mut due: Vec<Expiry> = self
            .sessions
            .iter_mut()
            .filter(|(_, tracked)| {
                tracked.ending || now.saturating_duration_since(tracked.renewed_at) >= self.timeout
            })
            .map(|(key, tracked)| {
                tracked.ending = true;
                Expiry {
                    key: key.clone(),
                    session: tracked.session,
                    revision: tracked.revision,
                }
            })
            .collect();
        due.sort_by(|left, right| left.key.cmp(&right.key));
        due
    }

    /// The IO for `expiry` finished: the key was deleted, or its compare
    /// failed (another nameserver claimed it, or the node registered
    /// again). Either way this nameserver no longer watches it — unless it
    /// wrote the key again meanwhile (a claim), which it keeps.
    pub fn finished(&mut self, expiry: &Expiry) {
        let same = self.sessions.get(&expiry.key).is_some_and(|tracked| {
            tracked.session == expiry.session && tracked.revision == expiry.revision
        });
        if same {
            self.sessions.remove(&expiry.key);
        }
    }

    /// The node deregistered, or a heartbeat found the key gone or holding
    /// another session.
    pub fn forget(&mut self, key: &str, session: u64) {
        if self
            .sessions
            .get(key)
            .is_some_and(|tracked| tracked.session == session)
        {
            self.sessions.remove(key);
        }
    }

    /// How long `session` under `key` has been silent here (since its
    /// last heartbeat, this nameserver's write, or a metadata outage);
    /// `None` when another nameserver holds it.
    pub fn silent_for(&self, key: &str, session: u64, now: Instant) -> Option<Duration> {
        self.sessions
            .get(key)
            .filter(|tracked| tracked.session == session)
            .map(|tracked| now.saturating_duration_since(tracked.renewed_at))
    }

    /// How many sessions are watched here.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests;
