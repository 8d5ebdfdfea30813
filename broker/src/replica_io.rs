//! The broker's IO with segment replicas on the stores, used by the
//! partition pipeline, takeover recovery, producer-state rebuilds and
//! repair: reading a segment's batches from whichever replica has them,
//! copying a range from one replica to another, opening an append stream.
//! It takes only the channels it needs, so none of its users depends on
//! another.

use crate::clients::{request, stream_request, Clients};
use crate::closed_damage::Holding;
use crate::error::BrokerError;
use crate::recovery_plan::damaged_ranges;
use crate::tail_cache::PartitionKey;
use bytes::Bytes;
use sluice_proto::v1::{
    AppendRequest, AppendResponse, ReadRequest, RecoveryAppendRequest, SegmentInfo, SegmentReplica,
    SegmentStatus, SegmentStatusRequest, StoreCreateSegmentRequest,
};
use sluice_proto::{ErrorCode, SluiceError};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Whole batches of `segment` from `offset` (below `end_offset`, at most
/// `max_bytes` unless one batch is larger) from the first replica that has
/// them, trying recently failed stores last. A replica whose copy ends
/// before `offset` (it missed the tail and awaits repair) is skipped.
pub(crate) async fn read_segment(
    clients: &Clients,
    key: &PartitionKey,
    segment: &SegmentInfo,
    offset: u64,
    end_offset: u64,
    max_bytes: usize,
) -> Result<Bytes, BrokerError> {
    let mut last_error = BrokerError::Unavailable(format!(
        "segment {} of {key} has no replicas",
        segment.segment_id
    ));
    let order = clients.read_order(
        segment
            .replicas
            .iter()
            .map(|replica| replica.address.as_str()),
    );
    for replica in order.iter().map(|index| &segment.replicas[*index]) {
        let mut store = clients.store(&replica.address)?;
        let read = ReadRequest {
            segment_id: segment.segment_id,
            offset,
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            end_offset,
        };
        match store.read(request(read, clients.store_timeout)).await {
            Ok(response) => {
                let batches = response.into_inner().batches;
                if !batches.is_empty() {
                    return Ok(batches);
                }
                last_error = BrokerError::Unavailable(format!(
                    "no replica of segment {} of {key} holds offset {offset} yet",
                    segment.segment_id
                ));
            }
            Err(status) => {
                clients.store_failed(&replica.address);
                tracing::warn!(partition = %key, store = %replica.store_id, %status, "store read failed");
                last_error = BrokerError::remote("store Read", &status);
            }
        }
    }
    Err(last_error)
}

/// What each replica of a closed segment holds intact, asked now: a
/// store that lost the segment or holds it unusable holds nothing, one
/// that does not answer is unknown.
pub(crate) async fn holdings(clients: &Clients, segment: &SegmentInfo) -> Vec<Holding> {
    let mut holdings = Vec::with_capacity(segment.replicas.len());
    for replica in &segment.replicas {
        let Ok(mut store) = clients.store(&replica.address) else {
            holdings.push(Holding::Unknown);
            continue;
        };
        let asked = SegmentStatusRequest {
            segment_id: segment.segment_id,
        };
        holdings.push(
            match store
                .get_segment_status(request(asked, clients.store_timeout))
                .await
            {
                Ok(status) => holding_of(&status.into_inner()),
                Err(status) => holding_on_error(&status),
            },
        );
    }
    holdings
}

/// What a copy holds by its store's status.
pub(crate) fn holding_of(status: &SegmentStatus) -> Holding {
    Holding::Copy {
        end_offset: status.end_offset,
        damaged: damaged_ranges(status),
    }
}

/// What a copy holds by its store's refusal to tell.
pub(crate) fn holding_on_error(status: &tonic::Status) -> Holding {
    match SluiceError::from_status(status).code {
        ErrorCode::UnknownSegment | ErrorCode::StorageCorrupt => Holding::Nothing,
        _ => Holding::Unknown,
    }
}

/// A range of a segment to copy from one replica to another.
pub(crate) struct CopyRange<'a> {
    pub segment_id: u64,
    pub source: &'a SegmentReplica,
    pub target: &'a SegmentReplica,
    pub from_offset: u64,
    pub end_offset: u64,
    /// The owner's epoch: copying into a sealed copy needs one at least
    /// its fence (ADR 0008).
    pub fence_epoch: u64,
    /// Most bytes read per chunk.
    pub chunk_bytes: u32,
}

/// Copies `[from_offset, end_offset)` of a segment from one store to
/// another, in chunks of at most `chunk_bytes`, as the owner at
/// `fence_epoch` (allowed on a sealed copy the owner fenced); adds the
/// bytes copied to `copied_bytes`. Used by repair and by takeover
/// recovery.
pub(crate) async fn copy_range(
    clients: &Clients,
    range: &CopyRange<'_>,
    copied_bytes: &AtomicU64,
) -> Result<(), BrokerError> {
    let segment_id = range.segment_id;
    let end_offset = range.end_offset;
    let mut source_store = clients.store(&range.source.address)?;
    let mut target_store = clients.store(&range.target.address)?;
    let mut offset = range.from_offset;
    while offset < end_offset {
        let read = ReadRequest {
            segment_id,
            offset,
            max_bytes: range.chunk_bytes,
            end_offset,
        };
        let batches = source_store
            .read(request(read, clients.store_timeout))
            .await
            .map_err(|status| BrokerError::remote("store Read (copy)", &status))?
            .into_inner()
            .batches;
        if batches.is_empty() {
            return Err(BrokerError::Internal(format!(
                "store {} returned nothing at {offset} of segment {segment_id} below {end_offset}",
                range.source.store_id
            )));
        }
        let copied = batches.len() as u64;
        let append = RecoveryAppendRequest {
            segment_id,
            fence_epoch: range.fence_epoch,
            batches,
        };
        let status = target_store
            .recovery_append(request(append, clients.store_timeout))
            .await
            .map_err(|status| BrokerError::remote("store RecoveryAppend", &status))?
            .into_inner();
        if status.end_offset <= offset {
            return Err(BrokerError::Internal(format!(
                "store {} did not advance segment {segment_id} past {offset}",
                range.target.store_id
            )));
        }
        copied_bytes.fetch_add(copied, Ordering::Relaxed);
        offset = status.end_offset;
    }
    Ok(())
}

/// Creates the new segment on one store and opens its ordered append stream.
pub(crate) async fn open_append_stream(
    clients: &Clients,
    create: StoreCreateSegmentRequest,
    address: &str,
    capacity: usize,
) -> Result<
    (
        mpsc::Sender<AppendRequest>,
        tonic::Streaming<AppendResponse>,
    ),
    BrokerError,
> {
    let mut store = clients.store(address)?;
    store
        .create_segment(request(create, clients.store_timeout))
        .await
        .map_err(|status| BrokerError::remote("store CreateSegment", &status))?;
    let (sender, receiver) = mpsc::channel(capacity);
    let stream = tokio::time::timeout(
        clients.store_timeout,
        store.append(stream_request(ReceiverStream::new(receiver))),
    )
    .await
    .map_err(|_| BrokerError::Timeout(format!("opening the append stream to {address}")))?
    .map_err(|status| BrokerError::remote("store Append", &status))?
    .into_inner();
    Ok((sender, stream))
}
