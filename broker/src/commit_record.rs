//! The records a coordinator appends to `__consumer_offsets`. Replaying the
//! partition in order rebuilds every group's committed offsets.
//!
//! - **Version 2** (ADR 0016 §8, written since transactional offsets): one
//!   record per `(group, topic, partition)`, all of one commit in one batch
//!   (atomic), so compaction can keep each partition's latest. Key =
//!   `0x02 ‖ group ‖ 0x00 ‖ topic ‖ partition (u32 big-endian)`; value =
//!   JSON `{offset, metadata, cursor}`; a null value is a tombstone (the
//!   partition's offset is forgotten). A transactional commit is the same
//!   batch with the transactional bit, its producer id and epoch (§5).
//! - **Version 1** (still read; written only for a group deletion): key =
//!   group name, value = JSON `{offsets: [{topic, partition, offset,
//!   metadata, cursor}], deleted}`. Group names are ASCII letters, digits,
//!   `.`, `_`, `-`, so a version-1 key never starts with `0x02`.
//!
//! `cursor` (base64, absent when empty) is a subscription's cursor (ADR
//! 0011).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};

/// First byte of a version-2 key.
const V2_KEY_PREFIX: u8 = 0x02;
/// Separates the group from the topic in a version-2 key.
const V2_KEY_SEPARATOR: u8 = 0x00;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    #[serde(default)]
    pub metadata: String,
    /// Base64 of a subscription cursor; empty for streaming groups.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
}

/// A version-1 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordV1 {
    offsets: Vec<CommittedOffset>,
    /// The group was deleted (issue 15): replay forgets every offset and
    /// cursor committed before. Absent in older records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The value of a version-2 record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ValueV2 {
    offset: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    metadata: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    cursor: String,
}

