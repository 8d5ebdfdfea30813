//! Subscriptions with queue semantics (ADR 0011): the dispatcher of each
//! (partition, subscription) served here, its consumers' streams, and the
//! durable cursor of acknowledged messages.

use crate::Shared;
use futures::Stream;
use sluice_proto::v1::{SubscribeRequest, SubscribeResponse};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Status, Streaming};

pub type SubscribeResponseStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

/// Serves one consumer's `Subscribe` stream.
pub fn serve(
    _shared: Arc<Shared>,
    _requests: Streaming<SubscribeRequest>,
) -> SubscribeResponseStream {
    Box::pin(futures::stream::once(async {
        Err(Status::unimplemented(
            "subscriptions: being built (issue 4)",
        ))
    }))
}
