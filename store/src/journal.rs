//! The journal (write-ahead log) format: records, files, and reading them
//! back during recovery.
//!
//! Record layout (little-endian):
//!
//! ```text
//! 0  4 length   bytes of kind + segment id + payload
//! 4  4 crc      CRC-32C of those bytes
//! 8  1 kind     1 append, 2 create segment, 3 seal, 4 delete
//! 9  8 segment  segment id
//! 17 .. payload append: the batch; create: JSON metadata; seal: fence epoch (u64); delete: empty
//! ```
//!
//! Files are `journal/{sequence:020}.journal`; the writer never appends to a
//! file written by an earlier process, so a torn tail is only ever at the
//! end of a file from before a crash. Files are preallocated (zero filled)
//! to the journal file size when created: the records end where an invalid
//! record is followed only by zeros, which is not a torn tail.

use crate::error::StoreError;
use std::path::{Path, PathBuf};

/// Bytes before the payload.
pub const RECORD_HEADER_BYTES: usize = 17;
/// Length and CRC fields, not covered by the CRC.
const FRAME_BYTES: usize = 8;
/// Upper bound on a record's length field when reading; larger values are
/// corruption, not records. Batches are bounded far below this.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// What a journal record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Append = 1,
    CreateSegment = 2,
    Seal = 3,
    Delete = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Append),
            2 => Some(RecordKind::CreateSegment),
            3 => Some(RecordKind::Seal),
            4 => Some(RecordKind::Delete),
            _ => None,
        }
    }
}

/// The header (length, CRC, kind, segment id) of a record carrying
/// `payload`, so that header and payload can be written without copying the
/// payload. The CRC covers kind, segment id and payload.
pub fn encode_record_header(
    kind: RecordKind,
    segment_id: u64,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    let length = (1 + 8 + payload.len()) as u32;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[8] = kind as u8;
    header[9..17].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[FRAME_BYTES..]), payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Appends one encoded record to `buffer`.
pub fn encode_record(buffer: &mut Vec<u8>, kind: RecordKind, segment_id: u64, payload: &[u8]) {
    buffer.extend_from_slice(&encode_record_header(kind, segment_id, payload));
    buffer.extend_from_slice(payload);
}

/// True when every byte of `bytes` is zero: the unwritten, preallocated
/// end of a journal or segment file rather than a torn or damaged record.
pub fn is_zero_fill(bytes: &[u8]) -> bool {
    // Compared a block at a time (memcmp): preallocated tails are large.
    bytes
        .chunks(ZERO_BLOCK.len())
        .all(|chunk| chunk == &ZERO_BLOCK[..chunk.len()])
}

/// Zeros to compare preallocated space against.
static ZERO_BLOCK: [u8; 64 * 1024] = [0u8; 64 * 1024];

/// A record decoded from a journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    pub kind: RecordKind,
    pub segment_id: u64,
    pub payload: &'a [u8],
    /// Bytes the record occupies in the file.
    pub encoded_bytes: usize,
}

/// Decodes the record at the start of `bytes`, or says why it is not one.
pub fn decode_record(bytes: &[u8]) -> Result<DecodedRecord<'_>, &'static str> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err("incomplete record header");
    }
    let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if !(9..=MAX_RECORD_BYTES).contains(&length) {
        return Err("impossible record length");
    }
    if bytes.len() < FRAME_BYTES + length {
        return Err("incomplete record");
    }
    let expected_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let covered = &bytes[FRAME_BYTES..FRAME_BYTES + length];
    if crc32c::crc32c(covered) != expected_crc {
        return Err("record CRC mismatch");
    }
    let kind = RecordKind::from_byte(covered[0]).ok_or("unknown record kind")?;
    let mut segment = [0u8; 8];
    segment.copy_from_slice(&covered[1..9]);
    Ok(DecodedRecord {
        kind,
        segment_id: u64::from_le_bytes(segment),
        payload: &covered[9..],
        encoded_bytes: FRAME_BYTES + length,
    })
}

