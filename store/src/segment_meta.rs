//! A segment's metadata on disk: two copies (`{id:020}.meta` and
//! `{id:020}.meta.copy`), each a JSON [`SegmentMeta`] carrying a CRC32C of
//! itself, so that garbage or a changed digit in one copy is detected and
//! repaired from the other ([`choose_meta`]), and a segment whose copies
//! are both unusable is reported damaged rather than forgotten.

use crate::error::StoreError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Durable identity and state of a segment (JSON). The checksum is
/// verified by re-encoding what was parsed, so a field added later must be
/// an `Option` skipped when `None` (older files then still verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentMeta {
    pub segment_id: u64,
    pub topic: String,
    pub partition: u32,
    pub base_offset: u64,
    /// Fence epoch: appends with an older writer epoch are refused.
    pub writer_epoch: u64,
    pub sealed: bool,
    /// `sluice.v1.Durability` value.
    pub durability: i32,
    /// Set at seal: the final end of the log (durable before the seal
    /// answered, in the segment file or the journal). Recovery never
    /// gives the segment a shorter end. Absent in files of older versions
    /// and for unsealed segments (the checkpoint records theirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_offset: Option<u64>,
    /// Set at seal: the log file's length in bytes at `end_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// CRC32C of the file's encoding with this field absent; only in
    /// files (`None` in memory and in journal records). Absent in files of
    /// older versions, which are then trusted as they parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u32>,
}

/// Path of the metadata file of `segment_id`.
pub fn meta_path(segments_dir: &Path, segment_id: u64) -> PathBuf {
    segments_dir.join(format!("{segment_id:020}.meta"))
}

/// Path of the second copy of the metadata file of `segment_id`.
pub fn meta_copy_path(segments_dir: &Path, segment_id: u64) -> PathBuf {
    segments_dir.join(format!("{segment_id:020}.meta.copy"))
}

/// The segment id a metadata file (either copy) is named for, if `name`
/// is such a file's name.
pub fn meta_file_segment_id(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix(".meta.copy")
        .or_else(|| name.strip_suffix(".meta"))?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn encode_unsigned(meta: &SegmentMeta) -> Result<Vec<u8>, StoreError> {
    let unsigned = SegmentMeta {
        checksum: None,
        ..meta.clone()
    };
    serde_json::to_vec_pretty(&unsigned).map_err(|error| {
        StoreError::io(
            "encode segment metadata",
            std::io::Error::other(error.to_string()),
        )
    })
}

/// The file contents for `meta`, with its checksum.
pub fn encode_meta(meta: &SegmentMeta) -> Result<Vec<u8>, StoreError> {
    let checksum = crc32c::crc32c(&encode_unsigned(meta)?);
    let signed = SegmentMeta {
        checksum: Some(checksum),
        ..meta.clone()
    };
    serde_json::to_vec_pretty(&signed).map_err(|error| {
        StoreError::io(
            "encode segment metadata",
            std::io::Error::other(error.to_string()),
        )
    })
}

/// Parses a metadata file of `segment_id` and checks its checksum and the
/// id it names; the metadata (checksum cleared) or what is wrong.
pub fn decode_meta(segment_id: u64, contents: &[u8]) -> Result<SegmentMeta, String> {
    let meta: SegmentMeta =
        serde_json::from_slice(contents).map_err(|error| format!("not valid metadata: {error}"))?;
    if let Some(recorded) = meta.checksum {
        let actual = encode_unsigned(&meta)
            .map(|bytes| crc32c::crc32c(&bytes))
            .map_err(|error| error.to_string())?;
        if actual != recorded {
            return Err(format!(
                "checksum mismatch (recorded {recorded:#010x}, contents {actual:#010x})"
            ));
        }
    }
    if meta.segment_id != segment_id {
        return Err(format!(
            "names segment {} but the file is named for {segment_id}",
            meta.segment_id
        ));
    }
    Ok(SegmentMeta {
        checksum: None,
        ..meta
    })
}

/// What reading one copy of a metadata file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCopy {
    Good(SegmentMeta),
    Missing,
    Bad(String),
}

