//! A subscription's cursor on one partition: the *mark-delete* offset (every
//! message below it is acknowledged) and the acknowledged ranges above it,
//! plus what must survive a failover besides (delivery counts of
//! redelivered messages, parked keys). Kept as ranges, not one entry per
//! message, so memory and the persisted size grow with the number of gaps,
//! which the dispatcher bounds by its window.
//!
//! The persisted form travels in `PartitionOffset.cursor` to the
//! subscription's coordinator (ADR 0011). Layout, little-endian, versioned:
//!
//! ```text
//! version u8 (= 1) | epoch u64 | subscription_created_at_ms u64 | mark_delete u64
//! range_count varint, then per range: gap_from_previous_end varint, length varint
//! count_entries varint, then per entry: offset_minus_mark_delete varint, deliveries varint
//! parked_key_count varint, then per key: key_hash u64
//! version 2 only (transactional acknowledgements pending, ADR 0016 §6):
//! transaction_count varint, then per transaction:
//!   id_length varint, transactional_id (UTF-8), producer_id u64, epoch u16,
//!   offset_count varint, then per offset: gap varint, deliveries varint
//!   (gap: from the mark-delete offset for the first, from the previous
//!   offset, at least 1, for the others)
//! ```
//!
//! A cursor without pending acknowledgements is written as version 1, so a
//! broker of the previous release still reads it; version 1 reads as a
//! cursor with nothing pending.

use std::collections::{BTreeMap, BTreeSet};

/// Without a pending section.
const VERSION: u8 = 1;
/// With the pending section of transactional acknowledgements.
const VERSION_PENDING: u8 = 2;
/// Fixed part: version, epoch, created-at, mark-delete.
const FIXED_BYTES: usize = 1 + 8 + 8 + 8;
/// Most ranges, delivery counts or parked keys a decoded cursor may hold;
/// a cursor claiming more is refused as corrupt (the dispatcher's window
/// keeps real ones far below this).
pub const MAX_DECODED_ENTRIES: u64 = 10_000_000;

/// Acknowledged offsets at or above a mark-delete offset, as disjoint
/// half-open ranges `[start, end)` that never touch (adjacent ones merge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedRanges {
    mark_delete: u64,
    /// start → end, every start > mark_delete.
    ranges: BTreeMap<u64, u64>,
}

impl AckedRanges {
    pub fn new(mark_delete: u64) -> Self {
        Self {
            mark_delete,
            ranges: BTreeMap::new(),
        }
    }

    /// Every offset below this is acknowledged.
    pub fn mark_delete(&self) -> u64 {
        self.mark_delete
    }

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(start, end)| (*start, *end))
    }

    pub fn contains(&self, offset: u64) -> bool {
        if offset < self.mark_delete {
            return true;
        }
        self.ranges
            .range(..=offset)
            .next_back()
            .is_some_and(|(_, end)| offset < *end)
    }

    /// Marks `offset` acknowledged; returns false if it already was.
    pub fn insert(&mut self, offset: u64) -> bool {
        self.insert_range(offset, offset.saturating_add(1))
    }

    /// Marks `[start, end)` acknowledged; returns false if all of it
    /// already was.
    pub fn insert_range(&mut self, start: u64, end: u64) -> bool {
        let start = start.max(self.mark_delete);
        if start >= end {
            return false;
        }
        let mut new_start = start;
        let mut new_end = end;
        // Merge with a range that starts before and reaches `start`.
        if let Some((&previous_start, &previous_end)) = self.ranges.range(..=start).next_back() {
            if previous_end >= end {
                return false;
            }
            if previous_end >= start {
                new_start = previous_start;
                self.ranges.remove(&previous_start);
            }
        }
        // Swallow ranges starting inside [start, end].
        let swallowed: Vec<(u64, u64)> = self
            .ranges
            .range(start..=end)
            .map(|(start, end)| (*start, *end))
            .collect();
        for (swallowed_start, swallowed_end) in swallowed {
            self.ranges.remove(&swallowed_start);
            new_end = new_end.max(swallowed_end);
        }
        if new_start <= self.mark_delete {
            self.mark_delete = new_end;
        } else {
            self.ranges.insert(new_start, new_end);
        }
        self.absorb_front();
        true
    }

    fn absorb_front(&mut self) {
        while let Some((&start, &end)) = self.ranges.first_key_value() {
            if start > self.mark_delete {
                break;
            }
            self.ranges.remove(&start);
            self.mark_delete = self.mark_delete.max(end);
        }
    }
}

