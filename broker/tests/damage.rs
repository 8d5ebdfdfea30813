//! Issue 11 item 3: a partition never rewinds over a damaged copy of its
//! open segment. Real stores in this process on temp dirs; the damage is
//! done to a stopped store's segment file (a flipped bit mid-segment or a
//! file cut mid-batch), then the broker takes the partition over again.
//!
//! - One copy (1/1/1): the partition goes offline with an error naming the
//!   segment and the damaged range, counted by cluster status, and never
//!   accepts produce at a reused offset; after the operator's
//!   `AcceptDataLoss` it continues at 4000; fetches of the lost range
//!   answer DATA_LOST with where data resumes, fetches before it stop at
//!   it, the SDK's consumer skips it by default (and fails on it when told
//!   to), and a subscription from the earliest position delivers every
//!   intact message.
//! - Three copies (3/3/2): the takeover continues at 4000 with nothing
//!   lost, reads of the damaged range are served from a healthy copy and
//!   repair recopies the damaged one.

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use common::*;
use sluice_client::{
    Admin, ClientError, Consumer, ConsumerConfig, DataLossPolicy, StartOffset, Subscriber,
    SubscriberConfig,
};
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    AcceptDataLossRequest, ClusterStatusRequest, InitialPosition, ListSegmentsRequest, SegmentInfo,
    SegmentStatusRequest,
};
use sluice_proto::ErrorCode;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

const RECORDS: usize = 4000;
const RECORDS_PER_BATCH: usize = 20;

fn value(index: usize) -> String {
    numbered_value(index)
}

/// Produces `RECORDS` records, all acknowledged at offsets 0..RECORDS.
async fn produce_records(client: &mut BrokerClient<Channel>) {
    produce_numbered(client, RECORDS, RECORDS_PER_BATCH, 0).await;
}

fn nameserver(cluster: &Cluster) -> NameServerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(cluster.nameserver_url.clone())
        .expect("valid nameserver url")
        .connect_lazy();
    NameServerClient::new(channel)
}

