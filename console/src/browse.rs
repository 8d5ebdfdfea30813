//! The message browser: `GET /api/messages?topic=T&partition=P` and either
//! `&offset=O` or `&time_ms=MS` (the first record at or after that time,
//! from ListOffsets by timestamp), `&limit=N` records (at most
//! [`MAX_RECORDS_PER_PAGE`]). Keys, values and headers are shown as UTF-8
//! or hex, cut at [`MAX_VALUE_BYTES_SHOWN`] / [`MAX_HEADER_BYTES_SHOWN`]
//! with a `truncated` marker. The page puts them in the DOM as text only.

use crate::params::{number_param, query_param};
use crate::shape::{client_error_response, error_response, json_response, render_bytes};
use crate::Body;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use sluice_client::{Admin, ConsumerRecord};
use sluice_proto::v1;

/// Most records one page of the browser shows.
pub const MAX_RECORDS_PER_PAGE: u32 = 100;
/// Records on a page unless `limit` says otherwise.
pub const DEFAULT_RECORDS_PER_PAGE: u32 = 20;
/// Most bytes of a key or value shown; longer ones are cut and marked.
pub const MAX_VALUE_BYTES_SHOWN: usize = 64 * 1024;
/// Most bytes of a header value shown.
pub const MAX_HEADER_BYTES_SHOWN: usize = 4 * 1024;

/// Where a page of the browser starts, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub topic: String,
    pub partition: u32,
    pub start: Start,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The log start (oldest record kept).
    Earliest,
    Offset(u64),
    /// First record whose timestamp is at or after this (unix ms).
    Time(i64),
}

/// Reads and checks the query string.
pub fn parse_request(query: &str) -> Result<PageRequest, String> {
    let topic = query_param(query, "topic").unwrap_or_default();
    if topic.is_empty() {
        return Err("give a topic".into());
    }
    let partition = number_param::<u32>(query, "partition")?.unwrap_or(0);
    let offset = number_param::<u64>(query, "offset")?;
    let time_ms = number_param::<i64>(query, "time_ms")?;
    let start = match (offset, time_ms) {
        (Some(_), Some(_)) => return Err("give an offset or a time, not both".into()),
        (Some(offset), None) => Start::Offset(offset),
        (None, Some(time_ms)) => Start::Time(time_ms),
        (None, None) => Start::Earliest,
    };
    let limit = number_param::<u32>(query, "limit")?.unwrap_or(DEFAULT_RECORDS_PER_PAGE);
    if limit == 0 || limit > MAX_RECORDS_PER_PAGE {
        return Err(format!(
            "limit must be 1 to {MAX_RECORDS_PER_PAGE}, not {limit}"
        ));
    }
    Ok(PageRequest {
        topic,
        partition,
        start,
        limit,
    })
}

/// The offsets a page reads: from `start` (raised to the log start) up to
/// `limit` of them, below the high watermark.
pub fn page_range(start: u64, log_start: u64, high_watermark: u64, limit: u32) -> (u64, u64) {
    let first = start.max(log_start);
    let end = first.saturating_add(u64::from(limit)).min(high_watermark);
    (first, end.max(first))
}

/// Answers `GET /api/messages`.
pub async fn handle(admin: &Admin, query: &str) -> Response<Body> {
    let request = match parse_request(query) {
        Ok(request) => request,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, &message),
    };
    match page(admin, &request).await {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => client_error_response(&error),
    }
}

