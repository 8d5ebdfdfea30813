//! Actions that change the cluster, through Admin (the paths and bodies are
//! in [`parse`]'s table). The page asks for confirmation first (an offset
//! reset shows its dry-run plan, deletions and clearing a backlog need the
//! name typed again, checked here too); [`crate::guard`] refuses anything
//! but a JSON POST from the console's own origin.

mod parse;

pub use parse::{parse_action, Action, ALTERABLE_SETTINGS, MAX_PARTITIONS};

use crate::shape::{client_error_response, error_response, json_response};
use crate::{Body, Console};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_client::{Admin, ClientError, OffsetResetPlan, KEY_ORDER_NOTICE};
use sluice_proto::v1;

/// Answers a POST.
pub async fn handle(console: &Console, path: &str, body: &[u8]) -> Response<Body> {
    let action = match parse_action(path, body) {
        Ok(action) => action,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    tracing::info!(?action, "console action");
    match perform(&console.admin, action).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => client_error_response(&error),
    }
}

async fn perform(admin: &Admin, action: Action) -> Result<Value, ClientError> {
    match action {
        Action::CreateTopic { name, partitions } => {
            let config = v1::TopicConfig {
                partitions,
                ..v1::TopicConfig::default()
            };
            let topic = admin.create_topic(&name, config).await?;
            Ok(json!({ "created": topic.name }))
        }
        Action::DeleteTopic { name } => {
            admin.delete_topic(&name).await?;
            Ok(json!({ "deleted": name }))
        }
        Action::AlterTopic { name, changes } => {
            let topic = admin.alter_topic(&name, config_changes(&changes)).await?;
            let config = topic.config.as_ref().map(crate::shape::config_json);
            Ok(json!({ "altered": name, "config": config }))
        }
        Action::AddPartitions { name, partitions } => {
            let topic = admin.add_partitions(&name, partitions).await?;
            let count = topic.config.map(|config| config.partitions);
            Ok(json!({ "grown": name, "partitions": count, "notice": KEY_ORDER_NOTICE }))
        }
        Action::ResetGroupOffsets {
            group,
            topic,
            reset,
            dry_run,
        } => {
            let plan = admin
                .reset_group_offsets(&group, &topic, reset, dry_run)
                .await?;
            Ok(plan_json(&plan))
        }
        Action::DeleteGroup { group } => {
            admin.delete_group(&group).await?;
            Ok(json!({ "deleted_group": group }))
        }
        Action::SkipSubscription { topic, name, skip } => {
            let answers = admin.skip_subscription(&topic, &name, skip).await?;
            let skipped: u64 = answers
                .iter()
                .map(|(_, answer)| answer.skipped)
                .fold(0, u64::saturating_add);
            Ok(json!({ "subscription": name, "skipped": skipped }))
        }
    }
}

/// The nameserver's change set for `changes` (names from
/// [`ALTERABLE_SETTINGS`], values already within their bounds).
pub fn config_changes(changes: &[(&'static str, u64)]) -> v1::TopicConfigChanges {
    let mut out = v1::TopicConfigChanges::default();
    for &(setting, value) in changes {
        match setting {
            "retention_ms" => out.retention_ms = Some(value),
            "retention_bytes" => out.retention_bytes = Some(value),
            "message_ttl_ms" => out.message_ttl_ms = Some(value),
            "segment_bytes" => out.segment_bytes = Some(value),
            "max_batch_bytes" => {
                out.max_batch_bytes = Some(u32::try_from(value).unwrap_or(u32::MAX))
            }
            other => debug_assert!(false, "setting {other} is not alterable"),
        }
    }
    out
}

/// An offset reset plan for the page: what each partition moves from and to.
pub fn plan_json(plan: &OffsetResetPlan) -> Value {
    let partitions: Vec<Value> = plan
        .partitions
        .iter()
        .map(|partition| {
            json!({
                "partition": partition.partition,
                "current": partition.current,
                "target": partition.target,
                "log_start_offset": partition.log_start_offset,
                "high_watermark": partition.high_watermark,
            })
        })
        .collect();
    json!({
        "group": plan.group,
        "topic": plan.topic,
        "applied": plan.applied,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alterable_setting_reaches_the_change_set() {
        let all: Vec<(&'static str, u64)> = ALTERABLE_SETTINGS
            .iter()
            .map(|(name, _)| (*name, 7))
            .collect();
        let changes = config_changes(&all);
        assert_eq!(changes.retention_ms, Some(7));
        assert_eq!(changes.retention_bytes, Some(7));
        assert_eq!(changes.message_ttl_ms, Some(7));
        assert_eq!(changes.segment_bytes, Some(7));
        assert_eq!(changes.max_batch_bytes, Some(7));
        let untouched = v1::TopicConfigChanges {
            retention_ms: Some(7),
            retention_bytes: Some(7),
            message_ttl_ms: Some(7),
            segment_bytes: Some(7),
            max_batch_bytes: Some(7),
            ..v1::TopicConfigChanges::default()
        };
        assert_eq!(changes, untouched, "nothing else is set");
    }
}
