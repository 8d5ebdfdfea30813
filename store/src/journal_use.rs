//! Which records of a journal file recovery replays: the file's version
//! and, for version 2, the stamp of its current use (ADR 0017).
//!
//! Journal files are reused without being zeroed, so a file holds its
//! current use's records and, after them, whatever an earlier use left.
//! The rules, from the bytes at position 0:
//!
//! - a valid version 1 record: a file of an earlier Sluice version, read
//!   as before (records, then zeros). Only position 0 decides this: a
//!   version 1 record found further in could be one planted inside a
//!   client's payload, and files are reused only when their first record is
//!   version 2 (`journal_spares.rs`), so no reused file starts with one.
//! - a valid version 2 record of this file's sequence: its stamp (sequence
//!   and nonce) is the current use's; only records with that stamp are
//!   replayed.
//! - a valid version 2 record of another sequence: the file was reused and
//!   nothing was written to it before the process stopped; no records.
//! - zeros only: a new file nothing was written to; no records.
//! - anything else (the first record damaged): the first version 2 record
//!   of this sequence further in gives the stamp, and the bytes before it
//!   are reported as damage. If there is none, the file is reported as
//!   unreadable.
//!
//! Where the current use's records end (ADR 0017): at zeros, at a record of
//! another use, or at a failed record followed by zeros to the next 4 KiB
//! block (the pad of a direct write) and no record of this use after it.

use crate::journal::{self, Accept, DecodeError};

/// Bytes of the block a direct journal write pads with zeros.
const PAD_BLOCK_BYTES: usize = crate::journal_file::BLOCK_BYTES;

/// How a journal file is to be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileUse {
    /// Nothing to replay: a new file, or a reused one never written to.
    Unwritten,
    /// Records of this acceptance from `first` on; `first > 0` means the
    /// bytes before it are damage.
    Records { accept: Accept, first: usize },
    /// Not zeros, yet no record of this file: damage to report.
    Unreadable,
}

/// See the module documentation.
pub fn classify(bytes: &[u8], sequence: u64) -> FileUse {
    match journal::decode_any_record(bytes) {
        Ok(record) => match record.stamp {
            None => FileUse::Records {
                accept: Accept::Legacy,
                first: 0,
            },
            Some(stamp) if stamp.sequence == sequence => FileUse::Records {
                accept: Accept::Stamped(stamp),
                first: 0,
            },
            Some(_) => FileUse::Unwritten,
        },
        Err(_) if journal::is_zero_fill(bytes) => FileUse::Unwritten,
        Err(_) => match journal::find_first_record_of_file(bytes, 1, sequence) {
            Some(first) => match journal::decode_any_record(&bytes[first..]) {
                Ok(record) => match record.stamp {
                    Some(stamp) => FileUse::Records {
                        accept: Accept::Stamped(stamp),
                        first,
                    },
                    None => FileUse::Unreadable,
                },
                Err(_) => FileUse::Unreadable,
            },
            None => FileUse::Unreadable,
        },
    }
}

/// What follows a record that failed to decode at `position` in a version
/// 2 file, when no record of the current use comes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The use's records simply end here.
    Clean,
    /// A torn record: the bytes from `position` are cut.
    Torn,
}

