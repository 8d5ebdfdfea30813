//! Fixtures shared by the tests of every crate (feature `test-util`, for
//! dev-dependencies only): record batches built from values,
//! [`eventually`] for conditions a test waits for, and [`free_port`] for
//! the servers tests start.

pub mod poison;

use crate::batch::{assign, BatchBuilder, Compression, RecordData};
use bytes::Bytes;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] checks again.
pub const EVENTUALLY_POLL_MS: u64 = 20;

/// What a fixture batch is made of; `..BatchSpec::default()` for the rest.
#[derive(Debug, Clone)]
pub struct BatchSpec<'a> {
    pub values: &'a [&'a str],
    pub compression: Compression,
    /// Every record's timestamp; `None` leaves it to the builder (now).
    pub timestamp_ms: Option<i64>,
    /// Idempotent producer id, epoch and first sequence.
    pub producer: Option<(i64, i16, i32)>,
}

impl Default for BatchSpec<'_> {
    fn default() -> Self {
        Self {
            values: &[],
            compression: Compression::None,
            timestamp_ms: None,
            producer: None,
        }
    }
}

impl BatchSpec<'_> {
    /// The batch as a producer sends it (base offset 0, no writer epoch).
    pub fn build(&self) -> Bytes {
        assert!(!self.values.is_empty(), "a batch needs at least one record");
        let mut builder = BatchBuilder::new(self.compression);
        if let Some((producer_id, epoch, sequence)) = self.producer {
            builder = builder.with_producer(producer_id, epoch, sequence);
        }
        for value in self.values {
            builder.push(&RecordData {
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
                timestamp_ms: self.timestamp_ms,
                ..RecordData::default()
            });
        }
        builder.build()
    }

    /// The batch as a broker stores it: at `base_offset`, writer epoch 1.
    pub fn stored_at(&self, base_offset: u64) -> Vec<u8> {
        let mut bytes = self.build().to_vec();
        assign(&mut bytes, base_offset, 1);
        bytes
    }
}

/// An uncompressed batch of `values` as a producer sends it.
pub fn batch(values: &[&str]) -> Bytes {
    BatchSpec {
        values,
        ..BatchSpec::default()
    }
    .build()
}

/// An uncompressed batch of `values` as a broker stores it at `base_offset`.
pub fn stored_batch(base_offset: u64, values: &[&str]) -> Vec<u8> {
    BatchSpec {
        values,
        ..BatchSpec::default()
    }
    .stored_at(base_offset)
}

/// Polls `check` every [`EVENTUALLY_POLL_MS`] until it returns `Some`;
/// panics naming `what` once `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {} ms waiting for {what}",
            timeout.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(EVENTUALLY_POLL_MS)).await;
    }
}

/// [`eventually`] for a condition that needs no awaiting.
pub async fn eventually_true(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    eventually(what, timeout, || {
        let holds = condition();
        async move { holds.then_some(()) }
    })
    .await
}

/// Ports handed to test servers: below Linux's ephemeral range (32768 and
/// up by default), so an outgoing connection of some other test can never
/// take a port between the check and the server's bind (seen in CI as
/// "Address already in use").
pub const TEST_PORTS: std::ops::Range<u16> = 15_000..32_000;

/// Picks a port free on 127.0.0.1 in [`TEST_PORTS`], at random, and never
/// one this process handed out before: parallel tests of one binary
/// (threads) could otherwise both pick a port before either server bound
/// it. Test binaries run one after another, and the bind check rules out
/// ports in use.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    for attempt in 0..1000u64 {
        // A fresh random seed per hasher: random enough to spread picks.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(attempt);
        let offset = u16::try_from(hasher.finish() % span).unwrap_or(0);
        let port = TEST_PORTS.start + offset;
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!(
        "no free port in {TEST_PORTS:?} on 127.0.0.1 after 1,000 tries ({} handed out by this process)",
        handed_out.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        // 300 random picks from 17,000 ports collide about twice on
        // average without the record of what was handed out.
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..75).map(|_| free_port()).collect::<Vec<u16>>()))
            .collect();
        let mut ports = std::collections::BTreeSet::new();
        for thread in threads {
            for port in thread.join().expect("picker thread") {
                assert!(TEST_PORTS.contains(&port), "{port}");
                assert!(ports.insert(port), "port {port} handed out twice");
            }
        }
    }
    use crate::batch::BatchHeader;

    #[test]
    fn fixture_batches_parse_with_their_offsets_and_producer() {
        let stored = stored_batch(10, &["a", "b"]);
        let header = BatchHeader::parse(&stored).expect("valid");
        assert_eq!((header.base_offset, header.record_count), (10, 2));
        let spec = BatchSpec {
            values: &["x"],
            compression: Compression::Lz4,
            producer: Some((5, 1, 3)),
            ..BatchSpec::default()
        };
        let header = BatchHeader::parse(&spec.build()).expect("valid");
        assert_eq!((header.producer_id, header.base_sequence), (5, 3));
    }

    #[tokio::test]
    async fn eventually_returns_the_first_value() {
        let mut calls = 0;
        let value = eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let ready = calls >= 3;
            async move { ready.then_some(calls) }
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn eventually_gives_up_after_the_timeout() {
        eventually("nothing", Duration::from_millis(120), || async {
            None::<()>
        })
        .await;
    }
}
