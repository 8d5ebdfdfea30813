//! JSON answers: the cluster's protobuf types shaped for the page, bytes
//! shown as UTF-8 or hex within a size limit, and JSON text that stays
//! inert even if a browser were to read it as HTML.

use crate::nodes::DownNode;
use crate::Body;
use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_proto::v1;

/// A live node whose lease has less than this left is shown as expiring
/// (the nameserver's default lease is 5,000 ms, renewed well before).
pub const LEASE_WARNING_MS: i64 = 2_000;

/// JSON text with `<`, `>` and `&` written as `\u` escapes: still the same
/// JSON, but never markup, whatever reads it.
pub fn json_text(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            other => out.push(other),
        }
    }
    out
}

/// A JSON answer.
pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(json_text(value))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

/// How a client error maps to an HTTP status.
pub fn client_error_response(error: &sluice_client::ClientError) -> Response<Body> {
    use sluice_client::ClientError;
    use sluice_proto::ErrorCode;
    let status = match error {
        ClientError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        ClientError::Server(server) => match server.code {
            ErrorCode::UnknownTopic => StatusCode::NOT_FOUND,
            ErrorCode::TopicAlreadyExists => StatusCode::CONFLICT,
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::OffsetOutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::BAD_GATEWAY,
    };
    error_response(status, &error.to_string())
}

/// Bytes for people: the text if they are UTF-8, else hex; at most
/// `max_bytes` of them, `truncated` saying whether more were cut.
pub fn render_bytes(bytes: &[u8], max_bytes: usize) -> Value {
    let truncated = bytes.len() > max_bytes;
    let (encoding, text) = match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut cut = max_bytes.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            ("utf8", text[..cut].to_string())
        }
        Err(_) => ("hex", hex(&bytes[..max_bytes.min(bytes.len())])),
    };
    json!({ "encoding": encoding, "text": text, "size": bytes.len(), "truncated": truncated })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

fn kind_name(kind: i32) -> &'static str {
    match v1::NodeKind::try_from(kind) {
        Ok(v1::NodeKind::Broker) => "broker",
        Ok(v1::NodeKind::Store) => "store",
        Ok(v1::NodeKind::Nameserver) => "nameserver",
        _ => "unknown",
    }
}

/// A live node's health word: "up", "unhealthy" (its own report) or
/// "lease expiring".
pub fn node_health(node: &v1::NodeInfo) -> &'static str {
    if node.load.as_ref().is_some_and(|load| !load.healthy) {
        "unhealthy"
    } else if node.lease_remaining_ms < LEASE_WARNING_MS {
        "lease expiring"
    } else {
        "up"
    }
}

fn node_json(node: &v1::NodeInfo) -> Value {
    let load = node.load.clone().unwrap_or_default();
    json!({
        "kind": kind_name(node.kind),
        "node_id": node.node_id,
        "address": node.address,
        "rack": node.rack,
        "health": node_health(node),
        "lease_remaining_ms": node.lease_remaining_ms,
        "detail": load.detail,
        "partitions": load.partitions,
        "segments": load.segments,
        "bytes_in_per_sec": load.bytes_in_per_sec,
        "disk_free_bytes": load.disk_free_bytes,
        "disk_total_bytes": load.disk_total_bytes,
    })
}

/// Every live node of a status answer as (kind, id, address).
pub fn live_nodes(status: &v1::ClusterStatusResponse) -> Vec<(String, String, String)> {
    all_nodes(status)
        .map(|node| {
            (
                kind_name(node.kind).to_string(),
                node.node_id.clone(),
                node.address.clone(),
            )
        })
        .collect()
}

fn all_nodes(status: &v1::ClusterStatusResponse) -> impl Iterator<Item = &v1::NodeInfo> {
    status
        .nameservers
        .iter()
        .chain(&status.brokers)
        .chain(&status.stores)
}

/// The cluster overview.
pub fn cluster_json(status: &v1::ClusterStatusResponse, down: &[DownNode]) -> Value {
    let nodes: Vec<Value> = all_nodes(status).map(node_json).collect();
    let down: Vec<Value> = down
        .iter()
        .map(|node| {
            json!({
                "kind": node.kind, "node_id": node.node_id,
                "address": node.address, "last_seen_ms": node.last_seen_ms,
            })
        })
        .collect();
    json!({
        "metadata_backend": status.metadata_backend,
        "active_assigner": status.active_assigner,
        "topics": status.topics,
        "partitions": status.partitions,
        "offline_partitions": status.offline_partitions,
        "segments": status.segments,
        "under_replicated_segments": status.under_replicated_segments,
        "nodes": nodes,
        "down_nodes": down,
    })
}

