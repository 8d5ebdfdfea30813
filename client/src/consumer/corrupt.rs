//! What a consumer does with a stored batch it cannot decode (issue 11,
//! item 4): stop the partition at it, or skip exactly its offsets.

/// What [`crate::Consumer`] does with a *corrupt batch*: one whose header
/// and CRC are sound, so its offsets are known and it is stored as its
/// producer sent it, but whose records cannot be decoded (bad framing, a
/// compressed block that does not decompress or is a decompression bomb,
/// a record count that lies). Brokers refuse such batches on produce; one
/// can still be in a log written by an older broker or straight to a
/// store. Reading it again gives the same error, so retrying cannot help.
///
/// The default is [`CorruptBatchPolicy::Fail`], as Kafka's consumer does:
/// the batch holds records a producer had acknowledged, and skipping them
/// silently would lose data with nobody deciding to. Every record before
/// the batch is still delivered; then `recv` returns
/// [`crate::ClientError::CorruptBatch`] naming the topic, partition and
/// the batch's offsets, the partition stops (the others go on), and the
/// application decides: seek to the error's `end_offset` to skip it, or
/// stop and investigate. [`CorruptBatchPolicy::Skip`] is for applications
/// that prefer availability to those records: each skipped batch is
/// logged at error level with its offsets and counted
/// ([`crate::Consumer::skipped_corrupt_batches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CorruptBatchPolicy {
    /// Deliver the records before it, then return the error and stop the
    /// partition until the application seeks.
    #[default]
    Fail,
    /// Log it with its offsets, count it, and go on after it.
    Skip,
}
