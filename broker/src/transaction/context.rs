//! The fields of a `TransactionContext` (what joins a transaction besides
//! records: an offset commit, a subscription ack), checked at the edge: a
//! valid transactional id, a producer id that is not negative and an epoch
//! a transaction can have. Whether the caller may use them (ACL `Write` on
//! the id, the producer id issued to it) is checked by the callers.

use crate::BrokerError;
use sluice_proto::names::TransactionalId;
use sluice_proto::v1::TransactionContext;

/// The checked id, producer id and epoch of `context`.
pub(crate) fn checked_context(
    context: &TransactionContext,
) -> Result<(TransactionalId, i64, i16), BrokerError> {
    let id = TransactionalId::new(&context.transactional_id)
        .map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
    let epoch = i16::try_from(context.producer_epoch)
        .ok()
        .filter(|epoch| (0..i16::MAX).contains(epoch))
        .ok_or_else(|| {
            BrokerError::InvalidArgument(format!(
                "producer_epoch {} is outside 0..{}",
                context.producer_epoch,
                i16::MAX
            ))
        })?;
    if context.producer_id < 0 {
        return Err(BrokerError::InvalidArgument(format!(
            "producer_id {} is negative",
            context.producer_id
        )));
    }
    Ok((id, context.producer_id, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: &str, producer_id: i64, producer_epoch: i32) -> TransactionContext {
        TransactionContext {
            transactional_id: id.into(),
            producer_id,
            producer_epoch,
        }
    }

    #[test]
    fn fields_are_checked_at_their_bounds() {
        let (id, producer_id, epoch) = checked_context(&context("t", 0, 0)).unwrap();
        assert_eq!((id.as_str(), producer_id, epoch), ("t", 0, 0));
        assert!(checked_context(&context("t", i64::MAX, i32::from(i16::MAX) - 1)).is_ok());
        assert!(checked_context(&context("t", -1, 0)).is_err());
        assert!(checked_context(&context("t", 0, -1)).is_err());
        assert!(checked_context(&context("t", 0, i32::from(i16::MAX))).is_err());
        assert!(checked_context(&context("t", 0, i32::MAX)).is_err());
        assert!(checked_context(&context("", 0, 0)).is_err());
        assert!(checked_context(&context(&"x".repeat(100_000), 0, 0)).is_err());
    }
}