/// One past the last non-zero byte of `bytes` (0 if all are zero).
pub fn end_of_nonzero_data(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    // Skip whole zero blocks from the end, then look within the last one.
    while end > 0 {
        let start = end.saturating_sub(ZERO_BLOCK.len());
        if !is_zero_fill(&bytes[start..end]) {
            return bytes[start..end]
                .iter()
                .rposition(|&byte| byte != 0)
                .map_or(start, |last| start + last + 1);
        }
        end = start;
    }
    0
}

/// Position of the first valid record at or after `from`, if any. Used to
/// tell a torn tail (nothing valid after) from damage in the middle.
pub fn find_next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    // A record starts with a non-zero length, so none starts in the zero
    // fill of a preallocated file; skipping it keeps the search short.
    let last_start = bytes.len().saturating_sub(RECORD_HEADER_BYTES - 1);
    (from..last_start.min(end_of_nonzero_data(bytes)))
        .find(|&position| decode_record(&bytes[position..]).is_ok())
}

/// Path of journal file `sequence` under `journal_dir`.
pub fn journal_file_path(journal_dir: &Path, sequence: u64) -> PathBuf {
    journal_dir.join(format!("{sequence:020}.journal"))
}

/// Sequence numbers of the journal files in `journal_dir`, ascending.
/// Names that are not journal files are ignored.
pub fn list_journal_files(journal_dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = std::fs::read_dir(journal_dir)
        .map_err(|error| StoreError::io(format!("list {}", journal_dir.display()), error))?;
    let mut sequences = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| StoreError::io(format!("list {}", journal_dir.display()), error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".journal") {
            if let Ok(sequence) = stem.parse::<u64>() {
                sequences.push(sequence);
            }
        }
    }
    sequences.sort_unstable();
    Ok(sequences)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_damage() {
        let mut buffer = Vec::new();
        encode_record(&mut buffer, RecordKind::Append, 42, b"payload");
        encode_record(&mut buffer, RecordKind::Seal, 43, &7u64.to_le_bytes());
        let first = decode_record(&buffer).expect("first record decodes");
        assert_eq!(first.kind, RecordKind::Append);
        assert_eq!(first.segment_id, 42);
        assert_eq!(first.payload, b"payload");
        let second = decode_record(&buffer[first.encoded_bytes..]).expect("second decodes");
        assert_eq!(second.kind, RecordKind::Seal);
        assert_eq!(second.segment_id, 43);

        let mut damaged = buffer.clone();
        damaged[20] ^= 0x01;
        assert!(decode_record(&damaged).is_err());
        assert_eq!(
            find_next_valid_record(&damaged, 1),
            Some(first.encoded_bytes)
        );
        assert!(decode_record(&buffer[..first.encoded_bytes - 1]).is_err());
    }

    #[test]
    fn header_crc_matches_a_crc_over_the_whole_record() {
        let payload = vec![9u8; 3000];
        let header = encode_record_header(RecordKind::Append, 77, &payload);
        let mut covered = header[FRAME_BYTES..].to_vec();
        covered.extend_from_slice(&payload);
        assert_eq!(
            u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            crc32c::crc32c(&covered)
        );
        let mut record = header.to_vec();
        record.extend_from_slice(&payload);
        let decoded = decode_record(&record).expect("decodes");
        assert_eq!(decoded.payload, payload.as_slice());
        assert!(decode_record(&[0u8; 64]).is_err(), "zeros are not a record");
        let mut tail = vec![0u8; 200_000];
        assert_eq!(end_of_nonzero_data(&tail), 0);
        assert!(is_zero_fill(&tail));
        tail[70_001] = 1;
        assert_eq!(end_of_nonzero_data(&tail), 70_002);
        assert!(!is_zero_fill(&tail));
        assert!(is_zero_fill(&tail[70_002..]));
    }
}