/// Everything of a cursor that is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorSnapshot {
    /// Ownership epoch of the partition owner that wrote it; a coordinator
    /// refuses a cursor older than the one it holds.
    pub epoch: u64,
    /// The subscription's creation time: a cursor of an earlier
    /// subscription of the same name is ignored.
    pub subscription_created_at_ms: u64,
    pub acked: AckedRanges,
    /// Deliveries so far of unacknowledged messages delivered more than
    /// once (offset → count).
    pub delivery_counts: BTreeMap<u64, u32>,
    /// Key hashes parked by a key-shared subscription: their messages go
    /// to the dead-letter topic in order.
    pub parked_keys: BTreeSet<u64>,
    /// Acknowledgements pending in open transactions, one entry per
    /// transaction (distinct offsets across entries, none acknowledged).
    pub pending: Vec<PendingTransaction>,
}

/// Messages acknowledged inside one transaction, waiting for its marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransaction {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    /// Offset → deliveries so far (kept if the transaction aborts).
    pub offsets: BTreeMap<u64, u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is {0} bytes, shorter than its fixed header")]
    Truncated(usize),
    #[error("cursor version {0} is not known (expected {VERSION} or {VERSION_PENDING})")]
    Version(u8),
    #[error("cursor field {0} is malformed")]
    Malformed(&'static str),
}

