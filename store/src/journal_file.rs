//! The journal file being written: appends at its logical end, either
//! through the page cache or with direct I/O (`O_DIRECT`, the default).
//!
//! Journal data is written once, fsynced, and read back only by recovery,
//! so the page cache buys it nothing; yet on the machines measured, filling
//! fresh page-cache pages cost the store more CPU than everything else it
//! did (BENCHMARKS.md: a buffered 1 GiB journal took 1.1–1.7 CPU-seconds
//! of kernel time, a direct one 0.15). With direct I/O the records are
//! copied into one reused, block-aligned buffer (hot in the CPU cache) and
//! written from it by the device; `fdatasync` is still called after every
//! group, for the device's write cache and the file's extent metadata.
//!
//! Direct writes must start and end on block boundaries, so each write
//! starts at the block holding the logical end and rewrites that block's
//! bytes already written (byte for byte the same, so a write torn at a
//! sector boundary leaves them intact, as the kernel's own writeback of a
//! partly written page does) and pads the last block with zeros; the zeros
//! after the logical end are what recovery already expects of a
//! preallocated journal file.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment of direct writes (offset, length and memory): the largest
/// logical block size in use, so it also holds on 512-byte devices.
pub(crate) const BLOCK_BYTES: usize = 4096;
/// Size of the aligned staging buffer: writes go out in pieces of at most
/// this much. A multiple of `BLOCK_BYTES`.
pub(crate) const DIRECT_BUFFER_BYTES: usize = 1024 * 1024;

pub(crate) struct JournalFile {
    file: File,
    /// Logical end: where the next record goes.
    position: u64,
    /// Present when the file was opened with `O_DIRECT`.
    direct: Option<DirectBuffer>,
}

/// A block-aligned window of `DIRECT_BUFFER_BYTES` inside an ordinary
/// vector (over-allocated by one block to find the aligned start); all
/// zeros when new.
pub(crate) struct DirectBuffer {
    storage: Vec<u8>,
    start: usize,
    /// Bytes of the window in use: the partial block at the logical end,
    /// then whatever is being written.
    filled: usize,
}

impl DirectBuffer {
    pub(crate) fn new() -> Self {
        let storage = vec![0u8; DIRECT_BUFFER_BYTES + BLOCK_BYTES];
        let start = storage.as_ptr().align_offset(BLOCK_BYTES);
        assert!(
            start < BLOCK_BYTES,
            "a block-aligned start within one block"
        );
        Self {
            storage,
            start,
            filled: 0,
        }
    }

    pub(crate) fn window(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + DIRECT_BUFFER_BYTES]
    }
}

/// Opens `path` with `options`, adding `O_DIRECT` when `direct_io` is set
/// and the file system allows it (else through the page cache, with a
/// warning); says whether it is direct.
pub(crate) fn open_maybe_direct(
    options: std::fs::OpenOptions,
    path: &Path,
    direct_io: bool,
) -> std::io::Result<(File, bool)> {
    if direct_io {
        let mut direct_options = options.clone();
        direct_options.custom_flags(libc::O_DIRECT);
        match direct_options.open(path) {
            Ok(file) => return Ok((file, true)),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), %error, "direct I/O refused by the file system; writing through the page cache");
            }
            Err(error) => return Err(error),
        }
    }
    Ok((options.open(path)?, false))
}

