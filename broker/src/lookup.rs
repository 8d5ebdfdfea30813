//! Message lookup on the partition owner (ADR 0013): one message by id,
//! messages by key, tag and time range, and why a message was or was not
//! delivered to a subscription.

use crate::error::BrokerError;
use crate::Shared;
use sluice_proto::v1::{
    ExplainMessageRequest, ExplainMessageResponse, FindMessagesRequest, FindMessagesResponse,
    GetMessageRequest, GetMessageResponse,
};

pub async fn get_message(
    _shared: &Shared,
    _request: GetMessageRequest,
) -> Result<GetMessageResponse, BrokerError> {
    Err(BrokerError::Unavailable("message lookup is being built".into()))
}

pub async fn find_messages(
    _shared: &Shared,
    _request: FindMessagesRequest,
) -> Result<FindMessagesResponse, BrokerError> {
    Err(BrokerError::Unavailable("message lookup is being built".into()))
}

pub async fn explain_message(
    _shared: &Shared,
    _request: ExplainMessageRequest,
) -> Result<ExplainMessageResponse, BrokerError> {
    Err(BrokerError::Unavailable("message lookup is being built".into()))
}
