//! The IO edge of [`SessionMonitor`] (ADR 0014): a heartbeat's verdict
//! and claim, recording this nameserver's writes of node keys, and ending
//! sessions that went silent for `session_timeout_ms` — deleting the node
//! key in a transaction conditional on the mod revision this nameserver
//! wrote, then revoking the lease.

use super::{lease_of, NameServerHandler};
use crate::error::NameServerError;
use crate::metadata::{Compare, KeyValue, MetadataError, Put, Transaction};
use crate::session_monitor::{Expiry, HeartbeatVerdict, SessionMonitor};
use sluice_proto::v1::NodeInfo;
use std::sync::MutexGuard;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for the metadata store to end one session; beyond it the
/// store counts as unavailable (an outage pauses session clocks).
const END_ATTEMPT_TIMEOUT_MS: u64 = 500;

impl NameServerHandler {
    fn monitor(&self) -> MutexGuard<'_, SessionMonitor> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This nameserver wrote `key` for `session` at `revision`.
    pub(super) fn session_written(&self, key: &str, session: u64, revision: i64) {
        self.monitor().wrote(key, session, revision, Instant::now());
    }

    /// A heartbeat arrived but the metadata store could not renew it.
    pub(super) fn session_heard(&self, key: &str, session: u64) {
        self.monitor().heard(key, session, Instant::now());
    }

    /// How long ago this nameserver last heard `session` (None: another
    /// nameserver holds it).
    pub(super) fn session_silent_for(&self, key: &str, session: u64) -> Option<Duration> {
        self.monitor().silent_for(key, session, Instant::now())
    }

    pub(super) fn session_gone(&self, key: &str, session: u64) {
        self.monitor().forget(key, session);
    }

    /// Renews `session` in the monitor, claiming it first when another
    /// nameserver (or nobody here) wrote its key last. `entry` is the key
    /// as this heartbeat read it. Returns the key's mod revision after.
    pub(super) async fn renew_in_monitor(
        &self,
        key: &str,
        session: u64,
        entry: &KeyValue,
    ) -> Result<i64, NameServerError> {
        let verdict = self
            .monitor()
            .heartbeat(key, session, entry.mod_revision, Instant::now());
        match verdict {
            HeartbeatVerdict::Renewed => Ok(entry.mod_revision),
            HeartbeatVerdict::Expired => Err(NameServerError::SessionExpired(session)),
            HeartbeatVerdict::Claim => self.claim(key, session, entry).await,
        }
    }

    /// Rewrites the node key unchanged, conditional on the revision read,
    /// so that a nameserver the node heartbeated through before can no
    /// longer end the session.
    async fn claim(
        &self,
        key: &str,
        session: u64,
        entry: &KeyValue,
    ) -> Result<i64, NameServerError> {
        let transaction = Transaction {
            compares: vec![Compare::ModRevisionEquals(
                key.to_string(),
                entry.mod_revision,
            )],
            puts: vec![Put {
                key: key.to_string(),
                value: entry.value.clone(),
                lease: Some(lease_of(session)),
            }],
            deletes: Vec::new(),
        };
        match self.store.commit_at(transaction).await {
            Ok(Some(revision)) => {
                self.session_written(key, session, revision);
                tracing::debug!(key, session, revision, "session claimed");
                Ok(revision)
            }
            // Deleted (ended) or rewritten meanwhile: the next heartbeat
            // finds out which.
            Ok(None) => Err(NameServerError::Conflict(format!(
                "{key} changed while claiming session {session}"
            ))),
            Err(MetadataError::Conflict(_)) => Err(NameServerError::SessionExpired(session)),
            Err(error) => Err(error.into()),
        }
    }

    /// Ends every session silent for the timeout that this nameserver may
    /// end; called every `session_check_interval_ms`.
    pub async fn end_silent_sessions(&self) {
        let due = self.monitor().due(Instant::now());
        for expiry in due {
            let attempt = Duration::from_millis(END_ATTEMPT_TIMEOUT_MS);
            let ended = match tokio::time::timeout(attempt, self.end_session(&expiry)).await {
                Ok(ended) => ended,
                Err(_) => Err(MetadataError::Unavailable(format!(
                    "ending a session took over {END_ATTEMPT_TIMEOUT_MS} ms"
                ))),
            };
            match ended {
                Ok(ended) => {
                    if ended {
                        tracing::info!(
                            key = expiry.key,
                            session = expiry.session,
                            timeout_ms = self.config.session_timeout_ms,
                            "session timed out; ended"
                        );
                    } else {
                        tracing::debug!(
                            key = expiry.key,
                            session = expiry.session,
                            "silent session moved to another nameserver or ended"
                        );
                    }
                    self.monitor().finished(&expiry);
                }
                // Nodes could not renew either: every session gets a new
                // timeout, and this one is tried again after it.
                Err(error) => {
                    tracing::warn!(%error, key = expiry.key, "cannot end a timed-out session; metadata unavailable, session clocks paused");
                    self.monitor().paused(Instant::now());
                    return;
                }
            }
        }
    }

    /// Deletes the key if this nameserver still holds its revision, then
    /// revokes the lease; whether the key was deleted.
    async fn end_session(&self, expiry: &Expiry) -> Result<bool, MetadataError> {
        // The node as this nameserver wrote it, recorded as down in the
        // same transaction (issue 15: `cluster status` names it).
        let down = self
            .store
            .get(&expiry.key)
            .await?
            .filter(|entry| entry.mod_revision == expiry.revision)
            .and_then(|entry| crate::keys::decode::<NodeInfo>(&entry.key, &entry.value).ok())
            .map(|info| {
                super::down_nodes::down_node_put(
                    &info,
                    sluice_proto::now_unix_ms(),
                    self.config.session_timeout_ms,
                )
            });
        let transaction = Transaction {
            compares: vec![Compare::ModRevisionEquals(
                expiry.key.clone(),
                expiry.revision,
            )],
            puts: down.into_iter().collect(),
            deletes: vec![expiry.key.clone()],
        };
        if self.store.commit_at(transaction).await?.is_none() {
            return Ok(false);
        }
        self.forget_load(&expiry.key);
        // The key is gone, which is what the assigner looks at; a lease
        // that survives a failed revoke only ends later by its TTL.
        if let Err(error) = self.store.revoke(lease_of(expiry.session)).await {
            tracing::warn!(%error, key = expiry.key, "could not revoke an ended session's lease");
        }
        Ok(true)
    }
}
