//! Reading an action from its path and JSON body: every field checked
//! here, before anything reaches the cluster. Pure.
//!
//! | Path (`POST /api/actions/…`) | Body |
//! |---|---|
//! | `create-topic` | `{"name", "partitions": 1..=4096}` |
//! | `delete-topic` | `{"name", "confirm": name}` |
//! | `alter-topic` | `{"name", "changes": {setting: number, …}}` (settings in [`ALTERABLE_SETTINGS`]) |
//! | `add-partitions` | `{"name", "partitions": new total}` |
//! | `reset-group-offsets` | `{"group", "topic", "to": "earliest" \| "latest" \| "offset" \| "time" \| "shift", "value"?, "dry_run"}` |
//! | `delete-group` | `{"group", "confirm": group}` |
//! | `skip-subscription` | `{"topic", "name", "count"}` or `{"topic", "name", "clear": true, "confirm": name}` |

use serde_json::{Map, Value};
use sluice_client::{OffsetReset, SubscriptionSkip};

/// Most partitions the console creates a topic with, or grows one to (the
/// nameserver's own bound).
pub const MAX_PARTITIONS: u64 = 4_096;

/// The topic settings `alter-topic` changes: `(name, most)`; each is a
/// whole number from 1 to its most (0 is refused here, although the
/// nameserver gives some settings a meaning at 0, so that a slip in the
/// page cannot turn retention off).
pub const ALTERABLE_SETTINGS: [(&str, u64); 5] = [
    ("retention_ms", u64::MAX),
    ("retention_bytes", u64::MAX),
    ("message_ttl_ms", u64::MAX),
    ("segment_bytes", u64::MAX),
    ("max_batch_bytes", u32::MAX as u64),
];

/// What an action asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateTopic {
        name: String,
        partitions: u32,
    },
    DeleteTopic {
        name: String,
    },
    AlterTopic {
        name: String,
        /// `(setting, value)` in [`ALTERABLE_SETTINGS`] order.
        changes: Vec<(&'static str, u64)>,
    },
    AddPartitions {
        name: String,
        partitions: u32,
    },
    ResetGroupOffsets {
        group: String,
        topic: String,
        reset: OffsetReset,
        dry_run: bool,
    },
    DeleteGroup {
        group: String,
    },
    SkipSubscription {
        topic: String,
        name: String,
        skip: SubscriptionSkip,
    },
}

/// Reads an action from its path and JSON body.
pub fn parse_action(path: &str, body: &[u8]) -> Result<Action, String> {
    let body: Value =
        serde_json::from_slice(body).map_err(|error| format!("the body is not JSON: {error}"))?;
    let Some(body) = body.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let Some(name) = path.strip_prefix("/api/actions/") else {
        return Err("no such action".into());
    };
    match name {
        "create-topic" => Ok(Action::CreateTopic {
            name: text(body, "name")?,
            partitions: partitions(body)?,
        }),
        "delete-topic" => Ok(Action::DeleteTopic {
            name: confirmed(body, "name", "topic")?,
        }),
        "alter-topic" => alter_topic(body),
        "add-partitions" => Ok(Action::AddPartitions {
            name: text(body, "name")?,
            partitions: partitions(body)?,
        }),
        "reset-group-offsets" => reset_group_offsets(body),
        "delete-group" => Ok(Action::DeleteGroup {
            group: confirmed(body, "group", "group")?,
        }),
        "skip-subscription" => skip_subscription(body),
        _ => Err("no such action".into()),
    }
}

fn text(body: &Map<String, Value>, field: &str) -> Result<String, String> {
    body.get(field)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("'{field}' must be a non-empty string"))
}

/// `field`, which `confirm` must repeat exactly.
fn confirmed(body: &Map<String, Value>, field: &str, what: &str) -> Result<String, String> {
    let value = text(body, field)?;
    if body.get("confirm").and_then(Value::as_str) != Some(value.as_str()) {
        return Err(format!("type the {what}'s name exactly to confirm"));
    }
    Ok(value)
}

fn partitions(body: &Map<String, Value>) -> Result<u32, String> {
    body.get("partitions")
        .and_then(Value::as_u64)
        .filter(|count| (1..=MAX_PARTITIONS).contains(count))
        .map(|count| count as u32)
        .ok_or_else(|| format!("'partitions' must be 1 to {MAX_PARTITIONS}"))
}

