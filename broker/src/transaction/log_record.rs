//! The transaction-log record (ADR 0016 §2.1): key = the UTF-8
//! transactional id (the compaction key), value = protobuf
//! [`TransactionLogValue`] holding the whole state of that id, or no value
//! (a tombstone: the id expired). Replaying a log partition in order and
//! keeping the last record per key rebuilds every id's state.
//!
//! Decoding reads bytes from disk written by any earlier broker, so it
//! checks every field against the ranges the state machine keeps and never
//! panics; a record that fails is reported and skipped by the replay.

use super::state::{EndReason, Participant, TxnMeta, TxnState, MAX_EPOCH};
use bytes::Bytes;
use prost::Message;
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};
use sluice_proto::names::{SubscriptionName, TopicName, TransactionalId};
use sluice_proto::v1::{
    TransactionEndReason, TransactionLogValue, TransactionParticipant, TransactionState,
};
use std::collections::BTreeSet;

/// The value format written by this broker.
pub const VERSION: u32 = 1;
/// Most participants a decoded record may hold: above any configurable
/// `max_participants_per_transaction`, so a record this broker wrote always
/// decodes, and a corrupt count cannot make the replay allocate without
/// bound.
pub const MAX_RECORD_PARTICIPANTS: usize = 100_000;
/// Longest timeout a record may hold, in milliseconds (the upper bound of
/// `[transactions] max_timeout_ms`).
pub const MAX_RECORD_TIMEOUT_MS: u64 = 3_600_000;
/// Longest principal name a record may hold, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 1_024;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogRecordError {
    #[error("transaction log record has no key")]
    MissingKey,
    #[error("transaction log record key is not a valid transactional id: {0}")]
    BadKey(String),
    #[error("transaction log value does not decode: {0}")]
    Undecodable(String),
    #[error("transaction log value has version {0}; this broker reads {VERSION}")]
    UnknownVersion(u32),
    #[error("transaction log value field {field} is {value}, outside {range}")]
    OutOfRange {
        field: &'static str,
        value: String,
        range: &'static str,
    },
    #[error("transaction log value has a bad participant: {0}")]
    BadParticipant(String),
}

fn state_to_proto(state: TxnState) -> TransactionState {
    match state {
        TxnState::Empty => TransactionState::Empty,
        TxnState::Ongoing => TransactionState::Ongoing,
        TxnState::Prepare { commit: true } => TransactionState::PrepareCommit,
        TxnState::Prepare { commit: false } => TransactionState::PrepareAbort,
        TxnState::Complete { commit: true } => TransactionState::CompleteCommit,
        TxnState::Complete { commit: false } => TransactionState::CompleteAbort,
    }
}

fn state_from_proto(value: i32) -> Option<TxnState> {
    Some(match TransactionState::try_from(value).ok()? {
        TransactionState::Unspecified => return None,
        TransactionState::Empty => TxnState::Empty,
        TransactionState::Ongoing => TxnState::Ongoing,
        TransactionState::PrepareCommit => TxnState::Prepare { commit: true },
        TransactionState::PrepareAbort => TxnState::Prepare { commit: false },
        TransactionState::CompleteCommit => TxnState::Complete { commit: true },
        TransactionState::CompleteAbort => TxnState::Complete { commit: false },
    })
}

pub fn reason_to_proto(reason: EndReason) -> TransactionEndReason {
    match reason {
        EndReason::Client => TransactionEndReason::Client,
        EndReason::Timeout => TransactionEndReason::Timeout,
        EndReason::Fenced => TransactionEndReason::Fenced,
        EndReason::Takeover => TransactionEndReason::Takeover,
        EndReason::Admin => TransactionEndReason::Admin,
    }
}

fn reason_from_proto(value: i32) -> Option<EndReason> {
    Some(match TransactionEndReason::try_from(value).ok()? {
        TransactionEndReason::Unspecified => return None,
        TransactionEndReason::Client => EndReason::Client,
        TransactionEndReason::Timeout => EndReason::Timeout,
        TransactionEndReason::Fenced => EndReason::Fenced,
        TransactionEndReason::Takeover => EndReason::Takeover,
        TransactionEndReason::Admin => EndReason::Admin,
    })
}

pub fn participant_to_proto(participant: &Participant) -> TransactionParticipant {
    TransactionParticipant {
        topic: participant.topic.clone(),
        partition: participant.partition,
        subscription: participant.subscription.clone(),
    }
}

/// A participant from the network or from disk, with its names checked.
pub fn participant_from_proto(
    participant: &TransactionParticipant,
) -> Result<Participant, LogRecordError> {
    TopicName::any(&participant.topic)
        .map_err(|error| LogRecordError::BadParticipant(error.to_string()))?;
    if !participant.subscription.is_empty() {
        SubscriptionName::new(&participant.subscription)
            .map_err(|error| LogRecordError::BadParticipant(error.to_string()))?;
    }
    Ok(Participant {
        topic: participant.topic.clone(),
        partition: participant.partition,
        subscription: participant.subscription.clone(),
    })
}