impl CursorSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            FIXED_BYTES + 4 + self.acked.range_count() * 4 + self.delivery_counts.len() * 4,
        );
        out.push(if self.pending.is_empty() {
            VERSION
        } else {
            VERSION_PENDING
        });
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.subscription_created_at_ms.to_le_bytes());
        out.extend_from_slice(&self.acked.mark_delete().to_le_bytes());
        put_varint(&mut out, self.acked.range_count() as u64);
        let mut previous_end = self.acked.mark_delete();
        for (start, end) in self.acked.ranges() {
            put_varint(&mut out, start - previous_end);
            put_varint(&mut out, end - start);
            previous_end = end;
        }
        put_varint(&mut out, self.delivery_counts.len() as u64);
        for (offset, count) in &self.delivery_counts {
            put_varint(&mut out, offset.saturating_sub(self.acked.mark_delete()));
            put_varint(&mut out, u64::from(*count));
        }
        put_varint(&mut out, self.parked_keys.len() as u64);
        for key in &self.parked_keys {
            out.extend_from_slice(&key.to_le_bytes());
        }
        if !self.pending.is_empty() {
            self.encode_pending(&mut out);
        }
        out
    }

    /// Forgets pending acknowledgements of offsets now acknowledged (an
    /// operator's eviction moved the mark past them): a later marker finds
    /// nothing to resolve for them.
    pub fn drop_pending_acknowledged(&mut self) {
        let acked = &self.acked;
        for transaction in &mut self.pending {
            transaction
                .offsets
                .retain(|offset, _| !acked.contains(*offset));
        }
        self.pending
            .retain(|transaction| !transaction.offsets.is_empty());
    }

    fn encode_pending(&self, out: &mut Vec<u8>) {
        put_varint(out, self.pending.len() as u64);
        for transaction in &self.pending {
            put_varint(out, transaction.transactional_id.len() as u64);
            out.extend_from_slice(transaction.transactional_id.as_bytes());
            out.extend_from_slice(&(transaction.producer_id as u64).to_le_bytes());
            out.extend_from_slice(&(transaction.epoch as u16).to_le_bytes());
            put_varint(out, transaction.offsets.len() as u64);
            let mut previous = self.acked.mark_delete();
            for (offset, deliveries) in &transaction.offsets {
                put_varint(out, offset.saturating_sub(previous));
                put_varint(out, u64::from(*deliveries));
                previous = *offset;
            }
        }
    }

    /// The epoch of an encoded cursor, without decoding the rest.
    pub fn peek_epoch(bytes: &[u8]) -> Result<u64, CursorError> {
        if bytes.len() < FIXED_BYTES {
            return Err(CursorError::Truncated(bytes.len()));
        }
        if bytes[0] != VERSION && bytes[0] != VERSION_PENDING {
            return Err(CursorError::Version(bytes[0]));
        }
        Ok(read_u64(&bytes[1..9]))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CursorError> {
        let epoch = Self::peek_epoch(bytes)?;
        let subscription_created_at_ms = read_u64(&bytes[9..17]);
        let mark_delete = read_u64(&bytes[17..25]);
        let mut reader = Reader {
            bytes,
            position: FIXED_BYTES,
        };
        let mut acked = AckedRanges::new(mark_delete);
        let range_count = reader.count("range count")?;
        let mut previous_end = mark_delete;
        for _ in 0..range_count {
            let gap = reader.varint("range gap")?;
            let length = reader.varint("range length")?;
            let start = previous_end
                .checked_add(gap)
                .ok_or(CursorError::Malformed("range gap"))?;
            let end = start
                .checked_add(length)
                .ok_or(CursorError::Malformed("range length"))?;
            if length == 0 || gap == 0 {
                return Err(CursorError::Malformed("range"));
            }
            acked.insert_range(start, end);
            previous_end = end;
        }
        let count_entries = reader.count("delivery count entries")?;
        let mut delivery_counts = BTreeMap::new();
        for _ in 0..count_entries {
            let offset = mark_delete
                .checked_add(reader.varint("delivery count offset")?)
                .ok_or(CursorError::Malformed("delivery count offset"))?;
            let count = u32::try_from(reader.varint("delivery count")?)
                .map_err(|_| CursorError::Malformed("delivery count"))?;
            delivery_counts.insert(offset, count);
        }
        let parked_count = reader.count("parked key count")?;
        let mut parked_keys = BTreeSet::new();
        for _ in 0..parked_count {
            parked_keys.insert(reader.u64("parked key")?);
        }
        let pending = if bytes[0] == VERSION_PENDING {
            decode_pending(&mut reader, &acked)?
        } else {
            Vec::new()
        };
        if reader.position != bytes.len() {
            return Err(CursorError::Malformed("trailing bytes"));
        }
        Ok(Self {
            epoch,
            subscription_created_at_ms,
            acked,
            delivery_counts,
            parked_keys,
            pending,
        })
    }
}