fn alter_topic(body: &Map<String, Value>) -> Result<Action, String> {
    let name = text(body, "name")?;
    let Some(asked) = body.get("changes").and_then(Value::as_object) else {
        return Err("'changes' must be an object of settings".into());
    };
    if let Some(unknown) = asked
        .keys()
        .find(|key| !ALTERABLE_SETTINGS.iter().any(|(known, _)| known == key))
    {
        let known: Vec<&str> = ALTERABLE_SETTINGS.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "the console cannot change '{unknown}'; it changes {}",
            known.join(", ")
        ));
    }
    let mut changes = Vec::new();
    for (setting, most) in ALTERABLE_SETTINGS {
        let Some(value) = asked.get(setting) else {
            continue;
        };
        let value = value
            .as_u64()
            .filter(|value| (1..=most).contains(value))
            .ok_or_else(|| format!("'{setting}' must be a whole number from 1 to {most}"))?;
        changes.push((setting, value));
    }
    if changes.is_empty() {
        return Err("no setting to change".into());
    }
    Ok(Action::AlterTopic { name, changes })
}

fn reset_group_offsets(body: &Map<String, Value>) -> Result<Action, String> {
    let value = body.get("value");
    let reset = match text(body, "to")?.as_str() {
        "earliest" => OffsetReset::Earliest,
        "latest" => OffsetReset::Latest,
        "offset" => OffsetReset::Offset(
            value
                .and_then(Value::as_u64)
                .ok_or("'value' must be an offset (a whole number)")?,
        ),
        "time" => OffsetReset::Time(
            value
                .and_then(Value::as_i64)
                .filter(|time_ms| *time_ms >= 0)
                .ok_or("'value' must be a time in unix ms")?,
        ),
        "shift" => OffsetReset::ShiftBy(
            value
                .and_then(Value::as_i64)
                .ok_or("'value' must be a shift (a whole number, negative to go back)")?,
        ),
        other => {
            return Err(format!(
                "'to' must be earliest, latest, offset, time or shift, not '{other}'"
            ))
        }
    };
    let dry_run = match body.get("dry_run") {
        None => true,
        Some(flag) => flag.as_bool().ok_or("'dry_run' must be true or false")?,
    };
    Ok(Action::ResetGroupOffsets {
        group: text(body, "group")?,
        topic: text(body, "topic")?,
        reset,
        dry_run,
    })
}