/// See the module documentation.
pub fn tail_end(bytes: &[u8], position: usize, error: DecodeError) -> TailEnd {
    let rest = &bytes[position..];
    if journal::is_zero_fill(rest) {
        return TailEnd::Clean;
    }
    if matches!(error, DecodeError::OtherUse(_)) && journal::decode_any_record(rest).is_ok() {
        return TailEnd::Clean;
    }
    let pad_end = position.next_multiple_of(PAD_BLOCK_BYTES).min(bytes.len());
    if journal::is_zero_fill(&bytes[position..pad_end]) {
        return TailEnd::Clean;
    }
    TailEnd::Torn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{encode_legacy_record, encode_record, FileStamp, RecordKind};

    fn use_of(sequence: u64, records: usize, payload: u8) -> (FileStamp, Vec<u8>) {
        let stamp = FileStamp::new_use(sequence);
        let mut bytes = Vec::new();
        for index in 0..records {
            encode_record(
                &mut bytes,
                RecordKind::Append,
                index as u64,
                stamp,
                &[payload; 300],
            );
        }
        (stamp, bytes)
    }

    #[test]
    fn the_first_record_decides_version_and_use() {
        let (stamp, mut bytes) = use_of(7, 3, 1);
        bytes.resize(64 * 1024, 0);
        assert_eq!(
            classify(&bytes, 7),
            FileUse::Records {
                accept: Accept::Stamped(stamp),
                first: 0
            }
        );
        // The same bytes as file 8: an earlier use, never written since.
        assert_eq!(classify(&bytes, 8), FileUse::Unwritten);
        assert_eq!(classify(&vec![0u8; 8192], 8), FileUse::Unwritten);
        let mut legacy = Vec::new();
        encode_legacy_record(&mut legacy, RecordKind::Seal, 3, &9u64.to_le_bytes());
        legacy.resize(8192, 0);
        assert_eq!(
            classify(&legacy, 8),
            FileUse::Records {
                accept: Accept::Legacy,
                first: 0
            }
        );
    }

    #[test]
    fn a_damaged_first_record_is_skipped_to_the_next_of_this_file() {
        let (stamp, mut bytes) = use_of(7, 3, 1);
        bytes[40] ^= 0x10;
        let second = 300 + journal::RECORD_HEADER_BYTES;
        assert_eq!(
            classify(&bytes, 7),
            FileUse::Records {
                accept: Accept::Stamped(stamp),
                first: second
            }
        );
        assert_eq!(classify(&bytes, 9), FileUse::Unreadable);
    }

    #[test]
    fn a_planted_version_1_record_never_makes_a_file_legacy() {
        // A client's payload holding a well-formed version 1 record, in a
        // reused file whose first record is damaged.
        let mut planted = Vec::new();
        encode_legacy_record(&mut planted, RecordKind::Delete, 11, &[]);
        let stamp = FileStamp::new_use(5);
        let mut bytes = Vec::new();
        encode_record(&mut bytes, RecordKind::Append, 1, stamp, &planted);
        bytes[0] ^= 0xff;
        assert_eq!(classify(&bytes, 6), FileUse::Unreadable);
    }

    #[test]
    fn the_tail_ends_cleanly_at_zeros_an_earlier_use_or_a_padded_block() {
        let (new_stamp, mut bytes) = use_of(9, 2, 2);
        let end = bytes.len();
        // The direct write's pad, then what the earlier use left.
        bytes.resize(end.next_multiple_of(PAD_BLOCK_BYTES), 0);
        let (_, old) = use_of(4, 40, 3);
        bytes.extend_from_slice(&old[old.len() / 2..]);
        let error = journal::decode_record(&bytes[end..], Accept::Stamped(new_stamp))
            .expect_err("not a record");
        assert_eq!(tail_end(&bytes, end, error), TailEnd::Clean);
        // A record of the earlier use right at the end (the new records
        // ended on a block boundary).
        let (_, mut aligned) = use_of(9, 1, 2);
        let end = aligned.len();
        aligned.extend_from_slice(&old);
        let error = journal::decode_record(&aligned[end..], Accept::Stamped(new_stamp))
            .expect_err("another use");
        assert!(matches!(error, DecodeError::OtherUse(_)));
        assert_eq!(tail_end(&aligned, end, error), TailEnd::Clean);
        // Half a record of this use, then zeros: torn, then clean.
        let (_, mut torn) = use_of(9, 2, 2);
        let end = torn.len();
        torn.extend_from_slice(&500u32.to_le_bytes());
        torn.extend_from_slice(&[7u8; 40]);
        torn.resize(3 * PAD_BLOCK_BYTES, 0);
        let error =
            journal::decode_record(&torn[end..], Accept::Stamped(new_stamp)).expect_err("torn");
        assert_eq!(tail_end(&torn, end, error), TailEnd::Torn);
    }

    #[test]
    fn a_record_planted_for_a_later_use_is_not_replayed() {
        // A client guesses the sequence a file will have when it is reused
        // and plants a record for it; the file is reused as that sequence.
        let guessed = FileStamp {
            sequence: 12,
            nonce: 0x5eed,
        };
        let mut planted = Vec::new();
        encode_record(&mut planted, RecordKind::Delete, 99, guessed, &[]);
        let (_, mut old_use) = use_of(3, 0, 0);
        let old_stamp = FileStamp::new_use(3);
        encode_record(&mut old_use, RecordKind::Append, 1, old_stamp, &planted);
        // The reused file's new records overwrite the start only.
        let new_stamp = FileStamp::new_use(12);
        let mut bytes = Vec::new();
        encode_record(
            &mut bytes,
            RecordKind::Seal,
            1,
            new_stamp,
            &1u64.to_le_bytes(),
        );
        let end = bytes.len();
        bytes.resize(PAD_BLOCK_BYTES, 0);
        bytes.extend_from_slice(&old_use);
        let accept = Accept::Stamped(new_stamp);
        assert_eq!(classify(&bytes, 12), FileUse::Records { accept, first: 0 });
        assert_eq!(journal::find_next_valid_record(&bytes, end, accept), None);
    }
}
