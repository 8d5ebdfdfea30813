//! Reading a whole topic back after a test wrote numbered values to it:
//! what the process tests compare with what was acknowledged.

use sluice_client::{ClientConfig, Consumer, ConsumerConfig, StartOffset};
use std::collections::HashMap;
use std::time::Duration;

/// Everything read back from a topic whose record values are decimal
/// numbers.
pub struct ReadBack {
    /// The value at each (partition, offset).
    pub at: HashMap<(u32, u64), u64>,
    /// How often each value was read (more than once: a duplicate).
    pub occurrences: HashMap<u64, u32>,
}

/// Reads every partition of `topic` from offset 0 until nothing arrives for
/// 5 s. Fails the test if offsets go back within a partition or one offset
/// is delivered twice.
pub async fn read_back(client: ClientConfig, topic: &str, partitions: u32) -> ReadBack {
    let assignment = (0..partitions)
        .map(|partition| (topic.to_string(), partition, StartOffset::Earliest))
        .collect();
    let mut reader = Consumer::assign(
        ConsumerConfig {
            client,
            group: None,
            ..ConsumerConfig::default()
        },
        assignment,
    )
    .await
    .expect("reader");
    let mut at: HashMap<(u32, u64), u64> = HashMap::new();
    let mut occurrences: HashMap<u64, u32> = HashMap::new();
    let mut last_offset: HashMap<u32, u64> = HashMap::new();
    while let Some(record) = reader
        .recv_timeout(Duration::from_secs(5))
        .await
        .expect("read")
    {
        let value: u64 = std::str::from_utf8(record.value.as_deref().expect("value"))
            .expect("utf8")
            .parse()
            .expect("number");
        if let Some(previous) = last_offset.insert(record.partition, record.offset) {
            assert!(
                record.offset > previous,
                "partition {} went back from {previous} to {}",
                record.partition,
                record.offset
            );
        }
        assert!(
            at.insert((record.partition, record.offset), value)
                .is_none(),
            "offset {}@{} read twice",
            record.partition,
            record.offset
        );
        *occurrences.entry(value).or_default() += 1;
    }
    reader.close().await.expect("close");
    ReadBack { at, occurrences }
}
