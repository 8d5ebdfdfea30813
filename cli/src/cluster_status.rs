//! `sluice cluster status`: nameservers, brokers and stores with their
//! leases and load; the nodes that are down (their session was ended for
//! silence) or late (missed heartbeats: about to be ended), with how long;
//! offline and damaged partitions.

use crate::output::{json, print_json, print_table};
use crate::units::{format_bytes, format_duration_ms};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use sluice_client::{Admin, ClientConfig};
use sluice_proto::v1::{ClusterStatusResponse, DownNode, NodeInfo, NodeLoad};

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nameservers, brokers and stores with their leases and load, and the nodes that are down.
    Status,
}

/// What `cluster status` says about one registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    /// `up`, `late` (missed heartbeats; its session ends soon unless one
    /// arrives), `expiring` (its lease is gone, the key not yet), or
    /// `unhealthy` (serving but reports a problem).
    pub status: &'static str,
    pub detail: String,
}

/// The condition of `node`, from the answering nameserver's view.
/// Heartbeats come at most every third of the session timeout (ADR
/// 0014), so a node silent for longer has missed at least one.
pub fn condition(node: &NodeInfo, session_timeout_ms: u64) -> NodeCondition {
    if node.lease_remaining_ms < 0 {
        return NodeCondition {
            status: "expiring",
            detail: "its lease is gone; it is being removed".into(),
        };
    }
    let silent_ms = u64::try_from(node.last_heartbeat_ms_ago).ok();
    if let Some(silent_ms) = silent_ms.filter(|_| session_timeout_ms > 0) {
        if silent_ms > session_timeout_ms / 3 {
            let ends_in = session_timeout_ms.saturating_sub(silent_ms);
            return NodeCondition {
                status: "late",
                detail: format!(
                    "no heartbeat for {}; its session ends in {} unless one arrives",
                    format_duration_ms(silent_ms),
                    format_duration_ms(ends_in)
                ),
            };
        }
    }
    let load = node.load.clone().unwrap_or_default();
    if !load.healthy {
        return NodeCondition {
            status: "unhealthy",
            detail: load.detail,
        };
    }
    NodeCondition {
        status: "up",
        detail: String::new(),
    }
}

fn lease_left(lease_remaining_ms: i64) -> String {
    match u64::try_from(lease_remaining_ms) {
        Ok(ms) => format_duration_ms(ms),
        Err(_) => "gone".into(),
    }
}