async fn segments(cluster: &Cluster) -> Vec<SegmentInfo> {
    nameserver(cluster)
        .list_segments(ListSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner()
        .segments
}

/// The segment log file holding the most data in a store directory, and
/// how many bytes of data it holds (files are preallocated with zeros).
fn largest_segment_file(store_directory: &Path) -> (PathBuf, usize) {
    let mut best: Option<(PathBuf, usize)> = None;
    for entry in walk(store_directory) {
        if entry.extension().is_none_or(|extension| extension != "log") {
            continue;
        }
        let bytes = std::fs::read(&entry).expect("read segment file");
        let data = bytes
            .iter()
            .rposition(|byte| *byte != 0)
            .map_or(0, |last| last + 1);
        if best.as_ref().is_none_or(|(_, size)| data > *size) {
            best = Some((entry, data));
        }
    }
    best.expect("a segment file")
}

fn walk(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Flips one bit in the middle of the data of the largest segment file.
fn flip_a_bit_mid_segment(store_directory: &Path) {
    let (path, data) = largest_segment_file(store_directory);
    let mut bytes = std::fs::read(&path).expect("read segment");
    bytes[data / 2] ^= 0x10;
    std::fs::write(&path, bytes).expect("write segment");
}

/// Cuts the largest segment file in the middle of a batch, 3/4 in.
fn truncate_mid_batch(store_directory: &Path) {
    let (path, data) = largest_segment_file(store_directory);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment");
    file.set_len((data * 3 / 4) as u64 + 7).expect("truncate");
}

/// Overwrites the metadata of the largest segment: `{id}.meta` only, or
/// both it and `{id}.meta.copy`, with garbage of the same length.
fn garbage_in_metadata(store_directory: &Path, both_copies: bool) {
    let (log, _) = largest_segment_file(store_directory);
    let mut targets = vec![log.with_extension("meta")];
    if both_copies {
        targets.push(log.with_extension("meta.copy"));
    }
    for path in targets {
        let length = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .len() as usize;
        let garbage: Vec<u8> = (0..length.max(16))
            .map(|index| (index as u8).wrapping_mul(37) ^ 0xA5)
            .collect();
        std::fs::write(&path, garbage).expect("write garbage metadata");
    }
}

fn garbage_in_one_metadata_copy(store_directory: &Path) {
    garbage_in_metadata(store_directory, false);
}

fn garbage_in_both_metadata_copies(store_directory: &Path) {
    garbage_in_metadata(store_directory, true);
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(value).collect()
}

/// Produces one record; never may it be accepted below `RECORDS`.
async fn produce_one(client: &BrokerClient<Channel>, request_id: u64) -> (i32, String, u64) {
    let mut client = client.clone();
    let answer = produce(
        &mut client,
        vec![produce_request(
            request_id,
            TOPIC,
            batch_at(&["after"], 2_000),
        )],
    )
    .await;
    let answer = &answer[0];
    if answer.error == ErrorCode::None as i32 {
        assert!(
            answer.base_offset >= RECORDS as u64,
            "accepted at offset {}, reusing an acknowledged offset below {RECORDS}",
            answer.base_offset
        );
    }
    (
        answer.error,
        answer.error_message.clone(),
        answer.base_offset,
    )
}

/// The single-copy scenario after the damage: offline, visible, never
/// reusing an offset; then the operator accepts the loss.
async fn single_copy_goes_offline_until_recovered(cluster: &Cluster) {
    let broker = start_broker(&cluster.nameserver_url).await;
    let client = broker_client(&broker.address).await;
    let reason = eventually("the partition to be reported offline", || {
        let client = client.clone();
        async move {
            let (code, message, _) = produce_one(&client, 1).await;
            (code == ErrorCode::StorageCorrupt as i32).then_some(message)
        }
    })
    .await;
    assert!(reason.contains("offline"), "{reason}");
    assert!(reason.contains("segment"), "{reason}");
    assert!(reason.contains("test-store"), "{reason}");
    assert!(reason.contains("--accept-data-loss"), "{reason}");
    // Still offline a while later: takeover retries do not give up and
    // rewind.
    for request_id in 2..5 {
        let (code, _, _) = produce_one(&client, request_id).await;
        assert_eq!(code, ErrorCode::StorageCorrupt as i32);
    }
    let mut admin = nameserver(cluster);
    eventually("cluster status to count the offline partition", || {
        let mut admin = admin.clone();
        async move {
            let status = admin
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            let reported = status.brokers.iter().any(|broker| {
                broker.load.as_ref().is_some_and(|load| {
                    load.offline_partitions
                        .iter()
                        .any(|offline| offline.topic == TOPIC && offline.reason.contains("offline"))
                })
            });
            (status.offline_partitions >= 1 && reported).then_some(())
        }
    })
    .await;

    // Without accepting loss the operator's command refuses and explains.
    let refused = admin
        .accept_data_loss(AcceptDataLossRequest {
            topic: TOPIC.into(),
            partition: 0,
            accept_data_loss: false,
            resume_at_offset: 0,
        })
        .await
        .expect_err("refused without --accept-data-loss");
    assert!(
        refused.message().contains("--accept-data-loss"),
        "{refused:?}"
    );
    admin
        .accept_data_loss(AcceptDataLossRequest {
            topic: TOPIC.into(),
            partition: 0,
            accept_data_loss: true,
            resume_at_offset: 0,
        })
        .await
        .expect("loss accepted");
    let resumed = produce_until_accepted(&client, 10, "resumed", "produce after recovery").await;
    assert_eq!(
        resumed.base_offset, RECORDS as u64,
        "the log continues after the highest offset ever assigned"
    );
    let closed = segments(cluster).await;
    let lost: Vec<_> = closed
        .iter()
        .flat_map(|segment| segment.lost_ranges.clone())
        .collect();
    assert!(!lost.is_empty(), "the lost range is recorded: {closed:?}");
    let damage_start = lost[0].start_offset as usize;
    assert!(damage_start > 0 && damage_start < RECORDS, "{lost:?}");

    // Earlier data reads back up to the damage; the damage is DATA_LOST.
    let mut reader = client.clone();
    let (read, error) = read_from(&mut reader, 0, RECORDS as u64).await;
    assert_eq!(read, expected(0..damage_start));
    let (code, message) = error.expect("the damaged range is not served");
    assert_eq!(code, ErrorCode::DataLost as i32, "{message}");
    let after = fetch(&mut reader, RECORDS as u64, 0).await;
    assert_eq!(values(&after.partitions[0].batches), vec!["resumed"]);
    let lost = (lost[0].start_offset, lost[0].end_offset);
    fetches_around_the_loss(&mut reader, lost).await;
    consumers_read_across_the_loss(cluster, lost).await;
    broker.stop_cleanly().await;
}

/// Every intact record of the scenario in log order: those before and
/// after the lost range, then the one produced after recovery.
fn intact((start, end): (u64, u64)) -> Vec<String> {
    let mut intact = expected(0..start as usize);
    intact.extend(expected(end as usize..RECORDS));
    intact.push("resumed".to_string());
    intact
}

/// Issue 11: a fetch inside the accepted loss answers DATA_LOST with where
/// data resumes, a fetch from before it stops at its start.
async fn fetches_around_the_loss(client: &mut BrokerClient<Channel>, (start, end): (u64, u64)) {
    for offset in [start, (start + end) / 2, end - 1] {
        let fetched = fetch(client, offset, 0).await;
        let partition = &fetched.partitions[0];
        assert_eq!(
            partition.error,
            ErrorCode::DataLost as i32,
            "fetch at {offset}: {}",
            partition.error_message
        );
        assert_eq!(partition.lost_end_offset, end, "fetch at {offset}");
        assert!(partition.batches.is_empty());
        assert!(
            partition.error_message.contains(&format!("{start}..{end}")),
            "{}",
            partition.error_message
        );
    }
    let before = start - RECORDS_PER_BATCH as u64;
    let fetched = fetch(client, before, 0).await;
    let partition = &fetched.partitions[0];
    assert_eq!(partition.error, ErrorCode::None as i32);
    assert_eq!(partition.lost_end_offset, 0);
    assert_eq!(
        values(&partition.batches),
        expected(before as usize..start as usize),
        "a fetch before the loss stops at its start"
    );
    if end < RECORDS as u64 {
        let fetched = fetch(client, end, 0).await;
        let first = values(&fetched.partitions[0].batches);
        assert_eq!(first.first(), Some(&value(end as usize)));
    }
}

/// Issue 11: the SDK's consumer skips the loss by default (every intact
/// record once, in order, the range counted) or stops with an error naming
/// it; a subscription from the earliest position delivers every intact
/// message without stalling at it.
async fn consumers_read_across_the_loss(cluster: &Cluster, (start, end): (u64, u64)) {
    let wanted = intact((start, end));
    let mut skipping = consumer_from_earliest(cluster, DataLossPolicy::default()).await;
    let mut read = Vec::new();
    while read.len() < wanted.len() {
        let record = skipping
            .recv_timeout(Duration::from_secs(30))
            .await
            .expect("the default policy reads on")
            .unwrap_or_else(|| panic!("only {} of {} records", read.len(), wanted.len()));
        read.push(
            String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned(),
        );
    }
    assert_eq!(read, wanted, "every intact record, in order, none twice");
    assert_eq!(skipping.skipped_lost_offsets(), end - start);
    skipping.close().await.expect("close");

    let mut failing = consumer_from_earliest(cluster, DataLossPolicy::Fail).await;
    let mut before = 0;
    let error = loop {
        match failing.recv_timeout(Duration::from_secs(30)).await {
            Ok(Some(_)) => before += 1,
            Ok(None) => panic!("no error after {before} records"),
            Err(error) => break error,
        }
    };
    let ClientError::DataLost {
        partition: 0,
        start_offset,
        end_offset,
        ..
    } = error
    else {
        panic!("not a data-loss error: {error}");
    };
    assert_eq!((start_offset, end_offset), (start, end));
    assert_eq!(before, start, "every record before the loss came first");
    failing.close().await.expect("close");

    let subscriber = Subscriber::connect(SubscriberConfig {
        client: client_config(&cluster.nameserver_url),
        initial_position: InitialPosition::Earliest,
        ..SubscriberConfig::new(TOPIC, "from-earliest")
    })
    .await
    .expect("subscriber connects");
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    receive_exactly(&subscriber, &wanted).await;
    let admin = Admin::connect(client_config(&cluster.nameserver_url))
        .await
        .expect("admin");
    let admin = &admin;
    eventually(
        "the subscription to count the lost offsets it skipped",
        || async move {
            let lag = admin
                .describe_subscription(TOPIC, "from-earliest")
                .await
                .ok()?;
            (lag.partitions.first()?.lost_offsets == end - start).then_some(())
        },
    )
    .await;
    subscriber.close().await.expect("close");
}

async fn consumer_from_earliest(cluster: &Cluster, on_data_loss: DataLossPolicy) -> Consumer {
    Consumer::assign(
        ConsumerConfig {
            client: client_config(&cluster.nameserver_url),
            on_data_loss,
            ..ConsumerConfig::default()
        },
        vec![(TOPIC.to_string(), 0, StartOffset::Earliest)],
    )
    .await
    .expect("consumer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_damaged_copy_takes_the_partition_offline_and_never_reuses_offsets() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(directory.path()).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    wait_until_serving(&client).await;
    produce_records(&mut client).await;
    broker.stop_cleanly().await;
    let store_directory = cluster.store_directory.clone();
    cluster
        .restart_store(async move { flip_a_bit_mid_segment(&store_directory) })
        .await;
    single_copy_goes_offline_until_recovered(&cluster).await;
    cluster.stop().await;
}

/// Waits until the partition serves, without producing anything.
async fn wait_until_serving(client: &BrokerClient<Channel>) {
    eventually("the partition to serve", || {
        let mut client = client.clone();
        async move {
            let fetched = fetch(&mut client, 0, 0).await;
            (fetched.partitions[0].error == ErrorCode::None as i32).then_some(())
        }
    })
    .await;
}

/// 3/3/2: the copy on `test-store-1` is damaged by `damage` while its
/// store is down; the new owner continues at `RECORDS` with nothing lost,
/// serves every record, and repair restores an undamaged full copy.
async fn one_damaged_replica_of_three_loses_nothing(damage: fn(&Path)) {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start_replicated(directory.path()).await;
    cluster.create_one_partition_topic().await;
    let fast_repair = |config: &mut sluice_broker::BrokerConfig| {
        config.replication.repair_interval_ms = 200;
    };
    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let mut client = broker_client(&broker.address).await;
    wait_until_serving(&client).await;
    produce_records(&mut client).await;
    broker.stop_cleanly().await;
    let damaged_directory = cluster.more_stores[0].directory.clone();
    cluster
        .restart_more_store(0, async move { damage(&damaged_directory) })
        .await;

    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let mut client = broker_client(&broker.address).await;
    let resumed = produce_until_accepted(&client, 10, "resumed", "produce after takeover").await;
    assert_eq!(
        resumed.base_offset, RECORDS as u64,
        "nothing lost, nothing reused"
    );
    let (read, error) = read_from(&mut client, 0, RECORDS as u64 + 1).await;
    assert_eq!(error, None, "every record is served from some copy");
    let mut all = expected(0..RECORDS);
    all.push("resumed".into());
    assert_eq!(read, all);

    let first = segments(&cluster)
        .await
        .into_iter()
        .find(|segment| segment.base_offset == 0)
        .expect("the first segment");
    assert_eq!(first.end_offset, RECORDS as u64);
    let damaged = &cluster.more_stores[0];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", damaged.address))
        .expect("store url")
        .connect_lazy();
    let store = StoreClient::new(channel);
    let nameserver_cluster = &cluster;
    eventually("repair to restore the damaged copy", || {
        let mut store = store.clone();
        let node_id = damaged.node_id.clone();
        async move {
            let listed = segments(nameserver_cluster).await;
            let segment = listed
                .iter()
                .find(|segment| segment.segment_id == first.segment_id)?;
            if !segment
                .replicas
                .iter()
                .any(|replica| replica.store_id == node_id)
            {
                return Some(()); // replaced elsewhere
            }
            let status = store
                .get_segment_status(SegmentStatusRequest {
                    segment_id: first.segment_id,
                })
                .await
                .ok()?
                .into_inner();
            (status.corrupt_from_offset.is_none()
                && status.damaged_ranges.is_empty()
                && status.end_offset == RECORDS as u64)
                .then_some(())
        }
    })
    .await;
    broker.stop_cleanly().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_on_one_of_three_copies_loses_nothing_and_is_repaired() {
    one_damaged_replica_of_three_loses_nothing(flip_a_bit_mid_segment).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_three_cut_mid_batch_loses_nothing_and_is_repaired() {
    one_damaged_replica_of_three_loses_nothing(truncate_mid_batch).await;
}

/// Garbage in a segment's metadata file on one of three copies (the
/// issue's finding: the segment was moved aside and the partition restarted
/// at offset 0): the store restores it from the other copy; nothing is
/// lost and no offset is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_one_metadata_file_of_one_of_three_copies_loses_nothing() {
    one_damaged_replica_of_three_loses_nothing(garbage_in_one_metadata_copy).await;
}

/// Garbage in both metadata copies on one of three stores: the store
/// rebuilds the metadata from its journal or holds the segment as damaged
/// by id; either way the broker reads the other copies, loses nothing,
/// reuses no offset, and the damaged copy ends repaired or replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_both_metadata_files_of_one_of_three_copies_loses_nothing() {
    one_damaged_replica_of_three_loses_nothing(garbage_in_both_metadata_copies).await;
}

/// One copy cut mid-batch: the store keeps the end it made durable
/// (`SegmentStatus.end_offset` is never lowered by damage) and reports the
/// cut as a damaged range, so the takeover sees it, and with no other copy
/// the partition goes offline instead of reusing the cut offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_copy_cut_mid_batch_takes_the_partition_offline_and_never_reuses_offsets() {
    let directory = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(directory.path()).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker(&cluster.nameserver_url).await;
    let mut client = broker_client(&broker.address).await;
    wait_until_serving(&client).await;
    produce_records(&mut client).await;
    broker.stop_cleanly().await;
    let store_directory = cluster.store_directory.clone();
    cluster
        .restart_store(async move { truncate_mid_batch(&store_directory) })
        .await;
    single_copy_goes_offline_until_recovered(&cluster).await;
    cluster.stop().await;
}
