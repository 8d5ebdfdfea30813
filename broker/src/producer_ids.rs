//! Produce-side check that a batch's producer id was issued to the
//! principal sending it (ADR 0015, issue 13).
//!
//! - The key comes from a nameserver once (`GetProducerIdKey`, cluster
//!   principals only), fetched before the broker's first registration, so
//!   no partition is served before it is known; it is kept for the life of
//!   the process (the nameservers never change it).
//! - A batch with producer id −1 (not idempotent) is not checked.
//! - A mismatch is `NOT_AUTHORIZED`, audit-logged, and decided before the
//!   batch reaches the partition: nothing is appended and no idempotence
//!   state changes.
//! - Nothing is checked on takeover: batches in the log were checked when
//!   produced, and the new owner rebuilds idempotence state from them.

use crate::error::BrokerError;
use sluice_acl::{Principal, ProducerIdKey};
use sluice_proto::{ErrorCode, SluiceError};
use std::sync::OnceLock;

/// The cluster's producer-id key, once fetched.
#[derive(Debug, Default)]
pub struct ProducerIdVerifier {
    key: OnceLock<ProducerIdKey>,
}

impl ProducerIdVerifier {
    pub fn is_loaded(&self) -> bool {
        self.key.get().is_some()
    }

    /// Keeps `bytes` as the key (the first one set wins).
    pub fn load(&self, bytes: &[u8]) -> Result<(), BrokerError> {
        let key = ProducerIdKey::from_bytes(bytes).map_err(|error| {
            BrokerError::Internal(format!("the nameserver's producer-id key: {error}"))
        })?;
        let _ = self.key.set(key);
        Ok(())
    }

    /// A producer id for `counter` bound to `principal` (the transaction
    /// coordinator issuing one for a transactional id, ADR 0016 §1).
    pub fn issue(&self, counter: u64, principal: &Principal) -> Result<i64, BrokerError> {
        let Some(key) = self.key.get() else {
            return Err(BrokerError::Unavailable(
                "this broker has not loaded the producer-id key yet".into(),
            ));
        };
        key.issue(counter, principal)
            .map_err(|error| BrokerError::Unavailable(error.to_string()))
    }

    /// `Ok` when `producer_id` is −1 or was issued to `principal`.
    pub fn check(&self, producer_id: i64, principal: &Principal) -> Result<(), BrokerError> {
        if producer_id == -1 {
            return Ok(());
        }
        let Some(key) = self.key.get() else {
            return Err(BrokerError::Unavailable(
                "this broker has not loaded the producer-id key yet".into(),
            ));
        };
        key.verify(producer_id, principal).map_err(|error| {
            tracing::info!(target: sluice_service::AUDIT_TARGET, %principal, producer_id, "denied: producer id of another principal");
            BrokerError::Relayed(SluiceError::new(
                ErrorCode::NotAuthorized,
                format!("{error}: allocate a producer id of your own"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issued_principal_passes_and_non_idempotent_batches_are_free() {
        let bytes = [3u8; sluice_acl::PRODUCER_ID_KEY_BYTES];
        let alice = Principal::user("alice").expect("valid");
        let mallory = Principal::user("mallory").expect("valid");
        let verifier = ProducerIdVerifier::default();
        assert!(verifier.check(-1, &mallory).is_ok());
        let id = ProducerIdKey::from_bytes(&bytes)
            .expect("key")
            .issue(7, &alice)
            .expect("id");
        let unloaded = verifier.check(id, &alice).expect_err("no key yet");
        assert_eq!(unloaded.code(), ErrorCode::Unavailable);
        verifier.load(&bytes).expect("load");
        assert!(verifier.is_loaded());
        assert!(verifier.check(id, &alice).is_ok());
        let refused = verifier.check(id, &mallory).expect_err("not hers");
        assert_eq!(refused.code(), ErrorCode::NotAuthorized);
        assert!(verifier.check(id + 1, &alice).is_err(), "the next id");
        assert!(verifier.load(&[0; 5]).is_err());
    }
}
