//! Issue 11, closed segments: a CLOSED segment whose copies are damaged
//! on disk. Three stores in this process on temp dirs (3/3/2); the first
//! segment [0, 4000) is closed by a takeover, then its copies are damaged
//! while their stores are down (a flipped bit mid-segment).
//!
//! - The same range flipped on all three copies: the partition stays
//!   online (produce works, reads before and after the range work), reads
//!   of the range answer STORAGE_CORRUPT, and the owner's load lists the
//!   segment in `damaged_partitions`. After the operator's AcceptDataLoss
//!   the owner records the range in `lost_ranges` and stops listing it.
//! - Disjoint ranges flipped on two of the three copies: nothing is
//!   reported or recorded lost, and repair recopies both damaged copies
//!   from the intact third one (repair copies whole segments from an
//!   intact copy; it does not combine partial copies range by range).

#[allow(dead_code)] // the kit serves every scenario file; this one uses part of it
mod common;

use common::*;
use sluice_proto::v1::broker_client::BrokerClient;
use sluice_proto::v1::name_server_client::NameServerClient;
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    AcceptDataLossRequest, ClusterStatusRequest, DamagedPartition, ListSegmentsRequest,
    SegmentInfo, SegmentState, SegmentStatusRequest,
};
use sluice_proto::ErrorCode;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

const RECORDS: usize = 4000;
const RECORDS_PER_BATCH: usize = 20;

fn value(index: usize) -> String {
    numbered_value(index)
}

fn fast_repair(config: &mut sluice_broker::BrokerConfig) {
    config.replication.repair_interval_ms = 200;
}

fn nameserver(cluster: &Cluster) -> NameServerClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(cluster.nameserver_url.clone())
        .expect("valid nameserver url")
        .connect_lazy();
    NameServerClient::new(channel)
}

async fn first_segment(cluster: &Cluster) -> SegmentInfo {
    nameserver(cluster)
        .list_segments(ListSegmentsRequest {
            topic: TOPIC.into(),
            partition: 0,
        })
        .await
        .expect("list segments")
        .into_inner()
        .segments
        .into_iter()
        .find(|segment| segment.base_offset == 0)
        .expect("the first segment")
}

/// What the brokers report damaged for the topic, from cluster status.
async fn damaged_reports(cluster: &Cluster) -> Option<Vec<DamagedPartition>> {
    let status = nameserver(cluster)
        .cluster_status(ClusterStatusRequest {})
        .await
        .ok()?
        .into_inner();
    Some(
        status
            .brokers
            .iter()
            .filter_map(|broker| broker.load.as_ref())
            .flat_map(|load| load.damaged_partitions.iter().cloned())
            .filter(|damaged| damaged.topic == TOPIC && damaged.partition == 0)
            .collect(),
    )
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

/// Flips one bit of the first segment's log file at `fraction` (in
/// percent) of its data.
fn flip_a_bit(store_directory: &Path, segment_id: u64, percent: usize) {
    let name = format!("{segment_id:020}.log");
    let path = walk(store_directory)
        .into_iter()
        .find(|path| path.file_name().is_some_and(|file| file == name.as_str()))
        .unwrap_or_else(|| panic!("{name} in {}", store_directory.display()));
    let mut bytes = std::fs::read(&path).expect("read segment");
    let data = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |last| last + 1);
    bytes[data * percent / 100] ^= 0x10;
    std::fs::write(&path, bytes).expect("write segment");
}

/// Three stores; `RECORDS` produced; the first segment closed at
/// `RECORDS` by a second owner's takeover, which continues at `RECORDS`
/// with one record. No broker runs on return.
async fn cluster_with_a_closed_segment(directory: &Path) -> (Cluster, SegmentInfo) {
    let cluster = Cluster::start_replicated(directory).await;
    cluster.create_one_partition_topic().await;
    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let mut client = broker_client(&broker.address).await;
    produce_until_accepted(&client, 1, "first", "the partition to serve").await;
    produce_records_after_first(&mut client).await;
    broker.stop_cleanly().await;
    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let client = broker_client(&broker.address).await;
    let resumed = produce_until_accepted(&client, 9, "resumed", "produce after takeover").await;
    assert_eq!(resumed.base_offset, RECORDS as u64 + 1);
    let first = first_segment(&cluster).await;
    assert_eq!(first.state(), SegmentState::Closed, "{first:?}");
    assert_eq!(first.end_offset, RECORDS as u64 + 1);
    assert_eq!(first.replicas.len(), 3);
    broker.stop_cleanly().await;
    (cluster, first)
}

