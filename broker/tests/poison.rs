//! Poison compressed batches (issue 11, item 4): a compressed batch whose
//! header and CRC are sound but whose records are not (a record count far
//! beyond what it holds, garbage, a decompression bomb, bad framing) is
//! refused with CORRUPT_BATCH before it takes any offset, and the same and
//! other producers keep going.

mod common;

use common::*;
use sluice_proto::batch::Compression;
use sluice_proto::test_util::poison::poison_batches;
use sluice_proto::test_util::BatchSpec;
use sluice_proto::ErrorCode;

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_compressed_batches_are_refused_without_taking_offsets() {
    let directory = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(directory.path()).await;
    cluster.create_one_partition_topic().await;
    // A bomb beyond the configured limit (kept small: debug builds
    // compress slowly) but within the batch size.
    let broker = start_broker_configured(&cluster.nameserver_url, |config| {
        config.produce.max_decompressed_batch_bytes = MIB as u64;
    })
    .await;
    let mut producer = broker_client(&broker.address).await;
    let mut other = broker_client(&broker.address).await;
    produce_until_accepted(&producer, 1, "a", "the broker to accept produce").await;
    let mut end = 1;
    let mut request_id = 10;
    for compression in [Compression::Lz4, Compression::Zstd] {
        for (kind, poison) in poison_batches(compression, 2 * MIB) {
            let good = BatchSpec {
                values: &["after"],
                compression,
                ..BatchSpec::default()
            }
            .build();
            let answers = produce(
                &mut producer,
                vec![
                    produce_request(request_id, TOPIC, poison),
                    produce_request(request_id + 1, TOPIC, good),
                ],
            )
            .await;
            assert_eq!(
                answers[0].error,
                ErrorCode::CorruptBatch as i32,
                "{compression:?}, {kind}: {}",
                answers[0].error_message
            );
            assert_eq!(
                (answers[1].error, answers[1].base_offset),
                (ErrorCode::None as i32, end),
                "{compression:?}, {kind}: the same stream goes on where the log ended: {}",
                answers[1].error_message
            );
            let answer = produce(
                &mut other,
                vec![produce_request(
                    request_id + 2,
                    TOPIC,
                    sluice_proto::test_util::batch(&["other"]),
                )],
            )
            .await;
            assert_eq!(
                (answer[0].error, answer[0].base_offset),
                (ErrorCode::None as i32, end + 1),
                "{compression:?}, {kind}: another producer goes on: {}",
                answer[0].error_message
            );
            end += 2;
            request_id += 3;
        }
    }
    // The log holds exactly what was acknowledged, and all of it decodes.
    let fetched = fetch(&mut producer, 0, 0).await;
    assert_eq!(fetched.partitions[0].high_watermark, end);
    let values = values(&fetched.partitions[0].batches);
    assert_eq!(values.len() as u64, end);
    assert_eq!(values[0], "a");
    assert!(values[1..]
        .chunks(2)
        .all(|pair| pair == ["after".to_string(), "other".to_string()]));

    broker.stop_cleanly().await;
    cluster.stop().await;
}
