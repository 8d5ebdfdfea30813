//! Verification of a producer's first batch of a transaction at a
//! partition (ADR 0016 §3.3, KIP-890 "the add is the verification"): the
//! partition asks the transaction coordinator of the batch's transactional
//! id to add the partition to transaction `(pid, epoch)`, and appends the
//! producer's held batches only once that add is durable there.
//!
//! The coordinators' verifier is `transaction/verifier.rs`, used when
//! `[transactions] enabled`; with transactions off no transactional batch
//! reaches verification (produce refuses it first), and
//! [`DisabledVerifier`] refuses anything that would.

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
    /// Empty for the partition's log; else the subscription whose
    /// acknowledgements join the transaction (ADR 0016 §6).
    pub subscription: String,
}

/// Asks the transaction coordinator to add a partition to a transaction.
pub trait TxnVerifier: Send + Sync {
    /// Resolves once the coordinator durably recorded the partition in the
    /// transaction at that epoch, or with its refusal.
    fn verify(&self, verification: Verification) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// Refuses every verification: transactions are off on this broker.
#[derive(Debug, Default)]
pub struct DisabledVerifier;

impl TxnVerifier for DisabledVerifier {
    fn verify(&self, _verification: Verification) -> BoxFuture<'static, Result<(), BrokerError>> {
        Box::pin(async {
            Err(BrokerError::InvalidArgument(
                "transactions are not enabled on this broker ([transactions] enabled = false)"
                    .into(),
            ))
        })
    }
}
