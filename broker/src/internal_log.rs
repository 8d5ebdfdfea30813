//! Replaying an internal log partition (`__consumer_offsets` for the group
//! coordinator, `__transaction_state` for the transaction coordinator)
//! from its log start to its high watermark before it serves: every record
//! in offset order is handed to the caller's decoder. Ranges accepted as
//! lost are skipped (their records are gone, reported once per range),
//! undecodable batches are reported and skipped; control batches hold no
//! records.

use crate::error::BrokerError;
use crate::lost_ranges::LostRange;
use crate::partition::Partition;
use bytes::Bytes;
use sluice_proto::batch::control::{self, ControlRecord, Marker};
use sluice_proto::batch::{self, BatchHeader, BatchIter, Record};

/// Bytes read per store request while replaying.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

/// What the replay hands over, batch by batch, in offset order.
pub enum LogEntry<'a> {
    /// The records of a data batch at or after the replay's position.
    Records {
        header: &'a BatchHeader,
        records: &'a [Record],
    },
    /// A transaction marker (ADR 0016 §3.4).
    Marker(Marker),
}

/// Hands every record of `partition` below its high watermark to `each`
/// as `(offset, key, value)`; returns how many. Control batches are
/// passed over.
pub async fn replay(
    partition: &Partition,
    reader: &'static str,
    mut each: impl FnMut(u64, Option<&Bytes>, Option<&Bytes>),
) -> Result<usize, BrokerError> {
    replay_entries(partition, reader, |entry| {
        if let LogEntry::Records { records, .. } = entry {
            for record in records {
                each(record.offset, record.key.as_ref(), record.value.as_ref());
            }
        }
    })
    .await
}

/// Hands every data batch (its records) and every transaction marker of
/// `partition` below its high watermark to `each`, in offset order;
/// returns how many records.
pub async fn replay_entries(
    partition: &Partition,
    reader: &'static str,
    mut each: impl FnMut(LogEntry<'_>),
) -> Result<usize, BrokerError> {
    let status = partition.status();
    let mut offset = status.log_start_offset;
    let end = status.high_watermark;
    let mut records_seen = 0;
    while offset < end {
        let bytes = match partition.read(offset, REPLAY_READ_BYTES).await {
            Ok(bytes) => bytes,
            Err(BrokerError::DataLost { start, end, .. }) => {
                let range = LostRange { start, end };
                if partition.lost_skips.skipped(reader, range) {
                    tracing::warn!(partition = %partition.key, lost = %range, reader, "replay skips a range accepted as lost; records in it are gone");
                }
                offset = offset.max(end);
                continue;
            }
            Err(error) => return Err(error),
        };
        if bytes.is_empty() {
            return Err(BrokerError::Unavailable(format!(
                "replay of {} found no data at offset {offset} below the high watermark {end}",
                partition.key
            )));
        }
        for item in BatchIter::new(&bytes) {
            let (position, header, slice) = item.map_err(BrokerError::Batch)?;
            if header.end_offset() > offset {
                let batch = bytes.slice(position..position + slice.len());
                records_seen += replay_batch(partition, reader, &header, &batch, offset, &mut each);
            }
            offset = offset.max(header.end_offset());
        }
    }
    Ok(records_seen)
}

/// One batch of the replay: a marker, or the records at or after `from`.
fn replay_batch(
    partition: &Partition,
    reader: &'static str,
    header: &BatchHeader,
    batch: &Bytes,
    from: u64,
    each: &mut impl FnMut(LogEntry<'_>),
) -> usize {
    if header.control {
        match control::parse(batch, header) {
            Ok(ControlRecord::Marker(marker)) => each(LogEntry::Marker(marker)),
            // A gap holds nothing.
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(partition = %partition.key, offset = header.base_offset, %error, reader, "skipping an unparsable control batch");
            }
        }
        return 0;
    }
    match batch::decode(batch, usize::MAX) {
        Ok((_, records)) => {
            let first = records.partition_point(|record| record.offset < from);
            let records = &records[first..];
            each(LogEntry::Records { header, records });
            records.len()
        }
        Err(error) => {
            tracing::warn!(partition = %partition.key, offset = header.base_offset, %error, reader, "skipping an undecodable batch");
            0
        }
    }
}