/// A topic's configuration, every field by its protobuf name.
pub fn config_json(config: &v1::TopicConfig) -> Value {
    let durability = v1::Durability::try_from(config.durability)
        .map(|durability| durability.as_str_name())
        .unwrap_or("UNKNOWN");
    let policy = v1::BacklogPolicy::try_from(config.backlog_policy)
        .map(|policy| policy.as_str_name())
        .unwrap_or("UNKNOWN");
    json!({
        "partitions": config.partitions,
        "retention_ms": config.retention_ms,
        "retention_bytes": config.retention_bytes,
        "durability": durability,
        "segment_bytes": config.segment_bytes,
        "segment_ms": config.segment_ms,
        "ensemble_size": config.ensemble_size,
        "write_quorum": config.write_quorum,
        "ack_quorum": config.ack_quorum,
        "max_batch_bytes": config.max_batch_bytes,
        "message_ttl_ms": config.message_ttl_ms,
        "retention_ignores_subscriptions": config.retention_ignores_subscriptions,
        "backlog_quota_bytes": config.backlog_quota_bytes,
        "backlog_quota_messages": config.backlog_quota_messages,
        "backlog_quota_age_ms": config.backlog_quota_age_ms,
        "backlog_policy": policy,
    })
}

/// One topic of a listing.
pub fn topic_json(topic: &v1::Topic) -> Value {
    json!({
        "name": topic.name,
        "internal": topic.internal,
        "created_at_ms": topic.created_at_ms,
        "config": topic.config.as_ref().map(config_json),
    })
}

/// A topic with its partitions: owner, epoch and segments.
pub fn topic_description_json(description: &v1::DescribeTopicResponse) -> Value {
    let partitions: Vec<Value> = description
        .partitions
        .iter()
        .map(|partition| {
            let route = partition.route.clone().unwrap_or_default();
            let segments: Vec<Value> = partition
                .segments
                .iter()
                .map(|segment| {
                    let state = v1::SegmentState::try_from(segment.state)
                        .map(|state| state.as_str_name())
                        .unwrap_or("UNKNOWN");
                    json!({
                        "segment_id": segment.segment_id,
                        "state": state,
                        "base_offset": segment.base_offset,
                        "end_offset": segment.end_offset,
                        "size_bytes": segment.size_bytes,
                        "replicas": segment.replicas.len(),
                    })
                })
                .collect();
            json!({
                "partition": route.partition,
                "owner": route.broker_id,
                "owner_address": route.broker_address,
                "epoch": route.epoch,
                "segments": segments,
            })
        })
        .collect();
    json!({
        "topic": description.topic.as_ref().map(topic_json),
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_never_carries_markup() {
        let value = json!({ "text": "</script><script>alert(1)</script>&amp;" });
        let text = json_text(&value);
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value, "the escapes decode to the same JSON");
    }

    #[test]
    fn utf8_is_shown_as_text_and_cut_at_a_character() {
        let shown = render_bytes("héllo".as_bytes(), 2);
        assert_eq!(shown["encoding"], "utf8");
        assert_eq!(shown["text"], "h", "é is two bytes and does not fit");
        assert_eq!(shown["size"], 6);
        assert_eq!(shown["truncated"], true);
        let whole = render_bytes(b"<b>", 64);
        assert_eq!(whole["text"], "<b>");
        assert_eq!(whole["truncated"], false);
        let empty = render_bytes(b"", 0);
        assert_eq!(empty["text"], "");
        assert_eq!(empty["truncated"], false);
    }

    #[test]
    fn binary_is_shown_as_hex_within_the_limit() {
        let shown = render_bytes(&[0xff, 0x00, 0x7f, 0x10], 3);
        assert_eq!(shown["encoding"], "hex");
        assert_eq!(shown["text"], "ff007f");
        assert_eq!(shown["truncated"], true);
    }

    fn node(kind: v1::NodeKind, id: &str, lease_ms: i64, healthy: bool) -> v1::NodeInfo {
        v1::NodeInfo {
            kind: kind as i32,
            node_id: id.into(),
            address: format!("{id}:1"),
            lease_remaining_ms: lease_ms,
            load: Some(v1::NodeLoad {
                healthy,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn health_words() {
        assert_eq!(
            node_health(&node(v1::NodeKind::Broker, "b", 4_000, true)),
            "up"
        );
        assert_eq!(
            node_health(&node(v1::NodeKind::Broker, "b", 1_999, true)),
            "lease expiring"
        );
        assert_eq!(
            node_health(&node(v1::NodeKind::Store, "s", 4_000, false)),
            "unhealthy"
        );
    }

    #[test]
    fn the_overview_names_kinds_assigner_and_down_nodes() {
        let status = v1::ClusterStatusResponse {
            nameservers: vec![node(v1::NodeKind::Nameserver, "ns", 4_000, true)],
            brokers: vec![node(v1::NodeKind::Broker, "b1", 4_000, true)],
            stores: vec![node(v1::NodeKind::Store, "s1", 100, true)],
            active_assigner: "ns".into(),
            under_replicated_segments: 3,
            ..Default::default()
        };
        let down = [DownNode {
            kind: "broker".into(),
            node_id: "b2".into(),
            address: "b2:1".into(),
            last_seen_ms: 5,
        }];
        let shaped = cluster_json(&status, &down);
        let kinds: Vec<&str> = shaped["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| node["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["nameserver", "broker", "store"]);
        assert_eq!(shaped["nodes"][2]["health"], "lease expiring");
        assert_eq!(shaped["active_assigner"], "ns");
        assert_eq!(shaped["under_replicated_segments"], 3);
        assert_eq!(shaped["down_nodes"][0]["node_id"], "b2");
        assert_eq!(live_nodes(&status).len(), 3);
    }
}