async fn page(admin: &Admin, request: &PageRequest) -> Result<Value, sluice_client::ClientError> {
    let (topic, partition) = (&request.topic, request.partition);
    let bounds = admin
        .list_offsets(topic, partition, v1::OffsetSpec::Latest, 0)
        .await?;
    let start = match request.start {
        Start::Earliest => bounds.log_start_offset,
        Start::Offset(offset) => offset,
        Start::Time(time_ms) => {
            admin
                .list_offsets(topic, partition, v1::OffsetSpec::Timestamp, time_ms)
                .await?
                .offset
        }
    };
    let (first, end) = page_range(
        start,
        bounds.log_start_offset,
        bounds.high_watermark,
        request.limit,
    );
    let mut records = Vec::new();
    for offset in first..end {
        records.push(match admin.get_message(topic, partition, offset).await {
            Ok(record) => record_json(&record),
            // A transaction marker or a range accepted as lost holds no
            // record people can read: shown as such, the page goes on.
            Err(error) => json!({ "offset": offset, "error": error.to_string() }),
        });
    }
    Ok(json!({
        "topic": topic,
        "partition": partition,
        "log_start_offset": bounds.log_start_offset,
        "high_watermark": bounds.high_watermark,
        "first_offset": first,
        "next_offset": end,
        "records": records,
    }))
}

/// One record for the page.
pub fn record_json(record: &ConsumerRecord) -> Value {
    let headers: Vec<Value> = record
        .headers
        .iter()
        .map(|(name, value)| {
            json!({ "name": name, "value": render_bytes(value, MAX_HEADER_BYTES_SHOWN) })
        })
        .collect();
    json!({
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": record.key.as_ref().map(|key| render_bytes(key, MAX_VALUE_BYTES_SHOWN)),
        "value": record.value.as_ref().map(|value| render_bytes(value, MAX_VALUE_BYTES_SHOWN)),
        "headers": headers,
        "tags": record.tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn requests_are_checked() {
        let parsed = parse_request("topic=orders&partition=2&offset=10&limit=5").unwrap();
        assert_eq!(parsed.start, Start::Offset(10));
        assert_eq!((parsed.partition, parsed.limit), (2, 5));
        let by_time = parse_request("topic=t&time_ms=1700000000000").unwrap();
        assert_eq!(by_time.start, Start::Time(1_700_000_000_000));
        assert_eq!(by_time.limit, DEFAULT_RECORDS_PER_PAGE);
        assert_eq!(parse_request("topic=t").unwrap().start, Start::Earliest);
        assert!(parse_request("partition=1").is_err());
        assert!(parse_request("topic=t&offset=1&time_ms=2").is_err());
        assert!(parse_request("topic=t&limit=0").is_err());
        assert!(parse_request("topic=t&limit=101").is_err());
        assert!(parse_request("topic=t&limit=100").is_ok());
        assert!(parse_request("topic=t&partition=x").is_err());
    }

    #[test]
    fn pages_stay_within_the_log() {
        assert_eq!(page_range(0, 0, 10, 5), (0, 5));
        assert_eq!(page_range(8, 0, 10, 5), (8, 10));
        assert_eq!(page_range(2, 5, 10, 3), (5, 8), "raised to the log start");
        assert_eq!(page_range(20, 0, 10, 5), (20, 20), "beyond the end: empty");
        assert_eq!(page_range(u64::MAX, 0, u64::MAX, 100), (u64::MAX, u64::MAX));
    }

    #[test]
    fn records_are_shown_as_data() {
        let big = vec![b'x'; MAX_VALUE_BYTES_SHOWN + 1];
        let record = ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: 3,
            timestamp_ms: 42,
            key: Some(Bytes::from_static(b"<img src=x onerror=alert(1)>")),
            value: Some(Bytes::from(big)),
            headers: vec![("h".into(), Bytes::from_static(&[0xff, 0xfe]))],
            tags: vec!["vip".into()],
        };
        let shaped = record_json(&record);
        assert_eq!(shaped["key"]["text"], "<img src=x onerror=alert(1)>");
        assert_eq!(shaped["value"]["truncated"], true);
        assert_eq!(
            shaped["value"]["text"].as_str().unwrap().len(),
            MAX_VALUE_BYTES_SHOWN
        );
        assert_eq!(shaped["headers"][0]["value"]["encoding"], "hex");
        assert_eq!(shaped["headers"][0]["value"]["text"], "fffe");
        assert_eq!(shaped["tags"][0], "vip");
        let text = crate::shape::json_text(&shaped);
        assert!(!text.contains('<'), "no markup in the JSON text");
    }
}
