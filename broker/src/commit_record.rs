//! The record a coordinator appends to `__consumer_offsets` for one commit:
//! key = group name, value = JSON list of {topic, partition, offset,
//! metadata, cursor}. Replaying the partition in order rebuilds every
//! group's committed offsets. `cursor` (base64, absent when empty) is a
//! subscription's cursor (ADR 0011).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_proto::batch::{BatchBuilder, Compression, RecordData};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub offsets: Vec<CommittedOffset>,
    /// The group was deleted (issue 15): replay forgets every offset and
    /// cursor committed before. Absent in older records; a broker that
    /// does not know the field reads an empty commit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitRecordError {
    #[error("commit record has no key")]
    MissingKey,
    #[error("commit record key is not UTF-8")]
    KeyNotUtf8,
    #[error("commit record has no value")]
    MissingValue,
    #[error("commit record value is not valid: {0}")]
    Value(String),
}

/// One batch holding one commit record for `group`.
pub fn encode(group: &str, offsets: &[CommittedOffset]) -> Result<Bytes, CommitRecordError> {
    encode_record(
        group,
        &CommitRecord {
            offsets: offsets.to_vec(),
            deleted: false,
        },
    )
}

/// One batch holding the deletion record of `group`.
pub fn encode_deletion(group: &str) -> Result<Bytes, CommitRecordError> {
    encode_record(
        group,
        &CommitRecord {
            offsets: Vec::new(),
            deleted: true,
        },
    )
}

fn encode_record(group: &str, record: &CommitRecord) -> Result<Bytes, CommitRecordError> {
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

/// The group and the record of one decoded commit or deletion.
pub fn decode(
    key: Option<&Bytes>,
    value: Option<&Bytes>,
) -> Result<(String, CommitRecord), CommitRecordError> {
    let key = key.ok_or(CommitRecordError::MissingKey)?;
    let group = std::str::from_utf8(key)
        .map_err(|_| CommitRecordError::KeyNotUtf8)?
        .to_string();
    let value = value.ok_or(CommitRecordError::MissingValue)?;
    let record: CommitRecord = serde_json::from_slice(value)
        .map_err(|error| CommitRecordError::Value(error.to_string()))?;
    Ok((group, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_batch() {
        let offsets = vec![
            CommittedOffset {
                topic: "orders".into(),
                partition: 3,
                offset: 42,
                metadata: "m".into(),
                cursor: String::new(),
            },
            CommittedOffset {
                topic: "orders".into(),
                partition: 0,
                offset: 0,
                metadata: String::new(),
                cursor: "AQID".into(),
            },
        ];
        let batch = encode("billing", &offsets).expect("encodes");
        let (_, records) = sluice_proto::batch::decode(&batch, usize::MAX).expect("a valid batch");
        assert_eq!(records.len(), 1);
        let (group, decoded) =
            decode(records[0].key.as_ref(), records[0].value.as_ref()).expect("decodes");
        assert_eq!(group, "billing");
        assert_eq!(decoded.offsets, offsets);
        assert!(!decoded.deleted);
    }

    #[test]
    fn a_deletion_round_trips_and_older_records_read_as_commits() {
        let batch = encode_deletion("billing").expect("encodes");
        let (_, records) = sluice_proto::batch::decode(&batch, usize::MAX).expect("a valid batch");
        let (group, decoded) =
            decode(records[0].key.as_ref(), records[0].value.as_ref()).expect("decodes");
        assert_eq!(group, "billing");
        assert!(decoded.deleted && decoded.offsets.is_empty());
        // A commit written before the field existed.
        let key = Bytes::from_static(b"g");
        let old = Bytes::from_static(br#"{"offsets":[]}"#);
        assert!(!decode(Some(&key), Some(&old)).expect("decodes").1.deleted);
    }

    #[test]
    fn rejects_garbage_values() {
        let key = Bytes::from_static(b"g");
        let value = Bytes::from_static(b"not json");
        assert!(decode(Some(&key), Some(&value)).is_err());
        assert!(decode(None, Some(&value)).is_err());
    }
}
