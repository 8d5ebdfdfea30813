//! The fake broker's gRPC service: produce, fetch, offsets, the scripted
//! group coordinator and `Subscribe`.

use super::*;

#[tonic::async_trait]
impl Broker for FakeBroker {
    type ProduceStream = ResponseStream;

    async fn produce(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut inbound = request.into_inner();
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        let broker = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                broker
                    .taken
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Taken and left until thawed, then answered (SIGCONT).
                broker.wait_while_frozen().await;
                let response = broker.produce_one(request);
                if sender.send(Ok(response)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.wait_while_frozen().await;
        let request = request.into_inner();
        let mut answer = FetchResponse::default();
        let mut any = false;
        {
            let state = self.lock();
            for wanted in &request.partitions {
                let key = (wanted.topic.clone(), wanted.partition);
                let end = *state.next_offset.get(&key).unwrap_or(&0);
                let mut fetched = FetchedPartition {
                    topic: wanted.topic.clone(),
                    partition: wanted.partition,
                    high_watermark: end,
                    ..FetchedPartition::default()
                };
                if self.refuse_fetch.load(std::sync::atomic::Ordering::SeqCst) {
                    fetched.error = ErrorCode::NotOwner as i32;
                } else if wanted.offset > end {
                    fetched.error = ErrorCode::OffsetOutOfRange as i32;
                } else if let Some((start, lost_end)) =
                    state.lost.get(&key).filter(|(start, lost_end)| {
                        *start <= wanted.offset && wanted.offset < *lost_end
                    })
                {
                    fetched.error = ErrorCode::DataLost as i32;
                    fetched.error_message = format!("offsets {start}..{lost_end} were lost");
                    fetched.lost_end_offset = *lost_end;
                } else {
                    let stop = state
                        .lost
                        .get(&key)
                        .map(|(start, _)| *start)
                        .filter(|start| *start > wanted.offset)
                        .unwrap_or(u64::MAX);
                    let mut bytes = Vec::new();
                    for batch in state.logs.get(&key).into_iter().flatten() {
                        let header = BatchIter::new(batch)
                            .next()
                            .expect("one batch")
                            .expect("valid batch")
                            .1;
                        if header.end_offset() <= wanted.offset {
                            continue;
                        }
                        if header.end_offset() > stop {
                            break;
                        }
                        if !bytes.is_empty()
                            && bytes.len() + batch.len() > wanted.max_bytes as usize
                        {
                            break;
                        }
                        bytes.extend_from_slice(batch);
                    }
                    any |= !bytes.is_empty();
                    self.fetched_bytes
                        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst);
                    fetched.batches = Bytes::from(bytes);
                }
                answer.partitions.push(fetched);
            }
        }
        if !any {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Response::new(answer))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let request = request.into_inner();
        let key = (request.topic, request.partition);
        let state = self.lock();
        let end = *state.next_offset.get(&key).unwrap_or(&0);
        let stable = *state.last_stable.get(&key).unwrap_or(&end);
        drop(state);
        let committed = request.isolation == IsolationLevel::ReadCommitted as i32;
        let offset = match OffsetSpec::try_from(request.spec) {
            Ok(OffsetSpec::Latest) if committed => stable,
            Ok(OffsetSpec::Latest) => end,
            _ => 0,
        };
        Ok(Response::new(ListOffsetsResponse {
            offset,
            log_start_offset: 0,
            high_watermark: end,
            ..Default::default()
        }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        if request.member_epoch == -1 {
            state.left = true;
        }
        let owned = Self::tp_set(&request.owned);
        let described: Vec<String> = owned
            .iter()
            .map(|(topic, partition)| format!("{topic}/{partition}"))
            .collect();
        state
            .group_events
            .push(format!("heartbeat {}", described.join(",")));
        state.heartbeats_owned.push(owned.clone());
        state
            .heartbeat_members
            .push((request.member_id.clone(), request.member_epoch, owned));
        if !state.fail_heartbeats.is_empty() {
            let code = state.fail_heartbeats.remove(0);
            return Ok(Response::new(GroupHeartbeatResponse {
                error: code as i32,
                error_message: "injected heartbeat failure".into(),
                ..GroupHeartbeatResponse::default()
            }));
        }
        let mut by_topic: HashMap<String, Vec<u32>> = HashMap::new();
        for (topic, partition) in &state.group_target {
            by_topic.entry(topic.clone()).or_default().push(*partition);
        }
        Ok(Response::new(GroupHeartbeatResponse {
            member_id: "member-1".into(),
            member_epoch: request.member_epoch.max(0) + 1,
            heartbeat_interval_ms: 20,
            assignment: by_topic
                .into_iter()
                .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                .collect(),
            ..GroupHeartbeatResponse::default()
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.lock();
        for offset in &request.offsets {
            state
                .commits
                .push((offset.topic.clone(), offset.partition, offset.offset));
            state.group_events.push(format!(
                "commit {}/{} {}",
                offset.topic, offset.partition, offset.offset
            ));
            state
                .committed
                .insert((offset.topic.clone(), offset.partition), offset.offset);
        }
        Ok(Response::new(CommitOffsetsResponse {
            offsets: request.offsets,
        }))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let request = request.into_inner();
        let state = self.lock();
        let offsets = Self::tp_set(&request.partitions)
            .into_iter()
            .filter_map(|(topic, partition)| {
                state
                    .committed
                    .get(&(topic.clone(), partition))
                    .map(|offset| PartitionOffset {
                        topic,
                        partition,
                        offset: *offset,
                        ..PartitionOffset::default()
                    })
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn describe_group(
        &self,
        _request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn reset_subscription_cursor(
        &self,
        _request: Request<sluice_proto::v1::ResetSubscriptionCursorRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn skip_subscription(
        &self,
        _request: Request<sluice_proto::v1::SkipSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::SkipSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn delete_group(
        &self,
        _request: Request<sluice_proto::v1::DeleteGroupRequest>,
    ) -> Result<Response<sluice_proto::v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn get_message(
        &self,
        _request: Request<sluice_proto::v1::GetMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::GetMessageResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn find_messages(
        &self,
        _request: Request<sluice_proto::v1::FindMessagesRequest>,
    ) -> Result<Response<sluice_proto::v1::FindMessagesResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn explain_message(
        &self,
        _request: Request<sluice_proto::v1::ExplainMessageRequest>,
    ) -> Result<Response<sluice_proto::v1::ExplainMessageResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn describe_subscription(
        &self,
        _request: Request<sluice_proto::v1::DescribeSubscriptionRequest>,
    ) -> Result<Response<sluice_proto::v1::DescribeSubscriptionResponse>, Status> {
        Err(Status::unimplemented("not needed by the SDK tests"))
    }

    async fn write_txn_markers(
        &self,
        _request: Request<WriteTxnMarkersRequest>,
    ) -> Result<Response<WriteTxnMarkersResponse>, Status> {
        Err(Status::unimplemented("brokers only"))
    }

    // The fake coordinates no transactions (the SDK's transactional
    // producer is ADR 0016 stage 3).
    async fn init_producer_id(
        &self,
        _request: Request<sluice_proto::v1::InitProducerIdRequest>,
    ) -> Result<Response<sluice_proto::v1::InitProducerIdResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn add_transaction_participants(
        &self,
        _request: Request<sluice_proto::v1::AddTransactionParticipantsRequest>,
    ) -> Result<Response<sluice_proto::v1::AddTransactionParticipantsResponse>, Status> {
        Err(Status::unimplemented("brokers only"))
    }

    async fn end_transaction(
        &self,
        _request: Request<sluice_proto::v1::EndTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::EndTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn list_transactions(
        &self,
        _request: Request<sluice_proto::v1::ListTransactionsRequest>,
    ) -> Result<Response<sluice_proto::v1::ListTransactionsResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn describe_transaction(
        &self,
        _request: Request<sluice_proto::v1::DescribeTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::DescribeTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    async fn abort_transaction(
        &self,
        _request: Request<sluice_proto::v1::AbortTransactionRequest>,
    ) -> Result<Response<sluice_proto::v1::AbortTransactionResponse>, Status> {
        Err(Status::unimplemented(
            "no transaction coordinator in the fake",
        ))
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<sluice_proto::v1::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<sluice_proto::v1::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use sluice_proto::v1::subscribe_request::Request as Incoming;
        use sluice_proto::v1::subscribe_response::Response as Outgoing;
        let mut inbound = request.into_inner();
        let Some(Incoming::Open(open)) = inbound.message().await?.and_then(|first| first.request)
        else {
            return Err(Status::invalid_argument("open first"));
        };
        let key = (open.topic.clone(), open.partition);
        let (stream, opened) = {
            let mut state = self.lock();
            let sub = &mut state.subscription;
            sub.events.push(format!(
                "open {}/{} permits={}",
                open.topic, open.partition, open.permits
            ));
            sub.opens += 1;
            if let Some(code) = sub.refuse_opens.pop_front() {
                return Err(sluice_proto::SluiceError::new(code, "injected refusal").into());
            }
            let opened = SubscribeOpened {
                subscription: Some(Subscription {
                    topic: open.topic.clone(),
                    name: open.subscription.clone(),
                    r#type: sub.subscription_type as i32,
                    ..Subscription::default()
                }),
                consumer_id: sub.opens,
                active: sub.active,
            };
            (sub.opens, opened)
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let respond = |response| SubscribeResponse {
            response: Some(response),
        };
        let _ = sender.send(Ok(respond(Outgoing::Opened(opened)))).await;
        let broker = self.clone();
        tokio::spawn(async move {
            let mut permits = u64::from(open.permits);
            loop {
                tokio::select! {
                    request = inbound.message() => {
                        let Ok(Some(request)) = request else { break };
                        let receipt = broker.on_subscribe_request(&key, stream, &mut permits, request);
                        if let Some(receipt) = receipt {
                            if sender.send(Ok(respond(Outgoing::AckReceipt(receipt)))).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(2)) => {
                        if broker.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                            // Silent while frozen; a stream the client
                            // drops still ends (the kernel keeps talking).
                            continue;
                        }
                        let (broken, status, delivery) = broker.subscribe_tick(&key, stream, &mut permits);
                        if let Some(code) = broken {
                            broker.end_stream(stream);
                            let _ = sender.send(Err(sluice_proto::SluiceError::new(code, "injected break").into())).await;
                            return;
                        }
                        if let Some(active) = status {
                            let _ = sender.send(Ok(respond(Outgoing::Status(ConsumerStatus { active })))).await;
                        }
                        if let Some(delivery) = delivery {
                            if sender.send(Ok(respond(Outgoing::Delivery(delivery)))).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            broker.end_stream(stream);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

impl FakeBroker {
    /// Applies one request of a `Subscribe` stream; returns the receipt to send.
    fn on_subscribe_request(
        &self,
        key: &(String, u32),
        stream: u64,
        permits: &mut u64,
        request: SubscribeRequest,
    ) -> Option<AckReceipt> {
        use sluice_proto::v1::subscribe_request::Request as Incoming;
        let mut state = self.lock();
        let sub = &mut state.subscription;
        match request.request? {
            Incoming::Open(_) => None,
            Incoming::Flow(flow) => {
                sub.events.push(format!("flow {}", flow.permits));
                *permits += u64::from(flow.permits);
                None
            }
            Incoming::Nack(nack) => {
                let listed: Vec<String> = nack.offsets.iter().map(u64::to_string).collect();
                sub.events
                    .push(format!("nack {} delay={}", listed.join(","), nack.delay_ms));
                for offset in nack.offsets {
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    if delivered
                        .get(&offset)
                        .is_some_and(|entry| entry.stream == stream)
                    {
                        if let Some(entry) = delivered.remove(&offset) {
                            sub.redeliver
                                .entry(key.clone())
                                .or_default()
                                .insert(offset, entry.count);
                        }
                    }
                }
                None
            }
            Incoming::Ack(ack) => {
                let listed: Vec<String> = ack.offsets.iter().map(u64::to_string).collect();
                sub.events.push(format!("ack {}", listed.join(",")));
                let mut receipt = AckReceipt {
                    request_id: ack.request_id,
                    ..AckReceipt::default()
                };
                if let Some(cumulative) = ack.cumulative_offset {
                    sub.events.push(format!("cumulative {cumulative}"));
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    let covered: Vec<u64> = delivered
                        .range(..=cumulative)
                        .filter(|(_, entry)| entry.stream == stream)
                        .map(|(offset, _)| *offset)
                        .collect();
                    for offset in covered {
                        delivered.remove(&offset);
                        sub.acked.insert((key.0.clone(), key.1, offset));
                    }
                }
                for offset in ack.offsets {
                    let delivered = sub.delivered.entry(key.clone()).or_default();
                    let error = if let Some(code) = sub.reject_acks.get(&offset) {
                        Some(*code)
                    } else if delivered
                        .get(&offset)
                        .is_some_and(|entry| entry.stream == stream)
                    {
                        delivered.remove(&offset);
                        sub.acked.insert((key.0.clone(), key.1, offset));
                        None
                    } else if sub.acked.contains(&(key.0.clone(), key.1, offset)) {
                        None
                    } else {
                        Some(ErrorCode::DeliveryExpired)
                    };
                    match error {
                        None => receipt.acknowledged.push(offset),
                        Some(code) => receipt.rejected.push(AckResult {
                            offset,
                            error: code as i32,
                        }),
                    }
                }
                (!sub.hold_receipts).then_some(receipt)
            }
        }
    }

    /// One tick of a `Subscribe` stream: whether to break it, a status to
    /// push, and what to deliver within its permits.
    fn subscribe_tick(
        &self,
        key: &(String, u32),
        stream: u64,
        permits: &mut u64,
    ) -> (Option<ErrorCode>, Option<bool>, Option<Delivery>) {
        let mut state = self.lock();
        let state = &mut *state;
        let sub = &mut state.subscription;
        if let Some((up_to, code)) = sub.break_streams {
            if stream <= up_to {
                return (Some(code), None, None);
            }
        }
        let status = sub.push_status.take();
        let end = *state.next_offset.get(key).unwrap_or(&0);
        let mut chosen: Vec<(u64, u32)> = Vec::new();
        let redeliver = sub.redeliver.entry(key.clone()).or_default();
        while (chosen.len() as u64) < *permits {
            let Some((offset, count)) = redeliver.pop_first() else {
                break;
            };
            chosen.push((offset, count + 1));
        }
        let cursor = sub.cursor.entry(key.clone()).or_insert(0);
        while (chosen.len() as u64) < *permits && *cursor < end {
            chosen.push((*cursor, 1));
            *cursor += 1;
        }
        if chosen.is_empty() {
            return (None, status, None);
        }
        chosen.sort_unstable();
        *permits -= chosen.len() as u64;
        sub.deliveries += chosen.len() as u64;
        let delivered = sub.delivered.entry(key.clone()).or_default();
        for (offset, count) in &chosen {
            delivered.insert(
                *offset,
                FakeDelivered {
                    stream,
                    count: *count,
                },
            );
        }
        let mut batches = Vec::new();
        for batch in state.logs.get(key).into_iter().flatten() {
            let header = BatchIter::new(batch)
                .next()
                .expect("one batch")
                .expect("valid batch")
                .1;
            if chosen
                .iter()
                .any(|(offset, _)| *offset >= header.base_offset && *offset < header.end_offset())
            {
                batches.extend_from_slice(batch);
            }
        }
        let delivery = Delivery {
            batches: Bytes::from(batches),
            offsets: chosen.iter().map(|(offset, _)| *offset).collect(),
            delivery_counts: chosen.iter().map(|(_, count)| *count).collect(),
        };
        (None, status, Some(delivery))
    }

    /// A stream ended: what it held unacknowledged is delivered again.
    fn end_stream(&self, stream: u64) {
        let mut state = self.lock();
        let sub = &mut state.subscription;
        for (key, delivered) in sub.delivered.iter_mut() {
            let held: Vec<u64> = delivered
                .iter()
                .filter(|(_, entry)| entry.stream == stream)
                .map(|(offset, _)| *offset)
                .collect();
            for offset in held {
                if let Some(entry) = delivered.remove(&offset) {
                    sub.redeliver
                        .entry(key.clone())
                        .or_default()
                        .insert(offset, entry.count);
                }
            }
        }
    }
}