/// The down nodes as table rows: id, kind, address, since, for how long, why.
fn down_rows(down: &[DownNode], now_unix_ms: i64) -> Vec<Vec<String>> {
    down.iter()
        .map(|node| {
            let kind = sluice_proto::v1::NodeKind::try_from(node.kind)
                .map(|kind| {
                    kind.as_str_name()
                        .trim_start_matches("NODE_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| "unknown".into());
            let down_for =
                u64::try_from(now_unix_ms.saturating_sub(node.down_since_unix_ms)).unwrap_or(0);
            vec![
                node.node_id.clone(),
                kind,
                node.address.clone(),
                crate::units::format_unix_ms(node.down_since_unix_ms),
                format_duration_ms(down_for),
                node.reason.clone(),
            ]
        })
        .collect()
}

fn status_json(status: &ClusterStatusResponse) -> serde_json::Value {
    let nodes = |nodes: &[NodeInfo]| -> Vec<serde_json::Value> {
        nodes
            .iter()
            .map(|node| crate::views::node(node, &condition(node, status.session_timeout_ms)))
            .collect()
    };
    json!({
        "metadata_backend": status.metadata_backend,
        "active_assigner": if status.active_assigner.is_empty() { serde_json::Value::Null } else { json!(status.active_assigner) },
        "read_at": crate::units::format_unix_ms(status.now_unix_ms),
        "session_timeout_ms": status.session_timeout_ms,
        "topics": status.topics,
        "partitions": status.partitions,
        "offline_partitions": status.offline_partitions,
        "damaged_partitions": damaged_partition_count(&status.brokers),
        "segments": status.segments,
        "under_replicated_segments": status.under_replicated_segments,
        "nameservers": nodes(&status.nameservers),
        "brokers": nodes(&status.brokers),
        "stores": nodes(&status.stores),
        "down_nodes": status.down_nodes.iter().map(|node| crate::views::down_node(node, status.now_unix_ms)).collect::<Vec<_>>(),
        "offline": reported(&status.brokers, |load| &load.offline_partitions),
        "damaged": reported(&status.brokers, |load| &load.damaged_partitions),
    })
}

/// Partitions the brokers report (offline or damaged), for JSON.
fn reported<T: HasPartition>(
    brokers: &[NodeInfo],
    pick: impl Fn(&NodeLoad) -> &Vec<T>,
) -> Vec<serde_json::Value> {
    brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| pick(load).iter())
        .map(|entry| json!({"topic": entry.topic(), "partition": entry.partition(), "reason": entry.reason()}))
        .collect()
}

trait HasPartition {
    fn topic(&self) -> &str;
    fn partition(&self) -> u32;
    fn reason(&self) -> &str;
}

impl HasPartition for sluice_proto::v1::OfflinePartition {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn partition(&self) -> u32 {
        self.partition
    }
    fn reason(&self) -> &str {
        &self.reason
    }
}

impl HasPartition for sluice_proto::v1::DamagedPartition {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn partition(&self) -> u32 {
        self.partition
    }
    fn reason(&self) -> &str {
        &self.reason
    }
}

/// A store's open segment files against its budget, and opens the file
/// limit refused; empty for other nodes.
fn segment_files(load: &NodeLoad) -> String {
    if load.max_open_segment_files == 0 {
        return String::new();
    }
    let mut text = format!(
        "{}/{}",
        load.open_segment_files, load.max_open_segment_files
    );
    if load.refused_segment_file_opens > 0 {
        text.push_str(&format!(
            " ({} refused: file limit)",
            load.refused_segment_file_opens
        ));
    }
    text
}

fn node_rows(nodes: &[NodeInfo], session_timeout_ms: u64) -> Vec<Vec<String>> {
    nodes
        .iter()
        .map(|node| {
            let load = node.load.clone().unwrap_or_default();
            let disk = if load.disk_total_bytes > 0 {
                format!(
                    "{}/{} free",
                    format_bytes(load.disk_free_bytes),
                    format_bytes(load.disk_total_bytes)
                )
            } else {
                String::new()
            };
            let condition = condition(node, session_timeout_ms);
            vec![
                node.node_id.clone(),
                node.address.clone(),
                lease_left(node.lease_remaining_ms),
                if condition.detail.is_empty() {
                    condition.status.to_string()
                } else {
                    format!("{}: {}", condition.status, condition.detail)
                },
                load.partitions.to_string(),
                load.segments.to_string(),
                disk,
                segment_files(&load),
            ]
        })
        .collect()
}

pub async fn run(config: ClientConfig, command: ClusterCommand) -> Result<()> {
    let admin = Admin::connect(config).await?;
    match command {
        ClusterCommand::Status => {
            let status = admin.cluster_status().await?;
            if json() {
                return print_json(&status_json(&status));
            }
            println!("metadata backend: {}", status.metadata_backend);
            let assigner = if status.active_assigner.is_empty() {
                "none (election in progress)"
            } else {
                status.active_assigner.as_str()
            };
            println!("active nameserver (assigner): {assigner}");
            println!(
                "topics: {}  partitions: {}  offline partitions: {}  damaged partitions: {}",
                status.topics,
                status.partitions,
                status.offline_partitions,
                damaged_partition_count(&status.brokers)
            );
            let repairing: u32 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repairs_in_progress)
                .sum();
            let repaired: u64 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repaired_segments)
                .sum();
            let copied: u64 = status
                .brokers
                .iter()
                .filter_map(|broker| broker.load.as_ref())
                .map(|load| load.repair_bytes_copied)
                .sum();
            println!(
                "segments: {}  under-replicated: {}  repair: {repairing} running, \
                 {repaired} segments / {:.1} MiB repaired since the brokers started",
                status.segments,
                status.under_replicated_segments,
                copied as f64 / (1u64 << 20) as f64
            );
            let header = [
                "ID",
                "ADDRESS",
                "LEASE-LEFT",
                "STATUS",
                "PARTITIONS",
                "SEGMENTS",
                "DISK",
                "SEGMENT-FILES",
            ];
            for (title, nodes) in [
                ("nameservers", &status.nameservers),
                ("brokers", &status.brokers),
                ("stores", &status.stores),
            ] {
                println!("\n{title} ({})", nodes.len());
                print_table(&header, &node_rows(nodes, status.session_timeout_ms));
            }
            if !status.down_nodes.is_empty() {
                println!(
                    "\ndown ({}): sessions ended for silence",
                    status.down_nodes.len()
                );
                print_table(
                    &["ID", "KIND", "ADDRESS", "DOWN-SINCE", "DOWN-FOR", "WHY"],
                    &down_rows(&status.down_nodes, status.now_unix_ms),
                );
            }
            print_offline_partitions(&status.brokers);
            print_damaged_partitions(&status.brokers);
        }
    }
    Ok(())
}

