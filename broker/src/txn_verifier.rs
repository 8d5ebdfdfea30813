//! Verification of a producer's first batch of a transaction at a
//! partition (ADR 0016 §3.3, KIP-890 "the add is the verification"): the
//! partition asks the transaction coordinator of the batch's transactional
//! id to add the partition to transaction `(pid, epoch)`, and appends the
//! producer's held batches only once that add is durable there.
//!
//! Stage 1 has no coordinator yet: the partition side is built and tested
//! against this trait, and [`AcceptingVerifier`] (every add accepted) is
//! what a broker with `[transactions] enabled = true` uses, for tests only;
//! production keeps `enabled = false` until the coordinator (stage 2) and
//! the SDK (stage 3) ship, so no transactional batch is accepted there.

use crate::error::BrokerError;
use futures::future::BoxFuture;

/// One add to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub topic: String,
    pub partition: u32,
}

/// Asks the transaction coordinator to add a partition to a transaction.
pub trait TxnVerifier: Send + Sync {
    /// Resolves once the coordinator durably recorded the partition in the
    /// transaction at that epoch, or with its refusal.
    fn verify(&self, verification: Verification) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// Accepts every verification: stage 1's stand-in for the coordinator,
/// for tests (see the module doc).
#[derive(Debug, Default)]
pub struct AcceptingVerifier;

impl TxnVerifier for AcceptingVerifier {
    fn verify(&self, _verification: Verification) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}