/// What one decoded record says about its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitRecord {
    /// Offsets committed (one for version 2, any number for version 1).
    Offsets(Vec<CommittedOffset>),
    /// A version-2 tombstone: the partition's offset is forgotten.
    Removed { topic: String, partition: u32 },
    /// The group was deleted: every offset and cursor before is forgotten.
    GroupDeleted,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitRecordError {
    #[error("commit record has no key")]
    MissingKey,
    #[error("commit record key is not valid: {0}")]
    Key(&'static str),
    #[error("commit record has no value")]
    MissingValue,
    #[error("commit record value is not valid: {0}")]
    Value(String),
    #[error("a commit needs at least one offset")]
    Empty,
}

/// The version-2 key of `(group, topic, partition)`.
pub fn key_v2(group: &str, topic: &str, partition: u32) -> Bytes {
    let mut key = Vec::with_capacity(group.len() + topic.len() + 6);
    key.push(V2_KEY_PREFIX);
    key.extend_from_slice(group.as_bytes());
    key.push(V2_KEY_SEPARATOR);
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    Bytes::from(key)
}

/// The records of one commit of `group` (version 2), for a batch.
fn records_v2(
    group: &str,
    offsets: &[CommittedOffset],
) -> Result<Vec<RecordData>, CommitRecordError> {
    if offsets.is_empty() {
        return Err(CommitRecordError::Empty);
    }
    offsets
        .iter()
        .map(|offset| {
            let value = ValueV2 {
                offset: offset.offset,
                metadata: offset.metadata.clone(),
                cursor: offset.cursor.clone(),
            };
            let value = serde_json::to_vec(&value)
                .map_err(|error| CommitRecordError::Value(error.to_string()))?;
            Ok(RecordData {
                key: Some(key_v2(group, &offset.topic, offset.partition)),
                value: Some(Bytes::from(value)),
                ..Default::default()
            })
        })
        .collect()
}

/// One batch holding one commit of `group`: a version-2 record per offset.
pub fn encode(group: &str, offsets: &[CommittedOffset]) -> Result<Bytes, CommitRecordError> {
    let mut builder = BatchBuilder::new(Compression::None);
    for record in records_v2(group, offsets)? {
        builder.push(&record);
    }
    Ok(builder.build())
}

/// [`encode`] as a transactional batch of `(producer_id, epoch)` (ADR 0016
/// §5): sequence −1, the idempotence check skips it (re-applying an offset
/// is harmless).
pub fn encode_transactional(
    group: &str,
    offsets: &[CommittedOffset],
    producer_id: i64,
    epoch: i16,
) -> Result<Bytes, CommitRecordError> {
    let mut builder = BatchBuilder::new(Compression::None)
        .with_producer(producer_id, epoch, -1)
        .transactional();
    for record in records_v2(group, offsets)? {
        builder.push(&record);
    }
    Ok(builder.build())
}

/// One batch holding the deletion record of `group` (version 1: a deletion
/// concerns the whole group).
pub fn encode_deletion(group: &str) -> Result<Bytes, CommitRecordError> {
    encode_v1(
        group,
        &RecordV1 {
            offsets: Vec::new(),
            deleted: true,
        },
    )
}

fn encode_v1(group: &str, record: &RecordV1) -> Result<Bytes, CommitRecordError> {
    let value =
        serde_json::to_vec(record).map_err(|error| CommitRecordError::Value(error.to_string()))?;
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(&RecordData {
        key: Some(Bytes::copy_from_slice(group.as_bytes())),
        value: Some(Bytes::from(value)),
        ..Default::default()
    });
    Ok(builder.build())
}

/// The group, topic and partition of a version-2 key (after its prefix).
fn parse_key_v2(rest: &[u8]) -> Result<(String, String, u32), CommitRecordError> {
    let separator = rest
        .iter()
        .position(|byte| *byte == V2_KEY_SEPARATOR)
        .ok_or(CommitRecordError::Key("no separator after the group"))?;
    let (group, tail) = (&rest[..separator], &rest[separator + 1..]);
    if group.is_empty() {
        return Err(CommitRecordError::Key("empty group"));
    }
    let topic_len = tail
        .len()
        .checked_sub(4)
        .ok_or(CommitRecordError::Key("no partition"))?;
    let (topic, partition) = tail.split_at(topic_len);
    if topic.is_empty() {
        return Err(CommitRecordError::Key("empty topic"));
    }
    let partition_bytes: [u8; 4] = partition
        .try_into()
        .map_err(|_| CommitRecordError::Key("no partition"))?;
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| CommitRecordError::Key("not UTF-8"))
    };
    Ok((
        text(group)?,
        text(topic)?,
        u32::from_be_bytes(partition_bytes),
    ))
}

fn decode_v2(
    rest: &[u8],
    value: Option<&Bytes>,
) -> Result<(String, CommitRecord), CommitRecordError> {
    let (group, topic, partition) = parse_key_v2(rest)?;
    let Some(value) = value else {
        return Ok((group, CommitRecord::Removed { topic, partition }));
    };
    let value: ValueV2 = serde_json::from_slice(value)
        .map_err(|error| CommitRecordError::Value(error.to_string()))?;
    let offset = CommittedOffset {
        topic,
        partition,
        offset: value.offset,
        metadata: value.metadata,
        cursor: value.cursor,
    };
    Ok((group, CommitRecord::Offsets(vec![offset])))
}

/// The group and what one decoded record (either version) says.
pub fn decode(
    key: Option<&Bytes>,
    value: Option<&Bytes>,
) -> Result<(String, CommitRecord), CommitRecordError> {
    let key = key.ok_or(CommitRecordError::MissingKey)?;
    if let Some(rest) = key.strip_prefix(&[V2_KEY_PREFIX]) {
        return decode_v2(rest, value);
    }
    let group = std::str::from_utf8(key)
        .map_err(|_| CommitRecordError::Key("not UTF-8"))?
        .to_string();
    let value = value.ok_or(CommitRecordError::MissingValue)?;
    let record: RecordV1 = serde_json::from_slice(value)
        .map_err(|error| CommitRecordError::Value(error.to_string()))?;
    let record = if record.deleted {
        CommitRecord::GroupDeleted
    } else {
        CommitRecord::Offsets(record.offsets)
    };
    Ok((group, record))
}

#[cfg(test)]
mod tests;