fn skip_subscription(body: &Map<String, Value>) -> Result<Action, String> {
    let topic = text(body, "topic")?;
    let clear = body.get("clear").and_then(Value::as_bool).unwrap_or(false);
    let skip = if clear {
        confirmed(body, "name", "subscription")?;
        SubscriptionSkip::All
    } else {
        let count = body
            .get("count")
            .and_then(Value::as_u64)
            .filter(|count| *count >= 1)
            .ok_or("'count' must be a whole number from 1 (or clear the backlog)")?;
        SubscriptionSkip::Messages(count)
    };
    Ok(Action::SkipSubscription {
        topic,
        name: text(body, "name")?,
        skip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "/api/actions/create-topic";
    const DELETE: &str = "/api/actions/delete-topic";
    const ALTER: &str = "/api/actions/alter-topic";
    const GROW: &str = "/api/actions/add-partitions";
    const RESET: &str = "/api/actions/reset-group-offsets";
    const SKIP: &str = "/api/actions/skip-subscription";

    #[test]
    fn create_needs_a_name_and_a_partition_count_in_bounds() {
        assert_eq!(
            parse_action(CREATE, br#"{"name":"orders","partitions":3}"#),
            Ok(Action::CreateTopic {
                name: "orders".into(),
                partitions: 3
            })
        );
        assert!(parse_action(CREATE, br#"{"name":"o","partitions":0}"#).is_err());
        assert!(parse_action(CREATE, br#"{"name":"o","partitions":4097}"#).is_err());
        assert!(parse_action(CREATE, br#"{"name":"o","partitions":4096}"#).is_ok());
        assert!(parse_action(CREATE, br#"{"name":"o","partitions":-1}"#).is_err());
        assert!(parse_action(CREATE, br#"{"name":"o","partitions":"3"}"#).is_err());
        assert!(parse_action(CREATE, br#"{"name":"","partitions":3}"#).is_err());
        assert!(parse_action(CREATE, br#"{"partitions":3}"#).is_err());
        assert!(parse_action(CREATE, br#"[1,2]"#).is_err());
        assert!(parse_action(CREATE, b"name=o").is_err());
        assert!(parse_action(CREATE, b"").is_err());
    }

    #[test]
    fn deletes_need_the_name_typed_again() {
        assert_eq!(
            parse_action(DELETE, br#"{"name":"orders","confirm":"orders"}"#),
            Ok(Action::DeleteTopic {
                name: "orders".into()
            })
        );
        assert!(parse_action(DELETE, br#"{"name":"orders","confirm":"order"}"#).is_err());
        assert!(parse_action(DELETE, br#"{"name":"orders","confirm":"ORDERS"}"#).is_err());
        assert!(parse_action(DELETE, br#"{"name":"orders"}"#).is_err());
        let group = "/api/actions/delete-group";
        assert_eq!(
            parse_action(group, br#"{"group":"g","confirm":"g"}"#),
            Ok(Action::DeleteGroup { group: "g".into() })
        );
        assert!(parse_action(group, br#"{"group":"g","confirm":"h"}"#).is_err());
    }

    #[test]
    fn alter_takes_known_settings_within_their_bounds() {
        assert_eq!(
            parse_action(
                ALTER,
                br#"{"name":"t","changes":{"message_ttl_ms":5,"retention_ms":18446744073709551615}}"#
            ),
            Ok(Action::AlterTopic {
                name: "t".into(),
                changes: vec![("retention_ms", u64::MAX), ("message_ttl_ms", 5)],
            })
        );
        for bad in [
            &br#"{"name":"t","changes":{"retention_ms":0}}"#[..],
            br#"{"name":"t","changes":{"retention_ms":-1}}"#,
            br#"{"name":"t","changes":{"retention_ms":1.5}}"#,
            br#"{"name":"t","changes":{"max_batch_bytes":4294967296}}"#,
            br#"{"name":"t","changes":{"durability":"none"}}"#,
            br#"{"name":"t","changes":{}}"#,
            br#"{"name":"t"}"#,
        ] {
            assert!(
                parse_action(ALTER, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let most = br#"{"name":"t","changes":{"max_batch_bytes":4294967295}}"#;
        assert!(parse_action(ALTER, most).is_ok());
    }

    #[test]
    fn add_partitions_takes_a_new_total_in_bounds() {
        assert_eq!(
            parse_action(GROW, br#"{"name":"t","partitions":8}"#),
            Ok(Action::AddPartitions {
                name: "t".into(),
                partitions: 8
            })
        );
        assert!(parse_action(GROW, br#"{"name":"t","partitions":0}"#).is_err());
        assert!(parse_action(GROW, br#"{"name":"t","partitions":4097}"#).is_err());
    }

    #[test]
    fn offset_resets_are_dry_runs_unless_told() {
        let parsed = parse_action(RESET, br#"{"group":"g","topic":"t","to":"earliest"}"#);
        assert_eq!(
            parsed,
            Ok(Action::ResetGroupOffsets {
                group: "g".into(),
                topic: "t".into(),
                reset: OffsetReset::Earliest,
                dry_run: true,
            })
        );
        let shift = br#"{"group":"g","topic":"t","to":"shift","value":-5,"dry_run":false}"#;
        let Ok(Action::ResetGroupOffsets { reset, dry_run, .. }) = parse_action(RESET, shift)
        else {
            panic!("shift parses");
        };
        assert_eq!((reset, dry_run), (OffsetReset::ShiftBy(-5), false));
        for bad in [
            &br#"{"group":"g","topic":"t","to":"offset"}"#[..],
            br#"{"group":"g","topic":"t","to":"offset","value":-1}"#,
            br#"{"group":"g","topic":"t","to":"time","value":-1}"#,
            br#"{"group":"g","topic":"t","to":"sideways"}"#,
            br#"{"group":"g","topic":"t","to":"latest","dry_run":"no"}"#,
            br#"{"topic":"t","to":"latest"}"#,
        ] {
            assert!(
                parse_action(RESET, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn clearing_a_backlog_needs_the_name_typed_again() {
        assert_eq!(
            parse_action(SKIP, br#"{"topic":"t","name":"s","count":3}"#),
            Ok(Action::SkipSubscription {
                topic: "t".into(),
                name: "s".into(),
                skip: SubscriptionSkip::Messages(3)
            })
        );
        let clear = br#"{"topic":"t","name":"s","clear":true,"confirm":"s"}"#;
        assert!(matches!(
            parse_action(SKIP, clear),
            Ok(Action::SkipSubscription {
                skip: SubscriptionSkip::All,
                ..
            })
        ));
        assert!(parse_action(SKIP, br#"{"topic":"t","name":"s","clear":true}"#).is_err());
        assert!(parse_action(SKIP, br#"{"topic":"t","name":"s","count":0}"#).is_err());
        assert!(parse_action(SKIP, br#"{"topic":"t","name":"s"}"#).is_err());
    }

    #[test]
    fn unknown_actions_are_refused() {
        assert!(parse_action("/api/actions/drop-all", br#"{"name":"x"}"#).is_err());
        assert!(parse_action("/api/other", br#"{"name":"x"}"#).is_err());
    }
}
