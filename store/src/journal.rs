//! The journal (write-ahead log) format: records, files, and reading them
//! back during recovery.
//!
//! Record layout, version 2 (little-endian; ADR 0017), written by this
//! version:
//!
//! ```text
//! 0  4 length   bytes of kind + segment id + sequence + nonce + payload
//! 4  4 crc      CRC-32C of those bytes
//! 8  1 kind     0x81 append, 0x82 create segment, 0x83 seal, 0x84 delete
//! 9  8 segment  segment id
//! 17 8 sequence the journal file's sequence number (its name)
//! 25 8 nonce    random, drawn each time the writer starts the file
//! 33 .. payload append: the batch; create: JSON metadata; seal: fence epoch (u64); delete: empty
//! ```
//!
//! Version 1 (read only, files of earlier versions): the same without
//! sequence and nonce (header 17 bytes), kinds 1 to 4.
//!
//! Files are `journal/{sequence:020}.journal`; the writer never appends to a
//! file written by an earlier process, so a torn tail is only ever at the
//! end of a file from before a crash. Files are preallocated to the journal
//! file size, and obsolete files are reused without being zeroed
//! (`journal_spares.rs`): what follows a file's records is zeros (a new
//! file) or records of an earlier use of the file, which carry another
//! sequence (see `journal_use.rs` for how a file is read back). The nonce
//! is never sent anywhere, so a record planted inside a client's payload
//! cannot pass for one of a later use of the file.

use crate::error::StoreError;
use std::path::{Path, PathBuf};

/// Bytes before the payload of a version 2 record.
pub const RECORD_HEADER_BYTES: usize = 33;
/// Bytes before the payload of a version 1 record.
pub const LEGACY_RECORD_HEADER_BYTES: usize = 17;
/// Length and CRC fields, not covered by the CRC.
const FRAME_BYTES: usize = 8;
/// The kind byte's bit that marks a version 2 record.
const VERSION_2_BIT: u8 = 0x80;
/// Where a version 2 record's sequence and nonce are.
const STAMP_AT: usize = 17;
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
        match byte & !VERSION_2_BIT {
            1 => Some(RecordKind::Append),
            2 => Some(RecordKind::CreateSegment),
            3 => Some(RecordKind::Seal),
            4 => Some(RecordKind::Delete),
            _ => None,
        }
    }
}

/// Which use of a journal file a version 2 record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// The file's sequence number.
    pub sequence: u64,
    /// Drawn when the writer started the file.
    pub nonce: u64,
}

impl FileStamp {
    /// A stamp for a new use of file `sequence`, with a fresh random nonce.
    pub fn new_use(sequence: u64) -> Self {
        Self {
            sequence,
            nonce: rand::random(),
        }
    }

    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[8..].copy_from_slice(&self.nonce.to_le_bytes());
        bytes
    }
}

/// Which records a reader of one file accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Version 1 records only (a file of an earlier version).
    Legacy,
    /// Version 2 records of this use of the file only.
    Stamped(FileStamp),
}

/// Why the bytes at a position are not a record the reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a record (or a damaged one).
    Invalid(&'static str),
    /// A version 2 record header of another use of the file (its CRC not
    /// checked).
    OtherUse(FileStamp),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Invalid(reason) => f.write_str(reason),
            DecodeError::OtherUse(stamp) => write!(
                f,
                "a record of another use of the file (sequence {})",
                stamp.sequence
            ),
        }
    }
}

/// The version 2 header (length, CRC, kind, segment id, stamp) of a record
/// carrying `payload`, so that header and payload can be written without
/// copying the payload. The CRC covers everything after itself.
pub fn encode_record_header(
    kind: RecordKind,
    segment_id: u64,
    stamp: FileStamp,
    payload: &[u8],
) -> [u8; RECORD_HEADER_BYTES] {
    let length = (RECORD_HEADER_BYTES - FRAME_BYTES + payload.len()) as u32;
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[8] = kind as u8 | VERSION_2_BIT;
    header[9..17].copy_from_slice(&segment_id.to_le_bytes());
    header[STAMP_AT..STAMP_AT + 16].copy_from_slice(&stamp.to_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[FRAME_BYTES..]), payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Appends one encoded version 2 record to `buffer`.
pub fn encode_record(
    buffer: &mut Vec<u8>,
    kind: RecordKind,
    segment_id: u64,
    stamp: FileStamp,
    payload: &[u8],
) {
    buffer.extend_from_slice(&encode_record_header(kind, segment_id, stamp, payload));
    buffer.extend_from_slice(payload);
}

/// Appends one encoded version 1 record to `buffer` (as earlier versions
/// wrote them; for tests of reading their files).
pub fn encode_legacy_record(
    buffer: &mut Vec<u8>,
    kind: RecordKind,
    segment_id: u64,
    payload: &[u8],
) {
    let length = (LEGACY_RECORD_HEADER_BYTES - FRAME_BYTES + payload.len()) as u32;
    let mut header = [0u8; LEGACY_RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&length.to_le_bytes());
    header[8] = kind as u8;
    header[9..17].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[FRAME_BYTES..]), payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    buffer.extend_from_slice(&header);
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
    /// `None` for a version 1 record.
    pub stamp: Option<FileStamp>,
    pub payload: &'a [u8],
    /// Bytes the record occupies in the file.
    pub encoded_bytes: usize,
}

