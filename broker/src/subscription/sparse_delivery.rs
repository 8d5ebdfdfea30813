//! Sparse deliveries: the few records meant for a consumer out of a large
//! stored batch, re-encoded as single-record batches.

use bytes::Bytes;
use sluice_proto::batch::{self, Record};
use sluice_proto::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;

/// A delivery listing at most one record in this many of a batch is sparse.
const SPARSE_DELIVERY_RATIO: usize = 8;
/// Batches smaller than this are sent whole however few records are meant.
const SPARSE_DELIVERY_MIN_BATCH_BYTES: usize = 4096;

/// For a delivery that lists only a few records of a large stored batch
/// (delayed messages firing out of order, redeliveries, selective
/// subscriptions), the listed records re-encoded as one single-record batch
/// each, at their own offsets and with a new CRC, instead of the whole
/// stored batch per message; None to send the stored batch as it is.
pub(super) fn sparse_batches(batch: &Bytes, offsets: &[u64]) -> Option<Bytes> {
    if batch.len() < SPARSE_DELIVERY_MIN_BATCH_BYTES {
        return None;
    }
    let header = batch::BatchHeader::parse(batch).ok()?;
    if offsets.len().saturating_mul(SPARSE_DELIVERY_RATIO) >= header.record_count as usize {
        return None;
    }
    let (_, records) = batch::decode_selected(batch, MAX_UNCOMPRESSED_RECORDS_BYTES, |offset| {
        offsets.binary_search(&offset).is_ok()
    })
    .ok()?;
    let mut out = bytes::BytesMut::new();
    for record in records {
        out.extend_from_slice(&single_record_batch(record, header.writer_epoch));
    }
    Some(out.freeze())
}

/// `record` alone in a batch at its own offset (new CRC, same content).
pub(super) fn single_record_batch(record: Record, writer_epoch: u32) -> Bytes {
    let mut builder = batch::BatchBuilder::new(batch::Compression::None);
    let offset = record.offset;
    builder.push(&batch::RecordData {
        key: record.key,
        value: record.value,
        headers: record.headers,
        tags: record.tags,
        timestamp_ms: Some(record.timestamp_ms),
    });
    let mut single = bytes::BytesMut::from(&builder.build()[..]);
    batch::assign(&mut single, offset, writer_epoch);
    single.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::BatchIter;

    fn stored_batch(records: u64, base_offset: u64) -> Bytes {
        let mut builder = batch::BatchBuilder::new(batch::Compression::None);
        for index in 0..records {
            builder.push(&batch::RecordData {
                key: Some(Bytes::from(format!("key-{index}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: vec![("h".into(), Bytes::from(index.to_string()))],
                tags: vec!["t".into()],
                timestamp_ms: Some(1_700_000_000_000 + index as i64),
            });
        }
        let mut stored = bytes::BytesMut::from(&builder.build()[..]);
        batch::assign(&mut stored, base_offset, 3);
        stored.freeze()
    }

    #[test]
    fn a_few_records_of_a_large_batch_travel_as_single_record_batches() {
        let stored = stored_batch(100, 1000);
        let (_, originals) = batch::decode(&stored, usize::MAX).expect("decodes");
        let sparse = sparse_batches(&stored, &[1003, 1050]).expect("sparse");
        assert!(sparse.len() < stored.len() / 10);
        let mut seen = Vec::new();
        for item in BatchIter::new(&sparse) {
            let (start, header, slice) = item.expect("well formed");
            let single = sparse.slice(start..start + slice.len());
            let (_, records) = batch::decode(&single, usize::MAX).expect("valid CRC");
            assert_eq!(header.writer_epoch, 3);
            assert_eq!(records.len(), 1);
            seen.push(records[0].clone());
        }
        let expected: Vec<Record> = originals
            .into_iter()
            .filter(|record| record.offset == 1003 || record.offset == 1050)
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn dense_or_small_deliveries_send_the_stored_batch() {
        let stored = stored_batch(100, 0);
        let many: Vec<u64> = (0..20).collect();
        assert!(sparse_batches(&stored, &many).is_none());
        let small = stored_batch(3, 0);
        assert!(sparse_batches(&small, &[1]).is_none());
    }
}
