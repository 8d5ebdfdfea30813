//! Producer ids a client cannot forge for another principal (issue 13,
//! ADR 0015).
//!
//! Record batches carry their producer id, so every reader learns it; the
//! id alone must not let another principal write as that producer (an
//! attacker that pre-writes a victim's next id at sequence 0 would make the
//! victim's first batch a "duplicate" that is never stored).
//!
//! An id is `counter << 32 | tag`: `counter` is the nameserver's etcd
//! counter (31 bits, so the id stays a positive `i64`), and `tag` is the
//! first 32 bits of HMAC-SHA256(key, "sluice producer id v1" ‖ counter as
//! 8 big-endian bytes ‖ principal). The key is 256 random bits the
//! nameserver keeps in etcd and brokers fetch once; a broker verifies on
//! produce that a batch's id was issued to the principal sending it.
//!
//! Rules and why:
//! - Stateless: no per-producer record anywhere, so a broker taking a
//!   partition over (which rebuilds idempotence state from the log tail)
//!   and a restarted nameserver need nothing but the key.
//! - 32 tag bits: the attacker does not choose the tag it is checked
//!   against (it is fixed by the victim's counter and the attacker's own
//!   principal), so forging a given victim's id succeeds with probability
//!   2^-32, and each failed try is refused and audit-logged.
//! - At most 2^31 ids per cluster ([`MAX_PRODUCER_ID_COUNTER`]); allocation
//!   beyond is refused, never wrapped (a reused counter would let a new
//!   producer inherit an old one's sequences).
//! - Pure: no IO, no randomness here (the nameserver draws the key).

use crate::model::Principal;
use ring::hmac;

/// Bytes of the producer-id key.
pub const PRODUCER_ID_KEY_BYTES: usize = 32;
/// Bits of an id's tag (the low bits).
pub const PRODUCER_ID_TAG_BITS: u32 = 32;
/// The largest counter an id can carry: 2^31 − 1 (the id is a positive
/// signed 64-bit number).
pub const MAX_PRODUCER_ID_COUNTER: u64 = (1 << (63 - PRODUCER_ID_TAG_BITS)) - 1;

const DOMAIN: &[u8] = b"sluice producer id v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerIdError {
    #[error("a producer-id key must be {PRODUCER_ID_KEY_BYTES} bytes, not {0}")]
    KeyLength(usize),
    #[error("producer ids are exhausted: {MAX_PRODUCER_ID_COUNTER} + 1 have been allocated")]
    Exhausted,
    #[error("producer id {producer_id} was not issued to {principal}")]
    NotIssuedTo { producer_id: i64, principal: String },
}

/// The cluster's producer-id key. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ProducerIdKey(hmac::Key);

impl std::fmt::Debug for ProducerIdKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ProducerIdKey(..)")
    }
}

impl ProducerIdKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProducerIdError> {
        if bytes.len() != PRODUCER_ID_KEY_BYTES {
            return Err(ProducerIdError::KeyLength(bytes.len()));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    fn tag(&self, counter: u64, principal: &Principal) -> u32 {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(DOMAIN);
        context.update(&counter.to_be_bytes());
        context.update(principal.as_str().as_bytes());
        let mac = context.sign();
        let mut first = [0u8; 4];
        first.copy_from_slice(&mac.as_ref()[..4]);
        u32::from_be_bytes(first)
    }

    /// The id of the `counter`th producer, issued to `principal`.
    pub fn issue(&self, counter: u64, principal: &Principal) -> Result<i64, ProducerIdError> {
        if counter > MAX_PRODUCER_ID_COUNTER {
            return Err(ProducerIdError::Exhausted);
        }
        let id = (counter << PRODUCER_ID_TAG_BITS) | u64::from(self.tag(counter, principal));
        i64::try_from(id).map_err(|_| ProducerIdError::Exhausted)
    }

    /// `Ok` when `producer_id` was issued to `principal`.
    pub fn verify(&self, producer_id: i64, principal: &Principal) -> Result<(), ProducerIdError> {
        let not_issued = || ProducerIdError::NotIssuedTo {
            producer_id,
            principal: principal.to_string(),
        };
        let id = u64::try_from(producer_id).map_err(|_| not_issued())?;
        let counter = id >> PRODUCER_ID_TAG_BITS;
        // A single 32-bit comparison: no early exit to time.
        if self.tag(counter, principal) == (id & u64::from(u32::MAX)) as u32 {
            Ok(())
        } else {
            Err(not_issued())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> ProducerIdKey {
        ProducerIdKey::from_bytes(&[byte; PRODUCER_ID_KEY_BYTES]).expect("32 bytes")
    }

    fn user(name: &str) -> Principal {
        Principal::user(name).expect("valid")
    }

    #[test]
    fn an_id_verifies_only_for_its_principal_and_key() {
        let (alice, mallory) = (user("alice"), user("mallory"));
        for counter in [0, 1, 2, 1000, MAX_PRODUCER_ID_COUNTER] {
            let id = key(7).issue(counter, &alice).expect("issued");
            assert!(id >= 0);
            assert_eq!((id as u64) >> PRODUCER_ID_TAG_BITS, counter);
            assert!(key(7).verify(id, &alice).is_ok());
            assert!(matches!(
                key(7).verify(id, &mallory),
                Err(ProducerIdError::NotIssuedTo { .. })
            ));
            assert!(key(8).verify(id, &alice).is_err(), "another key");
        }
    }

    #[test]
    fn neighbouring_and_guessed_ids_are_refused() {
        let alice = user("alice");
        let id = key(1).issue(5, &alice).expect("issued");
        // The attack of issue 13: the next id in sequence, or the next
        // counter with the tag of this one.
        for guess in [id + 1, id - 1, id + (1 << 32), 5 << 32, -1, -2, i64::MAX] {
            assert!(key(1).verify(guess, &alice).is_err(), "{guess}");
        }
        assert_ne!(
            key(1).issue(5, &user("bob")).expect("issued"),
            id,
            "another principal's id differs"
        );
    }

    #[test]
    fn exhaustion_and_bad_keys_are_refused() {
        assert_eq!(
            key(1).issue(MAX_PRODUCER_ID_COUNTER + 1, &user("alice")),
            Err(ProducerIdError::Exhausted)
        );
        assert_eq!(MAX_PRODUCER_ID_COUNTER, (1 << 31) - 1);
        assert!(matches!(
            ProducerIdKey::from_bytes(&[0; 31]),
            Err(ProducerIdError::KeyLength(31))
        ));
        assert!(
            !format!("{:?}", key(9)).contains('9'),
            "never shows the key"
        );
    }
}