/// Decodes the record at the start of `bytes` if `accept` takes it, or says
/// why not. A version 2 record of another use is refused before its CRC is
/// computed.
pub fn decode_record(bytes: &[u8], accept: Accept) -> Result<DecodedRecord<'_>, DecodeError> {
    decode(bytes, Some(accept))
}

/// Decodes the record at the start of `bytes`, of either version and any
/// use, or says why it is not one.
pub fn decode_any_record(bytes: &[u8]) -> Result<DecodedRecord<'_>, DecodeError> {
    decode(bytes, None)
}

fn decode(bytes: &[u8], accept: Option<Accept>) -> Result<DecodedRecord<'_>, DecodeError> {
    let invalid = DecodeError::Invalid;
    if bytes.len() < LEGACY_RECORD_HEADER_BYTES {
        return Err(invalid("incomplete record header"));
    }
    let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let version_2 = bytes[8] & VERSION_2_BIT != 0;
    let header_bytes = if version_2 {
        RECORD_HEADER_BYTES
    } else {
        LEGACY_RECORD_HEADER_BYTES
    };
    if !(header_bytes - FRAME_BYTES..=MAX_RECORD_BYTES).contains(&length) {
        return Err(invalid("impossible record length"));
    }
    if bytes.len() < FRAME_BYTES + length {
        return Err(invalid("incomplete record"));
    }
    let stamp = version_2.then(|| read_stamp(bytes));
    match (accept, stamp) {
        (Some(Accept::Legacy), Some(_)) => {
            return Err(invalid("a version 2 record in a version 1 file"))
        }
        (Some(Accept::Stamped(_)), None) => {
            return Err(invalid("a version 1 record in a version 2 file"))
        }
        (Some(Accept::Stamped(expected)), Some(found)) if found != expected => {
            return Err(DecodeError::OtherUse(found))
        }
        _ => {}
    }
    let expected_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let covered = &bytes[FRAME_BYTES..FRAME_BYTES + length];
    if crc32c::crc32c(covered) != expected_crc {
        return Err(invalid("record CRC mismatch"));
    }
    let kind = RecordKind::from_byte(covered[0]).ok_or(invalid("unknown record kind"))?;
    let mut segment = [0u8; 8];
    segment.copy_from_slice(&covered[1..9]);
    Ok(DecodedRecord {
        kind,
        segment_id: u64::from_le_bytes(segment),
        stamp,
        payload: &covered[header_bytes - FRAME_BYTES..],
        encoded_bytes: FRAME_BYTES + length,
    })
}

