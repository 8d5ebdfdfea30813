use super::*;

fn record(key: &str, tags: &[&str], timestamp_ms: i64) -> Record {
    Record {
        offset: 1,
        timestamp_ms,
        key: Some(Bytes::from(key.to_string())),
        value: None,
        headers: Vec::new(),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
    }
}

fn request(key: Option<&str>, tag: Option<&str>) -> FindMessagesRequest {
    FindMessagesRequest {
        topic: "t".into(),
        key: key.map(|key| Bytes::from(key.to_string())),
        tag: tag.map(str::to_string),
        ..FindMessagesRequest::default()
    }
}

#[test]
fn every_given_filter_must_match() {
    let filter = Filter::from_request(&FindMessagesRequest {
        from_time_ms: Some(10),
        to_time_ms: Some(20),
        ..request(Some("k"), Some("vip"))
    })
    .expect("valid");
    assert!(filter.matches(&record("k", &["a", "vip"], 10)));
    assert!(filter.matches(&record("k", &["vip"], 20)));
    assert!(!filter.matches(&record("k", &["vip"], 21)));
    assert!(!filter.matches(&record("k", &["a"], 15)));
    assert!(!filter.matches(&record("kk", &["vip"], 15)));
    let keyless = Record {
        key: None,
        ..record("k", &["vip"], 15)
    };
    assert!(!filter.matches(&keyless));
    let by_tag = Filter::from_request(&request(None, Some("vip"))).expect("valid");
    assert!(by_tag.matches(&keyless));
}

#[test]
fn filters_are_validated() {
    assert!(Filter::from_request(&request(None, None)).is_err());
    assert!(Filter::from_request(&request(None, Some(""))).is_err());
    let long = "x".repeat(MAX_LOOKUP_KEY_BYTES + 1);
    assert!(Filter::from_request(&request(Some(&long), None)).is_err());
    assert!(Filter::from_request(&FindMessagesRequest {
        from_time_ms: Some(2),
        to_time_ms: Some(1),
        ..request(Some("k"), None)
    })
    .is_err());
    assert!(Filter::from_request(&FindMessagesRequest {
        to_time_ms: Some(1),
        ..request(None, None)
    })
    .is_ok());
}

#[test]
fn dispatcher_explanations_map_to_states_with_counts_and_times() {
    let cases = [
        (Explanation::NotYetRead, MessageState::Pending, 0, None),
        (
            Explanation::Ready { deliveries: 2 },
            MessageState::Ready,
            2,
            None,
        ),
        (
            Explanation::InFlight {
                consumer: 4,
                deliveries: 1,
                ack_deadline_ms: 1_500,
            },
            MessageState::InFlight,
            1,
            Some(500),
        ),
        (
            Explanation::WaitingForRedelivery {
                deliveries: 3,
                until_ms: 900,
            },
            MessageState::WaitingForRedelivery,
            3,
            Some(0),
        ),
        (
            Explanation::Delayed { until_ms: 4_000 },
            MessageState::Delayed,
            0,
            Some(3_000),
        ),
        (
            Explanation::BeingDeadLettered { deliveries: 5 },
            MessageState::BeingDeadLettered,
            5,
            None,
        ),
        (
            Explanation::Handled(None),
            MessageState::Acknowledged,
            0,
            None,
        ),
        (
            Explanation::Handled(Some(Handled::Filtered)),
            MessageState::Filtered,
            0,
            None,
        ),
        (
            Explanation::Handled(Some(Handled::Expired)),
            MessageState::Expired,
            0,
            None,
        ),
        (
            Explanation::Handled(Some(Handled::DeadLettered { deliveries: 5 })),
            MessageState::DeadLettered,
            5,
            None,
        ),
    ];
    for (explanation, state, deliveries, remaining_ms) in cases {
        let answer = from_dispatcher(explanation.clone(), 1_000, "billing");
        assert_eq!(answer.state(), state, "{explanation:?}");
        assert_eq!(answer.delivery_count, deliveries, "{explanation:?}");
        assert_eq!(answer.remaining_ms, remaining_ms, "{explanation:?}");
        assert!(
            answer.explanation.contains("billing"),
            "{}",
            answer.explanation
        );
    }
    let in_flight = from_dispatcher(
        Explanation::InFlight {
            consumer: 4,
            deliveries: 1,
            ack_deadline_ms: 1_500,
        },
        1_000,
        "billing",
    );
    assert_eq!(in_flight.consumer_id, Some(4));
    assert!(in_flight.explanation.contains("consumer 4"));
}