impl MetaCopy {
    /// Reads and checks the copy at `path` of `segment_id`'s metadata.
    pub fn read(segment_id: u64, path: &Path) -> MetaCopy {
        match std::fs::read(path) {
            Ok(contents) => match decode_meta(segment_id, &contents) {
                Ok(meta) => MetaCopy::Good(meta),
                Err(reason) => MetaCopy::Bad(reason),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => MetaCopy::Missing,
            Err(error) => MetaCopy::Bad(format!("unreadable: {error}")),
        }
    }

    /// "good", "missing" or what is wrong.
    pub fn describe(&self) -> String {
        match self {
            MetaCopy::Good(_) => "good".to_string(),
            MetaCopy::Missing => "missing".to_string(),
            MetaCopy::Bad(reason) => reason.clone(),
        }
    }
}

/// Which metadata to use given both copies, and which copies to rewrite
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenMeta {
    pub meta: SegmentMeta,
    pub rewrite_primary: bool,
    pub rewrite_copy: bool,
}

/// The primary copy if it is good (it is always written first, so it is
/// never older than the other), else the second copy; the other is
/// rewritten when it is missing, bad or differs. `Err` (what is wrong with
/// each) when neither is good.
pub fn choose_meta(primary: MetaCopy, copy: MetaCopy) -> Result<ChosenMeta, String> {
    match (primary, copy) {
        (MetaCopy::Good(meta), copy) => {
            let rewrite_copy = copy != MetaCopy::Good(meta.clone());
            Ok(ChosenMeta {
                meta,
                rewrite_primary: false,
                rewrite_copy,
            })
        }
        (_, MetaCopy::Good(meta)) => Ok(ChosenMeta {
            meta,
            rewrite_primary: true,
            rewrite_copy: false,
        }),
        (primary, copy) => Err(format!(
            "metadata unusable: {}: {}; {}: {}",
            "meta",
            primary.describe(),
            "meta.copy",
            copy.describe()
        )),
    }
}

/// Writes both copies of the metadata file of a segment durably, the
/// primary first.
pub fn write_meta(segments_dir: &Path, meta: &SegmentMeta) -> Result<(), StoreError> {
    let encoded = encode_meta(meta)?;
    crate::segment::write_file_durably(&meta_path(segments_dir, meta.segment_id), &encoded)?;
    crate::segment::write_file_durably(&meta_copy_path(segments_dir, meta.segment_id), &encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SegmentMeta {
        SegmentMeta {
            segment_id: 7,
            topic: "orders".to_string(),
            partition: 2,
            base_offset: 1000,
            writer_epoch: 3,
            sealed: true,
            durability: 1,
            end_offset: Some(5000),
            size_bytes: Some(u64::MAX),
            checksum: None,
        }
    }

    #[test]
    fn encoded_metadata_decodes_to_itself() {
        let encoded = encode_meta(&meta()).expect("encode");
        assert_eq!(decode_meta(7, &encoded), Ok(meta()));
    }

    #[test]
    fn a_changed_digit_that_still_parses_fails_the_checksum() {
        let encoded = String::from_utf8(encode_meta(&meta()).expect("encode")).expect("utf8");
        let changed = encoded.replace("\"base_offset\": 1000", "\"base_offset\": 1001");
        assert_ne!(changed, encoded);
        let error = decode_meta(7, changed.as_bytes()).expect_err("detected");
        assert!(error.contains("checksum"), "{error}");
    }

    #[test]
    fn old_files_without_checksum_or_ends_still_load() {
        let old = br#"{"segment_id":7,"topic":"orders","partition":2,"base_offset":1000,
            "writer_epoch":3,"sealed":false,"durability":1}"#;
        let loaded = decode_meta(7, old).expect("old file");
        assert_eq!(loaded.end_offset, None);
        assert_eq!(loaded.base_offset, 1000);
    }

    #[test]
    fn garbage_and_a_file_named_for_another_segment_are_bad() {
        assert!(decode_meta(7, b"\x00\xffgarbage").is_err());
        assert!(decode_meta(7, b"").is_err());
        let encoded = encode_meta(&meta()).expect("encode");
        assert!(decode_meta(8, &encoded)
            .expect_err("other id")
            .contains("named for 8"));
    }

    #[test]
    fn the_good_copy_wins_and_the_other_is_rewritten() {
        let good = MetaCopy::Good(meta());
        let bad = MetaCopy::Bad("garbage".to_string());
        let chosen = choose_meta(good.clone(), good.clone()).expect("usable");
        assert!(!chosen.rewrite_primary && !chosen.rewrite_copy);
        let chosen = choose_meta(bad.clone(), good.clone()).expect("usable");
        assert!(chosen.rewrite_primary && !chosen.rewrite_copy);
        let chosen = choose_meta(good.clone(), MetaCopy::Missing).expect("usable");
        assert!(!chosen.rewrite_primary && chosen.rewrite_copy);
        // Copies differ (a crash between the two writes): the primary,
        // written first, is the newer.
        let older = MetaCopy::Good(SegmentMeta {
            sealed: false,
            end_offset: None,
            size_bytes: None,
            ..meta()
        });
        let chosen = choose_meta(good, older).expect("usable");
        assert_eq!(chosen.meta, meta());
        assert!(chosen.rewrite_copy);
    }

    #[test]
    fn neither_copy_usable_is_an_error_naming_both() {
        let error = choose_meta(MetaCopy::Bad("garbage".to_string()), MetaCopy::Missing)
            .expect_err("unusable");
        assert!(
            error.contains("garbage") && error.contains("missing"),
            "{error}"
        );
    }

    #[test]
    fn only_metadata_file_names_carry_an_id() {
        assert_eq!(meta_file_segment_id("00000000000000000007.meta"), Some(7));
        assert_eq!(
            meta_file_segment_id("18446744073709551615.meta.copy"),
            Some(u64::MAX)
        );
        for name in [
            "7.meta",
            "00000000000000000007.log",
            "99999999999999999999.meta",
            "0000000000000000000x.meta",
            "00000000000000000007.meta.tmp",
        ] {
            assert_eq!(meta_file_segment_id(name), None, "{name}");
        }
    }
}