/// The stamp of a version 2 header at the start of `bytes` (at least
/// [`RECORD_HEADER_BYTES`] long).
fn read_stamp(bytes: &[u8]) -> FileStamp {
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    FileStamp {
        sequence: word(STAMP_AT),
        nonce: word(STAMP_AT + 8),
    }
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

/// Position of the first record `accept` takes at or after `from`, if
/// any. Used to tell a torn tail (nothing valid after) from damage in the
/// middle.
pub fn find_next_valid_record(bytes: &[u8], from: usize, accept: Accept) -> Option<usize> {
    let end = end_of_nonzero_data(bytes);
    match accept {
        // A record starts with a non-zero length, so none starts in the
        // zero fill of a preallocated file; skipping it keeps the search
        // short.
        Accept::Legacy => {
            let last_start = bytes.len().saturating_sub(LEGACY_RECORD_HEADER_BYTES - 1);
            (from..last_start.min(end))
                .find(|&position| decode_record(&bytes[position..], accept).is_ok())
        }
        // Only where the stamp's 16 bytes occur can a record of this use
        // start: a search for them (memmem) instead of a CRC per position,
        // over a tail that may be a whole earlier use of the file.
        Accept::Stamped(stamp) => {
            let pattern = stamp.to_bytes();
            let search_from = from.checked_add(STAMP_AT)?;
            if search_from >= end {
                return None;
            }
            memchr::memmem::find_iter(&bytes[search_from..end], &pattern)
                .map(|at| search_from + at - STAMP_AT)
                .find(|&position| decode_record(&bytes[position..], accept).is_ok())
        }
    }
}

/// Position of the first version 2 record of file `sequence` (any nonce)
/// at or after `from`: how a file whose first record is damaged finds its
/// use's stamp.
pub fn find_first_record_of_file(bytes: &[u8], from: usize, sequence: u64) -> Option<usize> {
    let pattern = sequence.to_le_bytes();
    let end = end_of_nonzero_data(bytes);
    let search_from = from.checked_add(STAMP_AT)?;
    if search_from >= end {
        return None;
    }
    memchr::memmem::find_iter(&bytes[search_from..end], &pattern)
        .map(|at| search_from + at - STAMP_AT)
        .find(|&position| {
            decode_any_record(&bytes[position..])
                .is_ok_and(|record| record.stamp.is_some_and(|stamp| stamp.sequence == sequence))
        })
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
        let stamp = FileStamp::new_use(3);
        let accept = Accept::Stamped(stamp);
        let mut buffer = Vec::new();
        encode_record(&mut buffer, RecordKind::Append, 42, stamp, b"payload");
        encode_record(
            &mut buffer,
            RecordKind::Seal,
            43,
            stamp,
            &7u64.to_le_bytes(),
        );
        let first = decode_record(&buffer, accept).expect("first record decodes");
        assert_eq!(first.kind, RecordKind::Append);
        assert_eq!(first.segment_id, 42);
        assert_eq!(first.stamp, Some(stamp));
        assert_eq!(first.payload, b"payload");
        let second = decode_record(&buffer[first.encoded_bytes..], accept).expect("second");
        assert_eq!(second.kind, RecordKind::Seal);
        assert_eq!(second.segment_id, 43);

        let mut damaged = buffer.clone();
        damaged[36] ^= 0x01;
        assert!(decode_record(&damaged, accept).is_err());
        assert_eq!(
            find_next_valid_record(&damaged, 1, accept),
            Some(first.encoded_bytes)
        );
        assert!(decode_record(&buffer[..first.encoded_bytes - 1], accept).is_err());
    }

    #[test]
    fn records_of_another_use_or_version_are_refused_before_their_crc() {
        let stamp = FileStamp::new_use(3);
        let other = FileStamp {
            sequence: 3,
            nonce: stamp.nonce.wrapping_add(1),
        };
        let mut buffer = Vec::new();
        encode_record(&mut buffer, RecordKind::Append, 1, other, &[1u8; 100]);
        // Damage the payload: the stamp is compared before the CRC.
        buffer[50] ^= 0xff;
        assert_eq!(
            decode_record(&buffer, Accept::Stamped(stamp)),
            Err(DecodeError::OtherUse(other))
        );
        assert!(decode_record(&buffer, Accept::Legacy).is_err());
        let mut legacy = Vec::new();
        encode_legacy_record(&mut legacy, RecordKind::Delete, 9, &[]);
        let decoded = decode_record(&legacy, Accept::Legacy).expect("version 1");
        assert_eq!((decoded.kind, decoded.segment_id), (RecordKind::Delete, 9));
        assert_eq!(decoded.stamp, None);
        assert!(decode_record(&legacy, Accept::Stamped(stamp)).is_err());
        assert_eq!(
            decode_any_record(&legacy).map(|record| record.encoded_bytes),
            Ok(legacy.len())
        );
    }

    #[test]
    fn the_search_for_a_use_skips_other_uses_and_payload_bytes() {
        let old = FileStamp::new_use(1);
        let new = FileStamp::new_use(2);
        let mut bytes = Vec::new();
        encode_record(&mut bytes, RecordKind::Append, 1, new, &[0u8; 64]);
        let second_at = bytes.len();
        encode_record(&mut bytes, RecordKind::Append, 2, new, &[0u8; 64]);
        let end = bytes.len();
        for _ in 0..50 {
            encode_record(&mut bytes, RecordKind::Append, 3, old, &[9u8; 1000]);
        }
        bytes[10] ^= 1;
        assert_eq!(
            find_next_valid_record(&bytes, 1, Accept::Stamped(new)),
            Some(second_at)
        );
        assert_eq!(
            find_next_valid_record(&bytes, end, Accept::Stamped(new)),
            None
        );
        assert_eq!(find_first_record_of_file(&bytes, 1, 2), Some(second_at));
        assert_eq!(find_first_record_of_file(&bytes, 1, 1), Some(end));
        assert_eq!(find_first_record_of_file(&bytes, 1, 7), None);
        assert_eq!(
            find_next_valid_record(&bytes, usize::MAX, Accept::Stamped(new)),
            None
        );
    }

    #[test]
    fn header_crc_matches_a_crc_over_the_whole_record() {
        let stamp = FileStamp::new_use(5);
        let payload = vec![9u8; 3000];
        let header = encode_record_header(RecordKind::Append, 77, stamp, &payload);
        let mut covered = header[FRAME_BYTES..].to_vec();
        covered.extend_from_slice(&payload);
        assert_eq!(
            u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            crc32c::crc32c(&covered)
        );
        let mut record = header.to_vec();
        record.extend_from_slice(&payload);
        let decoded = decode_record(&record, Accept::Stamped(stamp)).expect("decodes");
        assert_eq!(decoded.payload, payload.as_slice());
        assert!(
            decode_any_record(&[0u8; 64]).is_err(),
            "zeros are not a record"
        );
        let mut tail = vec![0u8; 200_000];
        assert_eq!(end_of_nonzero_data(&tail), 0);
        assert!(is_zero_fill(&tail));
        tail[70_001] = 1;
        assert_eq!(end_of_nonzero_data(&tail), 70_002);
        assert!(!is_zero_fill(&tail));
        assert!(is_zero_fill(&tail[70_002..]));
    }
}
