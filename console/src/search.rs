//! Finding messages and asking why: `GET /api/messages/find?topic=T` with
//! `key=K` and/or `tag=X` (and optional `from_ms`, `to_ms`, `partition`,
//! `limit` up to [`MAX_FOUND_PER_PAGE`]) through the brokers' message
//! index (ADR 0013); `GET /api/messages/why?topic=T&partition=P&offset=O&subscription=S`
//! answers what a subscription did with one message (waiting, in flight,
//! acknowledged, filtered, expired, dead-lettered) with its sentence.

use crate::browse::record_json;
use crate::params::{number_param, query_param};
use crate::shape::{client_error_response, error_response, json_response};
use crate::Body;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_client::{Admin, MessageQuery};

/// Most messages one search answers (the rest continue on a next page).
pub const MAX_FOUND_PER_PAGE: u32 = 100;

/// Reads and checks a search's query string.
pub fn parse_find(query: &str) -> Result<MessageQuery, String> {
    let topic = query_param(query, "topic").unwrap_or_default();
    if topic.is_empty() {
        return Err("give a topic".into());
    }
    let key = query_param(query, "key").filter(|key| !key.is_empty());
    let tag = query_param(query, "tag").filter(|tag| !tag.is_empty());
    let from_ms = number_param::<i64>(query, "from_ms")?;
    let to_ms = number_param::<i64>(query, "to_ms")?;
    if key.is_none() && tag.is_none() && from_ms.is_none() && to_ms.is_none() {
        return Err("give a key, a tag or a time range to search by".into());
    }
    if let (Some(from), Some(to)) = (from_ms, to_ms) {
        if from > to {
            return Err("the time range ends before it starts".into());
        }
    }
    let limit = number_param::<u32>(query, "limit")?.unwrap_or(20);
    if limit == 0 || limit > MAX_FOUND_PER_PAGE {
        return Err(format!(
            "limit must be 1 to {MAX_FOUND_PER_PAGE}, not {limit}"
        ));
    }
    let mut search = MessageQuery::new(topic)
        .time_range(from_ms, to_ms)
        .limit(limit);
    if let Some(key) = key {
        search = search.key(key.into_bytes());
    }
    if let Some(tag) = tag {
        search = search.tag(tag);
    }
    if let Some(partition) = number_param::<u32>(query, "partition")? {
        search = search.partitions(vec![partition]);
    }
    Ok(search)
}

/// Answers `GET /api/messages/find`.
pub async fn find(admin: &Admin, query: &str) -> Response<Body> {
    let search = match parse_find(query) {
        Ok(search) => search,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    match admin.find_messages(search).await {
        Ok(found) => {
            let records: Vec<Value> = found
                .records
                .iter()
                .map(|record| {
                    let mut shaped = record_json(record);
                    shaped["partition"] = json!(record.partition);
                    shaped
                })
                .collect();
            let more: Vec<Value> = found
                .continue_from
                .iter()
                .map(|(partition, offset)| json!({ "partition": partition, "offset": offset }))
                .collect();
            let value = json!({ "records": records, "continue_from": more, "notes": found.notes });
            json_response(StatusCode::OK, &value)
        }
        Err(error) => client_error_response(&error),
    }
}

/// The message and subscription `why` asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhyRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub subscription: String,
}

/// Reads and checks a `why`'s query string.
pub fn parse_why(query: &str) -> Result<WhyRequest, String> {
    let field = |name: &str| {
        query_param(query, name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("give a {name}"))
    };
    Ok(WhyRequest {
        topic: field("topic")?,
        partition: number_param::<u32>(query, "partition")?.ok_or("give a partition")?,
        offset: number_param::<u64>(query, "offset")?.ok_or("give an offset")?,
        subscription: field("subscription")?,
    })
}

/// Answers `GET /api/messages/why`.
pub async fn why(admin: &Admin, query: &str) -> Response<Body> {
    let asked = match parse_why(query) {
        Ok(asked) => asked,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    let answer = admin
        .explain_message(
            &asked.topic,
            asked.partition,
            asked.offset,
            &asked.subscription,
        )
        .await;
    match answer {
        Ok(why) => {
            let state = format!("{:?}", why.state()).to_lowercase();
            let value = json!({
                "offset": asked.offset,
                "subscription": asked.subscription,
                "state": state,
                "explanation": why.explanation,
                "delivery_count": why.delivery_count,
                "remaining_ms": why.remaining_ms,
                "mark_delete": why.mark_delete,
            });
            json_response(StatusCode::OK, &value)
        }
        Err(error) => client_error_response(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_needs_a_topic_and_something_to_search_by() {
        let search = parse_find("topic=orders&key=customer%2D7&limit=5").unwrap();
        assert_eq!(search.key.as_deref(), Some(&b"customer-7"[..]));
        assert_eq!((search.limit, search.tag.clone()), (5, None));
        let by_tag = parse_find("topic=orders&tag=vip&partition=2").unwrap();
        assert_eq!(by_tag.tag.as_deref(), Some("vip"));
        assert_eq!(by_tag.partitions, Some(vec![2]));
        assert!(parse_find("topic=orders&from_ms=1&to_ms=2").is_ok());
        assert!(parse_find("topic=orders").is_err(), "nothing to search by");
        assert!(
            parse_find("topic=orders&key=").is_err(),
            "an empty key is no key"
        );
        assert!(parse_find("key=k").is_err());
        assert!(parse_find("topic=o&key=k&limit=0").is_err());
        assert!(parse_find("topic=o&key=k&limit=101").is_err());
        assert!(parse_find("topic=o&from_ms=5&to_ms=4").is_err());
        assert!(parse_find("topic=o&from_ms=x").is_err());
    }

    #[test]
    fn why_needs_every_field() {
        assert_eq!(
            parse_why("topic=t&partition=1&offset=9&subscription=s"),
            Ok(WhyRequest {
                topic: "t".into(),
                partition: 1,
                offset: 9,
                subscription: "s".into()
            })
        );
        assert!(parse_why("topic=t&partition=1&offset=9").is_err());
        assert!(parse_why("topic=t&offset=9&subscription=s").is_err());
        assert!(parse_why("topic=t&partition=1&offset=-9&subscription=s").is_err());
        assert!(parse_why("topic=&partition=1&offset=9&subscription=s").is_err());
    }
}