/// The protobuf value of a state.
pub fn to_value(meta: &TxnMeta) -> TransactionLogValue {
    TransactionLogValue {
        version: VERSION,
        producer_id: meta.producer_id,
        producer_epoch: i32::from(meta.epoch),
        previous_producer_id: meta.previous_producer_id,
        previous_epoch: i32::from(meta.previous_epoch),
        state: state_to_proto(meta.state) as i32,
        txn_epoch: i32::from(meta.txn_epoch),
        reason: reason_to_proto(meta.reason) as i32,
        participants: meta.participants.iter().map(participant_to_proto).collect(),
        timeout_ms: meta.timeout_ms,
        started_at_ms: meta.started_at_ms,
        updated_at_ms: meta.updated_at_ms,
        principal: meta.principal.clone(),
    }
}

/// One batch holding the record of `id` (a tombstone when `meta` is none).
pub fn encode(id: &TransactionalId, meta: Option<&TxnMeta>) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&RecordData {
        key: Some(Bytes::copy_from_slice(id.as_str().as_bytes())),
        value: meta.map(|meta| Bytes::from(to_value(meta).encode_to_vec())),
        ..Default::default()
    });
    builder.build()
}

fn epoch(field: &'static str, value: i32, lowest: i16) -> Result<i16, LogRecordError> {
    i16::try_from(value)
        .ok()
        .filter(|epoch| (lowest..=MAX_EPOCH).contains(epoch))
        .ok_or(LogRecordError::OutOfRange {
            field,
            value: value.to_string(),
            range: if lowest == 0 {
                "0..=32766"
            } else {
                "-1..=32766"
            },
        })
}

fn out_of_range(field: &'static str, value: impl ToString, range: &'static str) -> LogRecordError {
    LogRecordError::OutOfRange {
        field,
        value: value.to_string(),
        range,
    }
}

/// The state a value holds, every field checked.
pub fn from_value(value: &TransactionLogValue) -> Result<TxnMeta, LogRecordError> {
    if value.version != VERSION {
        return Err(LogRecordError::UnknownVersion(value.version));
    }
    if value.producer_id < 0 {
        return Err(out_of_range("producer_id", value.producer_id, ">= 0"));
    }
    if value.previous_producer_id < -1 {
        return Err(out_of_range(
            "previous_producer_id",
            value.previous_producer_id,
            ">= -1",
        ));
    }
    let state =
        state_from_proto(value.state).ok_or_else(|| out_of_range("state", value.state, "1..=6"))?;
    let reason = reason_from_proto(value.reason)
        .ok_or_else(|| out_of_range("reason", value.reason, "1..=5"))?;
    if value.participants.len() > MAX_RECORD_PARTICIPANTS {
        return Err(out_of_range(
            "participants",
            value.participants.len(),
            "at most 100,000",
        ));
    }
    if !(1..=MAX_RECORD_TIMEOUT_MS).contains(&value.timeout_ms) {
        return Err(out_of_range("timeout_ms", value.timeout_ms, "1..=3600000"));
    }
    if value.principal.len() > MAX_PRINCIPAL_BYTES {
        return Err(out_of_range(
            "principal",
            format!("{} bytes", value.principal.len()),
            "at most 1,024 bytes",
        ));
    }
    let participants = value
        .participants
        .iter()
        .map(participant_from_proto)
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(TxnMeta {
        producer_id: value.producer_id,
        epoch: epoch("producer_epoch", value.producer_epoch, 0)?,
        previous_producer_id: value.previous_producer_id,
        previous_epoch: epoch("previous_epoch", value.previous_epoch, -1)?,
        state,
        txn_epoch: epoch("txn_epoch", value.txn_epoch, -1)?,
        reason,
        participants,
        timeout_ms: value.timeout_ms,
        started_at_ms: value.started_at_ms,
        updated_at_ms: value.updated_at_ms,
        principal: value.principal.clone(),
    })
}

/// The id and state (none: a tombstone) of one record read from the log.
pub fn decode(
    key: Option<&Bytes>,
    value: Option<&Bytes>,
) -> Result<(TransactionalId, Option<TxnMeta>), LogRecordError> {
    let key = key.ok_or(LogRecordError::MissingKey)?;
    let id = std::str::from_utf8(key)
        .map_err(|_| LogRecordError::BadKey("not UTF-8".into()))
        .and_then(|text| {
            TransactionalId::new(text).map_err(|error| LogRecordError::BadKey(error.to_string()))
        })?;
    let Some(value) = value else {
        return Ok((id, None));
    };
    let decoded = TransactionLogValue::decode(value.as_ref())
        .map_err(|error| LogRecordError::Undecodable(error.to_string()))?;
    Ok((id, Some(from_value(&decoded)?)))
}

#[cfg(test)]
mod tests;