/// The pending section: every transaction well-formed, offsets above the
/// mark-delete, not acknowledged, and in one transaction only.
fn decode_pending(
    reader: &mut Reader<'_>,
    acked: &AckedRanges,
) -> Result<Vec<PendingTransaction>, CursorError> {
    let count = reader.count("pending transaction count")?;
    if count == 0 {
        return Err(CursorError::Malformed("empty pending section"));
    }
    let mut seen = BTreeSet::new();
    let mut pending = Vec::new();
    for _ in 0..count {
        let id_length = reader.count("transactional id length")?;
        if id_length == 0 || id_length > sluice_proto::limits::MAX_NAME_BYTES as u64 {
            return Err(CursorError::Malformed("transactional id length"));
        }
        let id_bytes = reader.take("transactional id", id_length as usize)?;
        let transactional_id = String::from_utf8(id_bytes.to_vec())
            .map_err(|_| CursorError::Malformed("transactional id"))?;
        let producer_id = reader.u64("producer id")? as i64;
        let epoch = reader.u16("producer epoch")? as i16;
        if producer_id < 0 || epoch < 0 || epoch == i16::MAX {
            return Err(CursorError::Malformed("pending producer id or epoch"));
        }
        let offset_count = reader.count("pending offset count")?;
        if offset_count == 0 {
            return Err(CursorError::Malformed(
                "pending transaction without offsets",
            ));
        }
        let mut offsets = BTreeMap::new();
        let mut previous = acked.mark_delete();
        for index in 0..offset_count {
            let gap = reader.varint("pending offset")?;
            if index > 0 && gap == 0 {
                return Err(CursorError::Malformed("pending offsets out of order"));
            }
            let offset = previous
                .checked_add(gap)
                .ok_or(CursorError::Malformed("pending offset"))?;
            let deliveries = u32::try_from(reader.varint("pending deliveries")?)
                .map_err(|_| CursorError::Malformed("pending deliveries"))?;
            if acked.contains(offset) || !seen.insert(offset) {
                return Err(CursorError::Malformed(
                    "pending offset already acknowledged",
                ));
            }
            offsets.insert(offset, deliveries);
            previous = offset;
        }
        pending.push(PendingTransaction {
            transactional_id,
            producer_id,
            epoch,
            offsets,
        });
    }
    Ok(pending)
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(buffer)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn varint(&mut self, field: &'static str) -> Result<u64, CursorError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.position)
                .ok_or(CursorError::Malformed(field))?;
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CursorError::Malformed(field))
    }

    fn count(&mut self, field: &'static str) -> Result<u64, CursorError> {
        let count = self.varint(field)?;
        // Each entry takes at least one byte: a count beyond what is left
        // is a lie, refused before anything is allocated for it.
        if count > MAX_DECODED_ENTRIES || count > (self.bytes.len() - self.position) as u64 {
            return Err(CursorError::Malformed(field));
        }
        Ok(count)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, CursorError> {
        Ok(read_u64(self.take(field, 8)?))
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, CursorError> {
        let slice = self.take(field, 2)?;
        Ok(u16::from_le_bytes([slice[0], slice[1]]))
    }

    fn take(&mut self, field: &'static str, length: usize) -> Result<&[u8], CursorError> {
        let end = self
            .position
            .checked_add(length)
            .ok_or(CursorError::Malformed(field))?;
        let slice = self
            .bytes
            .get(self.position..end)
            .ok_or(CursorError::Malformed(field))?;
        self.position = end;
        Ok(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_merge_and_advance_the_mark() {
        let mut acked = AckedRanges::new(10);
        assert!(acked.insert(12));
        assert!(acked.insert(14));
        assert!(acked.insert(13));
        assert_eq!(acked.mark_delete(), 10);
        assert_eq!(acked.ranges().collect::<Vec<_>>(), vec![(12, 15)]);
        assert!(acked.insert(11));
        assert_eq!(acked.mark_delete(), 10);
        assert!(acked.insert(10));
        assert_eq!(acked.mark_delete(), 15);
        assert_eq!(acked.range_count(), 0);
        assert!(!acked.insert(3), "below the mark is already acknowledged");
        assert!(!acked.insert(14));
    }

    #[test]
    fn contains_and_counts() {
        let mut acked = AckedRanges::new(5);
        acked.insert_range(8, 10);
        acked.insert(20);
        assert!(acked.contains(4));
        assert!(!acked.contains(5));
        assert!(acked.contains(8) && acked.contains(9) && !acked.contains(10));
        assert!(acked.contains(20) && !acked.contains(21));
    }

    #[test]
    fn a_range_bridging_two_merges_them() {
        let mut acked = AckedRanges::new(0);
        acked.insert_range(10, 12);
        acked.insert_range(20, 22);
        acked.insert_range(11, 21);
        assert_eq!(acked.ranges().collect::<Vec<_>>(), vec![(10, 22)]);
        acked.insert_range(0, 10);
        assert_eq!(acked.mark_delete(), 22);
    }

    /// Random acknowledgements against a plain set: the ranges always
    /// describe exactly the acknowledged offsets.
    #[test]
    fn matches_a_set_under_random_acks() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _round in 0..50 {
            let mut acked = AckedRanges::new(100);
            let mut set = std::collections::BTreeSet::new();
            for _ in 0..200 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let offset = 100 + seed % 120;
                let length = 1 + (seed >> 20) % 3;
                acked.insert_range(offset, offset + length);
                set.extend(offset..offset + length);
                for probe in 95..230 {
                    assert_eq!(
                        acked.contains(probe),
                        probe < 100 || set.contains(&probe),
                        "offset {probe}"
                    );
                }
                let expected_mark = (100..).find(|offset| !set.contains(offset)).unwrap_or(100);
                assert_eq!(acked.mark_delete(), expected_mark);
            }
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let mut acked = AckedRanges::new(1_000);
        acked.insert_range(1_005, 1_007);
        acked.insert(2_000);
        let snapshot = CursorSnapshot {
            epoch: 7,
            subscription_created_at_ms: 1_700_000_000_000,
            acked,
            delivery_counts: BTreeMap::from([(1_001, 3), (1_500, 2)]),
            parked_keys: BTreeSet::from([42, u64::MAX]),
            pending: Vec::new(),
        };
        let bytes = snapshot.encode();
        assert_eq!(CursorSnapshot::peek_epoch(&bytes), Ok(7));
        assert_eq!(CursorSnapshot::decode(&bytes), Ok(snapshot));
    }

    #[test]
    fn corrupt_cursors_are_errors_not_panics() {
        let snapshot = CursorSnapshot {
            epoch: 1,
            subscription_created_at_ms: 1,
            acked: AckedRanges::new(5),
            delivery_counts: BTreeMap::new(),
            parked_keys: BTreeSet::new(),
            pending: Vec::new(),
        };
        let bytes = snapshot.encode();
        assert!(matches!(
            CursorSnapshot::decode(&bytes[..10]),
            Err(CursorError::Truncated(10))
        ));
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert_eq!(
            CursorSnapshot::decode(&wrong_version),
            Err(CursorError::Version(9))
        );
        let mut lying_count = bytes[..FIXED_BYTES].to_vec();
        put_varint(&mut lying_count, u64::MAX);
        assert!(CursorSnapshot::decode(&lying_count).is_err());
        // Every prefix and a sweep of garbage tails decode or fail cleanly.
        for cut in 0..bytes.len() {
            let _ = CursorSnapshot::decode(&bytes[..cut]);
        }
        let mut seed = 99u64;
        for _ in 0..2_000 {
            let mut garbage = bytes[..FIXED_BYTES].to_vec();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                garbage.push((seed >> 33) as u8);
            }
            let _ = CursorSnapshot::decode(&garbage);
        }
    }

    fn with_pending() -> CursorSnapshot {
        let mut acked = AckedRanges::new(100);
        acked.insert(103);
        CursorSnapshot {
            epoch: 3,
            subscription_created_at_ms: 9,
            acked,
            delivery_counts: BTreeMap::from([(101, 2)]),
            parked_keys: BTreeSet::from([7]),
            pending: vec![
                PendingTransaction {
                    transactional_id: "worker-1".into(),
                    producer_id: 1 << 40,
                    epoch: 5,
                    offsets: BTreeMap::from([(100, 1), (102, 3)]),
                },
                PendingTransaction {
                    transactional_id: "w\u{e9}".into(),
                    producer_id: 0,
                    epoch: 0,
                    offsets: BTreeMap::from([(104, 1)]),
                },
            ],
        }
    }

    #[test]
    fn version_2_round_trips_its_pending_section() {
        let snapshot = with_pending();
        let bytes = snapshot.encode();
        assert_eq!(bytes[0], VERSION_PENDING);
        assert_eq!(CursorSnapshot::peek_epoch(&bytes), Ok(3));
        assert_eq!(CursorSnapshot::decode(&bytes), Ok(snapshot));
    }

    #[test]
    fn a_cursor_without_pending_acks_stays_version_1_and_old_cursors_read() {
        let mut snapshot = with_pending();
        snapshot.pending.clear();
        let bytes = snapshot.encode();
        assert_eq!(bytes[0], VERSION, "readable by the previous release");
        assert_eq!(CursorSnapshot::decode(&bytes), Ok(snapshot.clone()));
        // A version-1 cursor with a pending section appended is refused:
        // the section belongs to version 2 only.
        let mut with_tail = bytes.clone();
        with_pending().encode_pending(&mut with_tail);
        assert!(CursorSnapshot::decode(&with_tail).is_err());
        // Version 2 with no transactions is not written, and refused.
        let mut empty_section = bytes;
        empty_section[0] = VERSION_PENDING;
        put_varint(&mut empty_section, 0);
        assert_eq!(
            CursorSnapshot::decode(&empty_section),
            Err(CursorError::Malformed("empty pending section"))
        );
    }

    #[test]
    fn corrupt_pending_sections_are_refused() {
        let refused = |change: &dyn Fn(&mut CursorSnapshot)| {
            let mut snapshot = with_pending();
            change(&mut snapshot);
            CursorSnapshot::decode(&snapshot.encode()).is_err()
        };
        // An offset acknowledged already, or pending in two transactions.
        assert!(refused(&|s| {
            s.pending[0].offsets.insert(103, 1);
        }));
        assert!(refused(&|s| {
            s.pending[1].offsets.insert(100, 1);
        }));
        // Offsets out of order (a zero gap after the first).
        let mut plain = with_pending();
        plain.pending.clear();
        let mut out_of_order = plain.encode();
        out_of_order[0] = VERSION_PENDING;
        put_varint(&mut out_of_order, 1);
        put_varint(&mut out_of_order, 1);
        out_of_order.push(b'w');
        out_of_order.extend_from_slice(&1u64.to_le_bytes());
        out_of_order.extend_from_slice(&0u16.to_le_bytes());
        put_varint(&mut out_of_order, 2);
        for _ in 0..2 {
            put_varint(&mut out_of_order, 0);
            put_varint(&mut out_of_order, 1);
        }
        assert_eq!(
            CursorSnapshot::decode(&out_of_order),
            Err(CursorError::Malformed("pending offsets out of order"))
        );
        assert!(refused(&|s| s.pending[0].producer_id = -1));
        assert!(refused(&|s| s.pending[0].epoch = -2));
        assert!(refused(&|s| s.pending[0].epoch = i16::MAX));
        assert!(refused(&|s| s.pending[0].transactional_id.clear()));
        assert!(refused(&|s| s.pending[0].transactional_id = "x".repeat(250)));
        assert!(refused(&|s| s.pending[1].offsets.clear()));
        // Not UTF-8.
        let bytes = with_pending().encode();
        let at = bytes
            .windows(8)
            .position(|window| window == b"worker-1")
            .expect("id in the bytes");
        let mut not_utf8 = bytes.clone();
        not_utf8[at] = 0xff;
        assert_eq!(
            CursorSnapshot::decode(&not_utf8),
            Err(CursorError::Malformed("transactional id"))
        );
        // Every truncation and random damage decode or fail, never panic.
        for cut in 0..bytes.len() {
            assert!(CursorSnapshot::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut seed = 7u64;
        for _ in 0..5_000 {
            let mut damaged = bytes.clone();
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let index = FIXED_BYTES + (seed >> 33) as usize % (bytes.len() - FIXED_BYTES);
            damaged[index] = (seed >> 17) as u8;
            if let Ok(decoded) = CursorSnapshot::decode(&damaged) {
                let mut offsets = BTreeSet::new();
                for transaction in &decoded.pending {
                    for offset in transaction.offsets.keys() {
                        assert!(!decoded.acked.contains(*offset));
                        assert!(offsets.insert(*offset), "an offset in two transactions");
                    }
                }
            }
        }
    }
}
