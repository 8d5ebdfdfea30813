//! Process-level crash test: the real `sluice-store` binary takes pipelined
//! appends from several concurrent streams, is killed with SIGKILL
//! mid-stream, restarted on the same directory, and must hold every
//! acknowledged batch with identical bytes and contiguous offsets. Several
//! rounds, then a graceful SIGTERM shutdown.

mod common;

use common::{connect_store, free_port, make_batch, split_batches};
use sluice_proto::v1::store_client::StoreClient;
use sluice_proto::v1::{
    AppendRequest, Durability, ReadRequest, SegmentStatusRequest, StoreCreateSegmentRequest,
};
use sluice_proto::ErrorCode;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const SEGMENTS: [u64; 3] = [101, 102, 103];
const ROUNDS: usize = 4;
const ACKS_PER_SEGMENT_PER_ROUND: usize = 100;

type Acknowledged = Arc<Mutex<BTreeMap<u64, BTreeMap<u64, Vec<u8>>>>>;
/// Sequence -> (base offset, batch) of requests sent but not yet answered.
type InFlight = Arc<Mutex<BTreeMap<u64, (u64, Vec<u8>)>>>;

fn spawn_store(data_dir: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice-store"))
        .env("SLUICE_STORE_LISTEN_ADDRESS", format!("127.0.0.1:{port}"))
        .env("SLUICE_STORE_DATA_DIR", data_dir)
        // Nothing listens on this port: the store must serve regardless.
        .env(
            "SLUICE_STORE_NAMESERVERS",
            format!("[\"http://127.0.0.1:{}\"]", free_port()),
        )
        .env("SLUICE_STORE_REGISTER_RETRY_MAX_BACKOFF_MS", "500")
        // Checkpoints happen during the run too.
        .env("SLUICE_STORE_CHECKPOINT_INTERVAL_MS", "150")
        .env("SLUICE_STORE_JOURNAL_FILE_MAX_BYTES", "65536")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        // Not inherited: a store outliving a failed test must not hold the
        // test runner's output pipe open.
        .stderr(Stdio::null())
        .spawn()
        .expect("the sluice-store binary starts")
}

/// Kills the store when a test fails part way, so no process outlives it.
struct StoreProcess(Child);

impl Drop for StoreProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Appends pipelined batches to `segment_id` from its current end until
/// the stream breaks; records every acknowledged batch.
async fn append_until_broken(
    mut client: StoreClient<Channel>,
    segment_id: u64,
    acknowledged: Acknowledged,
) {
    let Ok(status) = client
        .get_segment_status(SegmentStatusRequest { segment_id })
        .await
    else {
        return;
    };
    let start = status.into_inner().end_offset;
    let (sender, receiver) = tokio::sync::mpsc::channel::<AppendRequest>(32);
    let Ok(response) = client
        .append(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
    else {
        return;
    };
    let mut responses = response.into_inner();
    let sent: InFlight = Arc::default();
    let producer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut offset = start;
            for sequence in 0u64.. {
                let records = 1 + (sequence % 4) as u32;
                let batch = make_batch(offset, records, segment_id * 1000 + sequence);
                sent.lock()
                    .expect("lock")
                    .insert(sequence, (offset, batch.to_vec()));
                let request = AppendRequest {
                    segment_id,
                    writer_epoch: 1,
                    batch,
                    sequence,
                };
                if sender.send(request).await.is_err() {
                    return;
                }
                offset += u64::from(records);
            }
        })
    };
    while let Ok(Some(response)) = responses.message().await {
        assert_eq!(
            response.error,
            ErrorCode::None as i32,
            "append refused before the kill: {response:?}"
        );
        let (offset, bytes) = sent
            .lock()
            .expect("lock")
            .remove(&response.sequence)
            .expect("a response answers a request that was sent");
        acknowledged
            .lock()
            .expect("lock")
            .entry(segment_id)
            .or_default()
            .insert(offset, bytes);
    }
    producer.abort();
}

