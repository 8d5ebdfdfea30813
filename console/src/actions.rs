//! Actions that change the cluster, through Admin:
//! - `POST /api/actions/create-topic` `{"name": T, "partitions": N}`
//! - `POST /api/actions/delete-topic` `{"name": T, "confirm": T}`: the
//!   name typed again, checked here too (not only in the page).
//!
//! The page asks for confirmation first; [`crate::guard`] refuses
//! anything but a JSON POST from the console's own origin.

use crate::shape::{client_error_response, error_response, json_response};
use crate::{Body, Console};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_proto::v1;

/// Most partitions the console creates a topic with (the nameserver's own
/// bound).
pub const MAX_PARTITIONS: u64 = 4_096;

/// What an action asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateTopic { name: String, partitions: u32 },
    DeleteTopic { name: String },
}

/// Reads an action from its path and JSON body.
pub fn parse_action(path: &str, body: &[u8]) -> Result<Action, String> {
    let body: Value =
        serde_json::from_slice(body).map_err(|error| format!("the body is not JSON: {error}"))?;
    let text = |field: &str| -> Result<String, String> {
        body.get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("'{field}' must be a string"))
    };
    match path {
        "/api/actions/create-topic" => {
            let name = text("name")?;
            let partitions = body
                .get("partitions")
                .and_then(Value::as_u64)
                .filter(|count| (1..=MAX_PARTITIONS).contains(count))
                .ok_or_else(|| format!("'partitions' must be 1 to {MAX_PARTITIONS}"))?;
            Ok(Action::CreateTopic {
                name,
                partitions: partitions as u32,
            })
        }
        "/api/actions/delete-topic" => {
            let name = text("name")?;
            if text("confirm")? != name {
                return Err("type the topic's name exactly to confirm deleting it".into());
            }
            Ok(Action::DeleteTopic { name })
        }
        _ => Err("no such action".into()),
    }
}

/// Answers a POST.
pub async fn handle(console: &Console, path: &str, body: &[u8]) -> Response<Body> {
    let action = match parse_action(path, body) {
        Ok(action) => action,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    tracing::info!(?action, "console action");
    let result = match &action {
        Action::CreateTopic { name, partitions } => {
            let config = v1::TopicConfig {
                partitions: *partitions,
                ..v1::TopicConfig::default()
            };
            console
                .admin
                .create_topic(name, config)
                .await
                .map(|topic| json!({ "created": topic.name }))
        }
        Action::DeleteTopic { name } => console
            .admin
            .delete_topic(name)
            .await
            .map(|()| json!({ "deleted": name })),
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => client_error_response(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "/api/actions/create-topic";
    const DELETE: &str = "/api/actions/delete-topic";

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
        assert!(parse_action(CREATE, br#"{"partitions":3}"#).is_err());
        assert!(parse_action(CREATE, b"name=o").is_err());
        assert!(parse_action(CREATE, b"").is_err());
    }

    #[test]
    fn delete_needs_the_name_typed_again() {
        assert_eq!(
            parse_action(DELETE, br#"{"name":"orders","confirm":"orders"}"#),
            Ok(Action::DeleteTopic {
                name: "orders".into()
            })
        );
        assert!(parse_action(DELETE, br#"{"name":"orders","confirm":"order"}"#).is_err());
        assert!(parse_action(DELETE, br#"{"name":"orders","confirm":"ORDERS"}"#).is_err());
        assert!(parse_action(DELETE, br#"{"name":"orders"}"#).is_err());
    }

    #[test]
    fn unknown_actions_are_refused() {
        assert!(parse_action("/api/actions/drop-all", br#"{"name":"x"}"#).is_err());
    }
}