/// Distinct partitions live brokers report with closed segments damaged
/// on every copy.
fn damaged_partition_count(brokers: &[NodeInfo]) -> usize {
    let partitions: std::collections::HashSet<(&str, u32)> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.damaged_partitions.iter())
        .map(|damaged| (damaged.topic.as_str(), damaged.partition))
        .collect();
    partitions.len()
}

/// The closed segments brokers report damaged on every copy (the
/// partitions stay online), each with the range and what to do.
fn print_damaged_partitions(brokers: &[NodeInfo]) {
    let damaged: Vec<_> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.damaged_partitions.iter())
        .collect();
    if damaged.is_empty() {
        return;
    }
    println!(
        "\ndamaged partitions ({}; online, a range unreadable)",
        damaged_partition_count(brokers)
    );
    for partition in damaged {
        println!(
            "  {}/{}: {}",
            partition.topic, partition.partition, partition.reason
        );
    }
}

/// The partitions brokers report offline, each with why and what to do.
fn print_offline_partitions(brokers: &[NodeInfo]) {
    let offline: Vec<_> = brokers
        .iter()
        .filter_map(|broker| broker.load.as_ref())
        .flat_map(|load| load.offline_partitions.iter())
        .collect();
    if offline.is_empty() {
        return;
    }
    println!("\noffline partitions ({})", offline.len());
    for partition in offline {
        println!(
            "  {}/{}: {}",
            partition.topic, partition.partition, partition.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(lease_remaining_ms: i64, last_heartbeat_ms_ago: i64, healthy: bool) -> NodeInfo {
        NodeInfo {
            node_id: "b1".into(),
            lease_remaining_ms,
            last_heartbeat_ms_ago,
            load: Some(NodeLoad {
                healthy,
                detail: if healthy {
                    String::new()
                } else {
                    "disk full".into()
                },
                ..NodeLoad::default()
            }),
            ..NodeInfo::default()
        }
    }

    #[test]
    fn a_node_that_missed_heartbeats_is_late_with_how_long_and_when_it_ends() {
        // Timeout 1500 ms: heartbeats at most every 500 ms.
        assert_eq!(condition(&node(3000, 100, true), 1500).status, "up");
        assert_eq!(condition(&node(3000, 500, true), 1500).status, "up");
        let late = condition(&node(3000, 900, true), 1500);
        assert_eq!(late.status, "late");
        assert!(
            late.detail.contains("no heartbeat for 900ms"),
            "{}",
            late.detail
        );
        assert!(late.detail.contains("ends in 600ms"), "{}", late.detail);
        // Past the timeout (the ending is under way): ends in 0.
        let overdue = condition(&node(3000, 4000, true), 1500);
        assert!(overdue.detail.contains("ends in 0"), "{}", overdue.detail);
    }

    #[test]
    fn unknown_heartbeat_age_or_timeout_does_not_make_a_node_late() {
        // -1: another nameserver holds the session; 0: an older nameserver.
        assert_eq!(condition(&node(3000, -1, true), 1500).status, "up");
        assert_eq!(condition(&node(3000, 99_999, true), 0).status, "up");
    }

    #[test]
    fn a_gone_lease_and_an_unhealthy_report_are_named() {
        assert_eq!(condition(&node(-1, 10, true), 1500).status, "expiring");
        let unhealthy = condition(&node(3000, 10, false), 1500);
        assert_eq!(
            (unhealthy.status, unhealthy.detail.as_str()),
            ("unhealthy", "disk full")
        );
        // Late wins over unhealthy: the report is stale anyway.
        assert_eq!(condition(&node(3000, 1000, false), 1500).status, "late");
    }

    #[test]
    fn down_nodes_show_since_when_and_for_how_long() {
        let down = DownNode {
            kind: sluice_proto::v1::NodeKind::Broker as i32,
            node_id: "broker-2".into(),
            address: "http://127.0.0.1:7411".into(),
            down_since_unix_ms: 1_700_000_000_000,
            reason: "no heartbeat for 1500 ms; session ended".into(),
        };
        let rows = down_rows(&[down], 1_700_000_090_000);
        assert_eq!(
            rows[0],
            [
                "broker-2",
                "broker",
                "http://127.0.0.1:7411",
                "2023-11-14T22:13:20.000Z",
                "1m 30s",
                "no heartbeat for 1500 ms; session ended"
            ]
        );
    }
}
