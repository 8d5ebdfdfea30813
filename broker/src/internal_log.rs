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
use sluice_proto::batch::{self, BatchIter};

/// Bytes read per store request while replaying.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

/// Hands every record of `partition` below its high watermark to `each`
/// as `(offset, key, value)`; returns how many.
pub async fn replay(
    partition: &Partition,
    reader: &'static str,
    mut each: impl FnMut(u64, Option<&Bytes>, Option<&Bytes>),
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
            let batch = bytes.slice(position..position + slice.len());
            match batch::decode(&batch, usize::MAX) {
                Ok((_, records)) => {
                    for record in records.iter().filter(|record| record.offset >= offset) {
                        records_seen += 1;
                        each(record.offset, record.key.as_ref(), record.value.as_ref());
                    }
                }
                Err(error) => {
                    tracing::warn!(partition = %partition.key, offset = header.base_offset, %error, reader, "skipping an undecodable batch");
                }
            }
            offset = offset.max(header.end_offset());
        }
    }
    Ok(records_seen)
}