impl JournalFile {
    /// Creates (truncating) the file at `path`, with direct I/O when
    /// `direct_io` is set and the file system allows it (otherwise through
    /// the page cache, with a warning).
    pub(crate) fn create(path: &Path, direct_io: bool) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        Self::open(options, path, direct_io)
    }

    /// Opens the existing file at `path` (a reused spare, see
    /// `journal_spares.rs`) to write over from its start, like
    /// [`Self::create`] without truncating it.
    pub(crate) fn open_reused(path: &Path, direct_io: bool) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        Self::open(options, path, direct_io)
    }

    fn open(options: std::fs::OpenOptions, path: &Path, direct_io: bool) -> std::io::Result<Self> {
        let (file, direct) = open_maybe_direct(options, path, direct_io)?;
        Ok(Self {
            file,
            position: 0,
            direct: direct.then(DirectBuffer::new),
        })
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The logical end of the file (where the next record goes).
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Writes `slices`, in order, at the logical end. When this returns
    /// they are in the file (not yet durable: see `sync_data`).
    pub(crate) fn append(&mut self, slices: &[&[u8]]) -> std::io::Result<()> {
        let written: usize = slices.iter().map(|slice| slice.len()).sum();
        if self.direct.is_some() {
            self.append_direct(slices)?;
        } else {
            let mut io_slices: Vec<IoSlice<'_>> = slices
                .iter()
                .filter(|slice| !slice.is_empty())
                .map(|slice| IoSlice::new(slice))
                .collect();
            // Through the page cache the file is written at its cursor,
            // which is the logical end: journal files are only ever
            // written from their start, in order.
            write_all_vectored(&self.file, &mut io_slices)?;
        }
        self.position += written as u64;
        Ok(())
    }

    fn append_direct(&mut self, slices: &[&[u8]]) -> std::io::Result<()> {
        let Some(buffer) = self.direct.as_mut() else {
            return Ok(());
        };
        // The buffer starts with the partial block at the logical end (the
        // bytes of it already in the file), so it maps to the file from the
        // block boundary below the end.
        let mut buffer_position = self.position - (buffer.filled as u64);
        for slice in slices {
            let mut rest: &[u8] = slice;
            while !rest.is_empty() {
                let filled = buffer.filled;
                let room = DIRECT_BUFFER_BYTES - filled;
                let take = room.min(rest.len());
                buffer.window()[filled..filled + take].copy_from_slice(&rest[..take]);
                buffer.filled += take;
                rest = &rest[take..];
                if buffer.filled == DIRECT_BUFFER_BYTES {
                    self.file.write_all_at(buffer.window(), buffer_position)?;
                    buffer_position += DIRECT_BUFFER_BYTES as u64;
                    buffer.filled = 0;
                }
            }
        }
        let filled = buffer.filled;
        if filled == 0 {
            return Ok(());
        }
        // The last, partial piece: padded with zeros to whole blocks.
        let padded = filled.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        buffer.window()[filled..padded].fill(0);
        self.file
            .write_all_at(&buffer.window()[..padded], buffer_position)?;
        // Keep the partial last block at the front for the next write.
        let whole_blocks = filled / BLOCK_BYTES * BLOCK_BYTES;
        buffer.window().copy_within(whole_blocks..filled, 0);
        buffer.filled = filled - whole_blocks;
        Ok(())
    }

    /// `fdatasync`: everything appended so far is durable when it returns.
    pub(crate) fn sync_data(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Writes all of `slices` at the file's cursor (vectored, through the
/// page cache), retrying after partial writes and interruptions (a
/// vectored write may stop anywhere, also inside a slice).
fn write_all_vectored(mut file: &File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    // Empty slices would make a zero-length write look like "no progress".
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "journal write made no progress",
                ))
            }
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends pieces of awkward sizes (across blocks and across the
    /// staging buffer) and checks that the file holds exactly their
    /// concatenation followed by zeros, in both modes.
    #[test]
    fn appends_read_back_as_their_concatenation_then_zeros() {
        let directory = tempfile::tempdir().expect("temp dir");
        for direct_io in [true, false] {
            let path = directory.path().join(format!("journal-{direct_io}"));
            let mut file = JournalFile::create(&path, direct_io).expect("create");
            let mut expected = Vec::new();
            let mut seed = 7u32;
            for round in 0..40usize {
                let sizes = [
                    17usize,
                    1,
                    4095,
                    4096,
                    4097,
                    100_000,
                    3 * DIRECT_BUFFER_BYTES / 2 + 5,
                ];
                let size = sizes[round % sizes.len()];
                let piece: Vec<u8> = (0..size)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (seed >> 16) as u8 | 1
                    })
                    .collect();
                let header = [round as u8 | 0x80; 9];
                file.append(&[&header, &piece]).expect("append");
                expected.extend_from_slice(&header);
                expected.extend_from_slice(&piece);
                assert_eq!(file.position(), expected.len() as u64);
            }
            file.sync_data().expect("sync");
            drop(file);
            let written = std::fs::read(&path).expect("read back");
            assert!(written.len() >= expected.len());
            assert_eq!(
                &written[..expected.len()],
                &expected[..],
                "direct: {direct_io}"
            );
            assert!(
                written[expected.len()..].iter().all(|byte| *byte == 0),
                "only zeros after the logical end"
            );
        }
    }

    #[test]
    fn a_vectored_write_of_more_slices_than_one_writev_takes_writes_them_all() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("v");
        let mut file = JournalFile::create(&path, false).expect("create");
        // More slices than one writev takes (IOV_MAX is 1024 on Linux), of
        // varying sizes, so the loop has to resume after partial writes.
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|index| vec![(index % 251) as u8; 1 + (index as usize * 7) % 300])
            .collect();
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        file.append(&slices).expect("write");
        drop(file);
        assert_eq!(std::fs::read(&path).expect("read"), pieces.concat());
    }
}