/// Reads a whole segment over gRPC and checks contiguity.
async fn read_segment(
    client: &mut StoreClient<Channel>,
    segment_id: u64,
) -> BTreeMap<u64, Vec<u8>> {
    let status = client
        .get_segment_status(SegmentStatusRequest { segment_id })
        .await
        .expect("segment survives the restart")
        .into_inner();
    assert_eq!(status.corrupt_from_offset, None, "{status:?}");
    let mut batches = BTreeMap::new();
    let mut offset = status.base_offset;
    while offset < status.end_offset {
        let read = client
            .read(ReadRequest {
                segment_id,
                offset,
                max_bytes: 64 * 1024,
                end_offset: 0,
            })
            .await
            .expect("read")
            .into_inner();
        let part = split_batches(&read.batches, offset);
        assert!(!part.is_empty(), "read below the end returned nothing");
        for (base, bytes) in part {
            let header = sluice_proto::batch::BatchHeader::parse(&bytes).expect("header");
            offset = header.end_offset();
            batches.insert(base, bytes);
        }
    }
    batches
}

fn kill_hard(child: &mut Child) {
    // std's Child::kill sends SIGKILL on Unix.
    child.kill().expect("SIGKILL the store");
    child.wait().expect("reap the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_kill_9() {
    let directory = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let acknowledged: Acknowledged = Arc::default();
    let mut child = StoreProcess(spawn_store(directory.path(), port));
    let mut client = connect_store(&address).await;
    for segment_id in SEGMENTS {
        client
            .create_segment(StoreCreateSegmentRequest {
                segment_id,
                topic: "crash".to_string(),
                partition: segment_id as u32,
                base_offset: 0,
                writer_epoch: 1,
                durability: Durability::Fsync as i32,
            })
            .await
            .expect("create segment");
    }
    for round in 0..ROUNDS {
        let count_per_segment = || -> Vec<usize> {
            let acknowledged = acknowledged.lock().expect("lock");
            SEGMENTS
                .iter()
                .map(|segment| acknowledged.get(segment).map_or(0, BTreeMap::len))
                .collect()
        };
        let before = count_per_segment();
        let mut writers = Vec::new();
        for segment_id in SEGMENTS {
            writers.push(tokio::spawn(append_until_broken(
                client.clone(),
                segment_id,
                acknowledged.clone(),
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        // Kill once every stream had a good number acknowledged, while all
        // of them still have appends in flight.
        loop {
            let now = count_per_segment();
            if now
                .iter()
                .zip(&before)
                .all(|(now, before)| *now >= before + ACKS_PER_SEGMENT_PER_ROUND)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: acknowledgements per segment {now:?} (before {before:?}) after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        kill_hard(&mut child.0);
        for writer in writers {
            writer.await.expect("writer task");
        }
        child = StoreProcess(spawn_store(directory.path(), port));
        client = connect_store(&address).await;
        let expected = acknowledged.lock().expect("lock").clone();
        for segment_id in SEGMENTS {
            let stored = read_segment(&mut client, segment_id).await;
            let acked = expected.get(&segment_id).cloned().unwrap_or_default();
            assert!(
                !acked.is_empty(),
                "round {round}: segment {segment_id} got acks"
            );
            for (offset, bytes) in &acked {
                assert_eq!(
                    stored.get(offset),
                    Some(bytes),
                    "round {round}: acknowledged batch at {offset} of segment {segment_id} lost or changed"
                );
            }
        }
    }
    // Graceful stop: SIGTERM, exit status success.
    // SAFETY: sending a signal to our own child process by its pid.
    let result = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(result, 0, "SIGTERM delivered");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "graceful shutdown exit status {status}");
            break;
        }
        if Instant::now() > deadline {
            kill_hard(&mut child.0);
            panic!("store did not stop within 30 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
