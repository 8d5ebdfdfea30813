//! The file form of a segment's index. Once a *sealed* segment is fully
//! indexed (or up to a cap) the index is written to
//! `{segment_id:020}.index` in the index directory (temp file and rename;
//! no fsync: it is a cache), so the first lookup after a restart need not
//! read the segment again. A file is only used when its CRC is right, it
//! names the segment, the segment is still sealed with the same base, end
//! and size, and its contents are within the current caps and consistent;
//! otherwise it is deleted and the index rebuilt from the segment. Files of
//! segments the store no longer holds are removed at start
//! ([`MessageIndexes::remove_orphans`](super::MessageIndexes::remove_orphans))
//! and when looked up.
//!
//! Layout, little-endian:
//!
//! | Field | Size | Meaning |
//! |---|---|---|
//! | magic | 4 | `SLIX` |
//! | version | 1 | 1 |
//! | segment id, base offset, end offset, size bytes | 4 × 8 | the sealed segment it describes |
//! | indexed end | 8 | everything below is indexed |
//! | stop reason | 4 + n | UTF-8, empty when the whole segment is indexed |
//! | batch count | 4 | then per batch: base, end (u64), min and max timestamp (i64) |
//! | term count | 4 | then per term: hash u64, count u32, positions u32 × count (ascending) |
//! | CRC-32C | 4 | of everything before it |

use super::segment_index::{BatchEntry, SegmentIndex};
use super::MessageIndexLimits;
use sluice_proto::v1::SegmentStatus;

const FILE_MAGIC: &[u8; 4] = b"SLIX";
const FILE_VERSION: u8 = 1;
pub(super) const FILE_EXTENSION: &str = "index";

impl SegmentIndex {
    /// The file form (see the module documentation).
    pub(super) fn encode(&self, segment_id: u64, status: &SegmentStatus) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.batches.len() * 32 + self.postings * 4);
        out.extend_from_slice(FILE_MAGIC);
        out.push(FILE_VERSION);
        for value in [
            segment_id,
            status.base_offset,
            status.end_offset,
            status.size_bytes,
            self.indexed_end,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        let reason = self.stopped.as_deref().unwrap_or("").as_bytes();
        out.extend_from_slice(&(reason.len() as u32).to_le_bytes());
        out.extend_from_slice(reason);
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for entry in &self.batches {
            out.extend_from_slice(&entry.base_offset.to_le_bytes());
            out.extend_from_slice(&entry.end_offset.to_le_bytes());
            out.extend_from_slice(&entry.min_timestamp_ms.to_le_bytes());
            out.extend_from_slice(&entry.max_timestamp_ms.to_le_bytes());
        }
        out.extend_from_slice(&(self.terms.len() as u32).to_le_bytes());
        // Sorted, so one index always has the same file.
        let mut terms: Vec<(&u64, &Vec<u32>)> = self.terms.iter().collect();
        terms.sort_unstable_by_key(|(term, _)| **term);
        for (term, positions) in terms {
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
            for position in positions {
                out.extend_from_slice(&position.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a file form back, checking everything it claims against the
    /// segment's current status and the caps.
    pub(super) fn decode(
        bytes: &[u8],
        segment_id: u64,
        status: &SegmentStatus,
        limits: &MessageIndexLimits,
    ) -> Result<SegmentIndex, String> {
        if bytes.len() < FILE_MAGIC.len() + 1 + 4 {
            return Err(format!("{} bytes is too short", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored_crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored_crc {
            return Err("checksum mismatch".to_string());
        }
        let mut reader = FileReader { bytes: body };
        if reader.take(4)? != FILE_MAGIC || reader.take(1)? != [FILE_VERSION] {
            return Err("not a version 1 message index".to_string());
        }
        let header = [reader.u64()?, reader.u64()?, reader.u64()?, reader.u64()?];
        let expected = [
            segment_id,
            status.base_offset,
            status.end_offset,
            status.size_bytes,
        ];
        if header != expected || !status.sealed {
            return Err(format!(
                "it describes segment/base/end/size {header:?}, the segment is {expected:?} (sealed: {})",
                status.sealed
            ));
        }
        let indexed_end = reader.u64()?;
        let reason_length = reader.u32()? as usize;
        let reason = std::str::from_utf8(reader.take(reason_length)?)
            .map_err(|_| "stop reason is not UTF-8".to_string())?
            .to_string();
        let batch_count = reader.u32()? as usize;
        if batch_count > limits.max_batches_per_segment {
            return Err(format!("{batch_count} batches exceed the cap"));
        }
        let mut index = SegmentIndex::new(status.base_offset);
        let mut previous_end = status.base_offset;
        for _ in 0..batch_count {
            let entry = BatchEntry {
                base_offset: reader.u64()?,
                end_offset: reader.u64()?,
                min_timestamp_ms: reader.i64()?,
                max_timestamp_ms: reader.i64()?,
            };
            if entry.base_offset < previous_end || entry.end_offset <= entry.base_offset {
                return Err("batches are not in offset order".to_string());
            }
            previous_end = entry.end_offset;
            index.batches.push(entry);
        }
        let term_count = reader.u32()? as usize;
        if term_count > limits.max_terms_per_segment {
            return Err(format!("{term_count} keys and tags exceed the cap"));
        }
        for _ in 0..term_count {
            let term = reader.u64()?;
            let count = reader.u32()? as usize;
            if index.postings + count > limits.max_postings_per_segment {
                return Err("pairs exceed the cap".to_string());
            }
            let mut positions = Vec::with_capacity(count);
            for _ in 0..count {
                let position = reader.u32()?;
                if position as usize >= batch_count
                    || positions.last().is_some_and(|last| *last >= position)
                {
                    return Err("a position is out of order or range".to_string());
                }
                positions.push(position);
            }
            index.postings += count;
            if index.terms.insert(term, positions).is_some() {
                return Err("a key or tag is listed twice".to_string());
            }
        }
        if !reader.bytes.is_empty() {
            return Err("trailing bytes".to_string());
        }
        if indexed_end != previous_end || indexed_end > status.end_offset {
            return Err("its end does not match its batches".to_string());
        }
        if reason.is_empty() != (indexed_end == status.end_offset) {
            return Err("it stops early without a reason".to_string());
        }
        index.indexed_end = indexed_end;
        index.stopped = (!reason.is_empty()).then_some(reason);
        index.persisted = true;
        index.file_checked = true;
        Ok(index)
    }
}

/// Bounds-checked reads of an index file.
struct FileReader<'a> {
    bytes: &'a [u8],
}

impl<'a> FileReader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        if length > self.bytes.len() {
            return Err("truncated".to_string());
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buffer))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
}
