//! The lease table of the embedded store: grant, renew, remaining time and
//! which leases have expired. Pure: the time is passed in. Removing the
//! keys of an expired lease is the state's job ([`super::state::State`]);
//! the sweep that calls both lives in `mod.rs`.

use super::super::LeaseId;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct Lease {
    ttl_ms: u64,
    deadline: Instant,
}

/// Live leases by id, with the next id to hand out.
#[derive(Debug)]
pub(super) struct Leases {
    next_id: LeaseId,
    live: HashMap<LeaseId, Lease>,
}

impl Leases {
    /// An empty table whose first lease gets `next_id` (at least 1).
    pub(super) fn starting_at(next_id: LeaseId) -> Self {
        Self {
            next_id: next_id.max(1),
            live: HashMap::new(),
        }
    }

    /// The id the next grant will get (persisted so ids are not reused
    /// after a restart).
    pub(super) fn next_id(&self) -> LeaseId {
        self.next_id
    }

    pub(super) fn grant(&mut self, ttl_ms: u64, now: Instant) -> LeaseId {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        self.live.insert(
            id,
            Lease {
                ttl_ms,
                deadline: now + Duration::from_millis(ttl_ms),
            },
        );
        id
    }

    pub(super) fn contains(&self, id: LeaseId) -> bool {
        self.live.contains_key(&id)
    }

    /// Renews a live lease for its full TTL; `None` when it is gone.
    pub(super) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Option<u64> {
        let lease = self.live.get_mut(&id)?;
        lease.deadline = now + Duration::from_millis(lease.ttl_ms);
        Some(lease.ttl_ms)
    }

    /// Remaining time in milliseconds; `None` when the lease is gone.
    pub(super) fn remaining_ms(&self, id: LeaseId, now: Instant) -> Option<u64> {
        self.live.get(&id).map(|lease| {
            u64::try_from(lease.deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX)
        })
    }

    /// Removes the lease; whether it was live.
    pub(super) fn remove(&mut self, id: LeaseId) -> bool {
        self.live.remove(&id).is_some()
    }

    /// Removes every lease whose deadline is at or before `now` and
    /// returns their ids.
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<LeaseId> {
        let expired: Vec<LeaseId> = self
            .live
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.live.remove(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_at_its_deadline_unless_renewed() {
        let start = Instant::now();
        let mut leases = Leases::starting_at(7);
        let id = leases.grant(1_000, start);
        assert_eq!(id, 7);
        assert_eq!(leases.next_id(), 8);
        assert_eq!(leases.remaining_ms(id, start), Some(1_000));
        let later = start + Duration::from_millis(600);
        assert_eq!(leases.keep_alive(id, later), Some(1_000));
        // Renewed at 600 ms: alive at 1,500 ms, gone at 1,600 ms.
        assert!(leases
            .take_expired(start + Duration::from_millis(1_500))
            .is_empty());
        assert_eq!(
            leases.take_expired(start + Duration::from_millis(1_600)),
            vec![id]
        );
        assert!(!leases.contains(id));
        assert_eq!(leases.keep_alive(id, later), None);
        assert_eq!(leases.remaining_ms(id, later), None);
    }

    #[test]
    fn ids_start_at_one_and_removal_reports_liveness() {
        let now = Instant::now();
        let mut leases = Leases::starting_at(0);
        let id = leases.grant(10, now);
        assert_eq!(id, 1);
        assert!(leases.remove(id));
        assert!(!leases.remove(id));
    }
}
