//! Validation of a compressed batch's records (issue 11, item 4).
//!
//! [`super::validate`] checks the header, the CRC and, for an uncompressed
//! batch, the framing of every record; a compressed batch's records are a
//! block it cannot see into. A producer's compressed batch whose header
//! claims a million records, whose block is garbage or a decompression
//! bomb, or whose records are badly framed would then be acknowledged with
//! its offsets taken, and every consumer would fail on it. The broker's
//! produce path therefore decompresses each compressed batch once and
//! checks what Kafka's `LogValidator` checks of one:
//!
//! - the block decompresses, to at most the limit given (never more than
//!   [`MAX_UNCOMPRESSED_RECORDS_BYTES`], what consumers decode); an lz4
//!   block may not declare a size lz4 cannot expand its bytes to, so a
//!   76-byte batch cannot make the broker allocate 64 MiB;
//! - it holds exactly `record_count` records, each well framed, with no
//!   trailing bytes;
//! - each record's offset delta is its index in the batch, so every record
//!   lies inside the offsets the header takes (`base .. base + count`);
//! - each record's timestamp is in the accepted range and the largest is
//!   the header's `max_timestamp`, as for an uncompressed batch.
//!
//! The records are walked by the same function as an uncompressed batch's
//! (`check_record_sequence`), so both kinds are held to the same rules.
//!
//! Stores do not call this: they hold batches as opaque bytes and check
//! the CRC only; consumers meet what bypassed a broker (see the SDK's
//! `CorruptBatchPolicy`).

use super::HEADER_BYTES;
use super::{check_record_sequence, read_u32, BatchError, BatchHeader, Compression};
use crate::limits::MAX_UNCOMPRESSED_RECORDS_BYTES;
use std::cell::RefCell;
use std::io::Read;

/// Most output bytes an lz4 block expands one input byte to: a match's
/// length grows by 255 per extension byte. A block declaring more than
/// this ratio of its size (plus [`LZ4_RATIO_SLACK_BYTES`]) is not lz4.
const LZ4_MAX_EXPANSION: usize = 255;
/// Allowance for a tiny block's fixed overhead in the ratio check.
const LZ4_RATIO_SLACK_BYTES: usize = 64;

/// Checks the records of a batch [`super::validate`] accepted: for a
/// compressed batch, decompresses them (to at most
/// `max_uncompressed_bytes`, capped at [`MAX_UNCOMPRESSED_RECORDS_BYTES`])
/// and walks them; an uncompressed batch was already walked by
/// `validate` and passes as it is.
pub fn validate_compressed(
    batch: &[u8],
    header: &BatchHeader,
    max_uncompressed_bytes: usize,
) -> Result<(), BatchError> {
    validate_compressed_keyed(batch, header, max_uncompressed_bytes, false)
}

/// [`validate_compressed`]; with `keys_required` (a compacted topic) a
/// record without a key is [`BatchError::KeylessRecord`].
pub fn validate_compressed_keyed(
    batch: &[u8],
    header: &BatchHeader,
    max_uncompressed_bytes: usize,
    keys_required: bool,
) -> Result<(), BatchError> {
    if header.compression == Compression::None {
        return Ok(());
    }
    let Some(block) = batch.get(HEADER_BYTES..) else {
        return Err(BatchError::Truncated {
            needed: HEADER_BYTES,
            available: batch.len(),
        });
    };
    let limit = max_uncompressed_bytes.min(MAX_UNCOMPRESSED_RECORDS_BYTES);
    let records = decompress_bounded(header.compression, block, limit)?;
    check_record_sequence(&records, header, keys_required)
}

/// Decompresses a records block to at most `limit` bytes; more is a
/// [`BatchError::DecompressionBomb`].
pub(super) fn decompress_bounded(
    compression: Compression,
    block: &[u8],
    limit: usize,
) -> Result<Vec<u8>, BatchError> {
    match compression {
        Compression::None => Ok(block.to_vec()),
        Compression::Lz4 => decompress_lz4(block, limit),
        Compression::Zstd => decompress_zstd(block, limit),
    }
}

fn decompress_lz4(block: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    if block.len() < 4 {
        return Err(BatchError::Decompression("lz4 block too short".into()));
    }
    let declared = read_u32(block, 0) as usize;
    if declared > limit {
        return Err(BatchError::DecompressionBomb { limit_bytes: limit });
    }
    let possible = (block.len() - 4)
        .saturating_mul(LZ4_MAX_EXPANSION)
        .saturating_add(LZ4_RATIO_SLACK_BYTES);
    if declared > possible {
        return Err(BatchError::Decompression(format!(
            "lz4 block of {} bytes declares {declared} bytes, more than lz4 expands it to",
            block.len()
        )));
    }
    let output = lz4_flex::block::decompress_size_prepended(block)
        .map_err(|error| BatchError::Decompression(error.to_string()))?;
    if output.len() != declared {
        return Err(BatchError::Decompression(format!(
            "lz4 block declares {declared} bytes and holds {}",
            output.len()
        )));
    }
    Ok(output)
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one per
    /// batch (about 100 KiB of tables) cost as much as decompressing a
    /// 100 KiB batch.
    static ZSTD_CONTEXT: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn with_zstd_context<T>(
    work: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    ZSTD_CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let context = match slot.as_mut() {
            Some(context) => context,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        work(context)
    })
}

fn decompress_zstd(block: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    // A frame that states its size (the SDK's always do) decompresses in
    // one call into a buffer of that size; a frame holding more fails.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(block) {
        if size > limit as u64 {
            return Err(BatchError::DecompressionBomb { limit_bytes: limit });
        }
        return with_zstd_context(|context| context.decompress(block, size as usize))
            .map_err(|error| BatchError::Decompression(error.to_string()));
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(block)
        .map_err(|error| BatchError::Decompression(error.to_string()))?;
    let mut output = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut output)
        .map_err(|error| BatchError::Decompression(error.to_string()))?;
    if output.len() > limit {
        return Err(BatchError::DecompressionBomb { limit_bytes: limit });
    }
    Ok(output)
}

#[cfg(test)]
mod tests;