/// `RECORDS` more records after the one at offset 0: record `i` (of the
/// batches) at offset `i + 1`.
async fn produce_records_after_first(client: &mut BrokerClient<Channel>) {
    produce_numbered(client, RECORDS, RECORDS_PER_BATCH, 1).await;
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

/// Values at offsets `range` (offset 0 holds "first").
fn expected_at(range: std::ops::Range<u64>) -> Vec<String> {
    range
        .map(|offset| {
            if offset == 0 {
                "first".to_string()
            } else {
                value(offset as usize - 1)
            }
        })
        .collect()
}

/// Damages the first segment on the stores `targets` (0: `test-store`,
/// 1 and 2: the others), each at its own point, one store down at a time.
async fn damage(cluster: &mut Cluster, segment_id: u64, targets: &[(usize, usize)]) {
    for &(store, percent) in targets {
        if store == 0 {
            let directory = cluster.store_directory.clone();
            cluster
                .restart_store(async move { flip_a_bit(&directory, segment_id, percent) })
                .await;
        } else {
            let directory = cluster.more_stores[store - 1].directory.clone();
            cluster
                .restart_more_store(store - 1, async move {
                    flip_a_bit(&directory, segment_id, percent)
                })
                .await;
        }
    }
}

fn store_client(address: &str) -> StoreClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("store url")
        .connect_lazy();
    StoreClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_segment_damaged_on_every_copy_is_reported_and_its_loss_can_be_accepted() {
    let directory = tempfile::tempdir().expect("temp dir");
    let (mut cluster, first) = cluster_with_a_closed_segment(directory.path()).await;
    damage(&mut cluster, first.segment_id, &[(0, 50), (1, 50), (2, 50)]).await;
    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let mut client = broker_client(&broker.address).await;

    let report = eventually("the owner to report the damaged closed segment", || {
        let cluster = &cluster;
        async move { damaged_reports(cluster).await?.into_iter().next() }
    })
    .await;
    assert_eq!(report.segment_id, first.segment_id);
    for part in [
        format!("segment {}", first.segment_id),
        "test-store-2".to_string(),
        "--accept-data-loss".to_string(),
    ] {
        assert!(report.reason.contains(&part), "{part}: {}", report.reason);
    }
    assert_eq!(report.ranges.len(), 1, "{report:?}");
    let (start, end) = (report.ranges[0].start_offset, report.ranges[0].end_offset);
    assert!(
        0 < start && start < end && end < RECORDS as u64,
        "{report:?}"
    );
    assert!(
        report.reason.contains(&format!("[{start}, {end})")),
        "{}",
        report.reason
    );

    // Online: produce works, reads before and after the range work, the
    // range itself answers STORAGE_CORRUPT.
    let produced = produce_until_accepted(&client, 20, "later", "produce while damaged").await;
    assert_eq!(produced.base_offset, RECORDS as u64 + 2);
    let (before, error) = read_from(&mut client, 0, start).await;
    assert_eq!(error, None);
    assert_eq!(before, expected_at(0..start));
    let (after, error) = read_from(&mut client, end, RECORDS as u64 + 1).await;
    assert_eq!(error, None);
    assert_eq!(after, expected_at(end..RECORDS as u64 + 1));
    let broken = fetch(&mut client, start, 0).await;
    assert_eq!(
        broken.partitions[0].error,
        ErrorCode::StorageCorrupt as i32,
        "{}",
        broken.partitions[0].error_message
    );
    for part in [
        format!("segment {}", first.segment_id),
        format!("[{start}, {end})"),
    ] {
        assert!(
            broken.partitions[0].error_message.contains(&part),
            "{part}: {}",
            broken.partitions[0].error_message
        );
    }
    assert!(first_segment(&cluster).await.lost_ranges.is_empty());

    let accepted = nameserver(&cluster)
        .accept_data_loss(AcceptDataLossRequest {
            topic: TOPIC.into(),
            partition: 0,
            accept_data_loss: true,
            resume_at_offset: 0,
        })
        .await
        .expect("loss accepted")
        .into_inner();
    assert_eq!(
        accepted.segment_ids,
        vec![first.segment_id],
        "the damaged closed segment only, not the healthy open one"
    );
    let recorded = eventually("the owner to record the lost range", || {
        let cluster = &cluster;
        async move {
            let segment = first_segment(cluster).await;
            (!segment.lost_ranges.is_empty()).then_some(segment)
        }
    })
    .await;
    let lost: Vec<(u64, u64)> = recorded
        .lost_ranges
        .iter()
        .map(|range| (range.start_offset, range.end_offset))
        .collect();
    assert_eq!(lost, vec![(start, end)]);
    assert!(!recorded.data_loss_accepted, "the acceptance is used up");
    assert_eq!(recorded.end_offset, first.end_offset, "no offset reused");
    eventually("the damaged report to clear", || {
        let cluster = &cluster;
        async move { damaged_reports(cluster).await?.is_empty().then_some(()) }
    })
    .await;
    // The range stays unreadable; the rest is still served.
    let broken = fetch(&mut client, start, 0).await;
    assert_ne!(broken.partitions[0].error, ErrorCode::None as i32);
    let (after, error) = read_from(&mut client, end, RECORDS as u64 + 3).await;
    assert_eq!(error, None);
    assert_eq!(after.len() as u64, RECORDS as u64 + 3 - end);
    broker.stop_cleanly().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_damage_on_two_of_three_closed_copies_loses_nothing_and_is_repaired() {
    // Repair recopies both whole from the intact third copy.
    disjoint_damage_loses_nothing_and_is_repaired(&[(0, 25), (1, 75)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_damage_on_all_three_closed_copies_loses_nothing_and_is_repaired() {
    // No copy is whole: repair rebuilds one from pieces of the other two,
    // then recopies the others from it.
    disjoint_damage_loses_nothing_and_is_repaired(&[(0, 20), (1, 50), (2, 80)]).await;
}

/// The first segment damaged at a different point on each store of
/// `targets` (store, percent of its data): every record is still served,
/// nothing is reported damaged or recorded lost, and repair ends with
/// every copy whole.
async fn disjoint_damage_loses_nothing_and_is_repaired(targets: &[(usize, usize)]) {
    let directory = tempfile::tempdir().expect("temp dir");
    let (mut cluster, first) = cluster_with_a_closed_segment(directory.path()).await;
    damage(&mut cluster, first.segment_id, targets).await;
    let broker = start_broker_configured(&cluster.nameserver_url, fast_repair).await;
    let mut client = broker_client(&broker.address).await;
    wait_until_serving(&client).await;
    let (read, error) = read_from(&mut client, 0, RECORDS as u64 + 1).await;
    assert_eq!(error, None, "every record is served from some copy");
    assert_eq!(read, expected_at(0..RECORDS as u64 + 1));

    let damaged: Vec<(String, String)> = targets
        .iter()
        .map(|&(store, _)| {
            if store == 0 {
                ("test-store".to_string(), cluster.store_address.clone())
            } else {
                let node = &cluster.more_stores[store - 1];
                (node.node_id.clone(), node.address.clone())
            }
        })
        .collect();
    let cluster_ref = &cluster;
    eventually("repair to restore every damaged copy", || {
        let damaged = damaged.clone();
        async move {
            // Never reported damaged on every copy meanwhile.
            assert_eq!(damaged_reports(cluster_ref).await?, vec![]);
            let segment = first_segment(cluster_ref).await;
            for (node_id, address) in &damaged {
                if !segment
                    .replicas
                    .iter()
                    .any(|replica| &replica.store_id == node_id)
                {
                    continue; // replaced elsewhere
                }
                let status = store_client(address)
                    .get_segment_status(SegmentStatusRequest {
                        segment_id: first.segment_id,
                    })
                    .await
                    .ok()?
                    .into_inner();
                let repaired = status.corrupt_from_offset.is_none()
                    && status.damaged_ranges.is_empty()
                    && status.end_offset == first.end_offset;
                if !repaired {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let segment = first_segment(&cluster).await;
    assert!(segment.lost_ranges.is_empty(), "{segment:?}");
    assert_eq!(segment.replicas.len(), 3);
    broker.stop_cleanly().await;
    cluster.stop().await;
}
