use super::*;

fn request() -> Subscription {
    Subscription {
        topic: "orders".to_string(),
        name: "billing".to_string(),
        r#type: SubscriptionType::Shared as i32,
        ..Subscription::default()
    }
}

fn message(result: Result<Subscription, NameServerError>) -> String {
    match result {
        Ok(subscription) => panic!("accepted {subscription:?}"),
        Err(error) => error.to_string(),
    }
}

/// One row per numeric setting at 0, 1 and its maximum (plus the first
/// value past an upper bound): `Ok(stored value)` or the field the
/// INVALID_ARGUMENT message must name.
#[test]
fn every_numeric_subscription_setting_at_its_extremes() {
    type Set = fn(&mut Subscription, u64);
    type Get = fn(&Subscription) -> u64;
    let day = 86_400_000;
    /// (field, setter, getter, [(value, stored value or field named)])
    type Field<'a> = (&'a str, Set, Get, Vec<(u64, Result<u64, &'a str>)>);
    let fields: Vec<Field> = vec![
        (
            "ack_timeout_ms",
            |s, v| s.ack_timeout_ms = v,
            |s| s.ack_timeout_ms,
            vec![
                (0, Ok(DEFAULT_ACK_TIMEOUT_MS)),
                (1, Err("ack_timeout_ms")),
                (MIN_ACK_TIMEOUT_MS, Ok(MIN_ACK_TIMEOUT_MS)),
                (day, Ok(day)),
                (day + 1, Err("ack_timeout_ms")),
                (u64::MAX, Err("ack_timeout_ms")),
            ],
        ),
        (
            "redelivery_backoff_initial_ms",
            |s, v| s.redelivery_backoff_initial_ms = v,
            |s| s.redelivery_backoff_initial_ms,
            vec![
                (0, Ok(DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS)),
                (1, Ok(1)),
                (u64::MAX, Err("redelivery_backoff_initial_ms")),
            ],
        ),
        (
            "redelivery_backoff_max_ms",
            |s, v| s.redelivery_backoff_max_ms = v,
            |s| s.redelivery_backoff_max_ms,
            vec![
                (0, Ok(DEFAULT_REDELIVERY_BACKOFF_MAX_MS)),
                (1, Err("redelivery_backoff_max_ms")),
                (MAX_REDELIVERY_BACKOFF_MS, Ok(MAX_REDELIVERY_BACKOFF_MS)),
                (u64::MAX, Err("redelivery_backoff_max_ms")),
            ],
        ),
        (
            "max_deliveries",
            |s, v| s.max_deliveries = v as u32,
            |s| s.max_deliveries.into(),
            vec![
                (0, Ok(0)),
                (1, Ok(1)),
                (
                    LARGEST_MAX_DELIVERIES.into(),
                    Ok(LARGEST_MAX_DELIVERIES.into()),
                ),
                (u32::MAX.into(), Err("max_deliveries")),
            ],
        ),
        (
            "backlog_quota_bytes",
            |s, v| s.backlog_quota_bytes = v,
            |s| s.backlog_quota_bytes,
            vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
        ),
        (
            "backlog_quota_messages",
            |s, v| s.backlog_quota_messages = v,
            |s| s.backlog_quota_messages,
            vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
        ),
        (
            "backlog_quota_age_ms",
            |s, v| s.backlog_quota_age_ms = v,
            |s| s.backlog_quota_age_ms,
            vec![(0, Ok(0)), (1, Ok(1)), (u64::MAX, Ok(u64::MAX))],
        ),
        (
            "backlog_policy",
            |s, v| s.backlog_policy = v as i32,
            |s| s.backlog_policy as u64,
            vec![(99, Err("backlog policy"))],
        ),
        (
            "type",
            |s, v| s.r#type = v as i32,
            |s| s.r#type as u64,
            vec![
                (0, Err("subscription type")),
                (u64::MAX, Err("subscription type")),
            ],
        ),
        (
            "initial_position",
            |s, v| s.initial_position = v as i32,
            |s| s.initial_position as u64,
            vec![(99, Err("initial position"))],
        ),
    ];
    for (field, set, get, cases) in fields {
        for (value, expected) in cases {
            let mut given = request();
            set(&mut given, value);
            match (complete_subscription(given), expected) {
                (Ok(completed), Ok(stored)) => {
                    assert_eq!(get(&completed), stored, "{field} = {value}")
                }
                (Err(NameServerError::InvalidArgument(message)), Err(named)) => assert!(
                    message.contains(named),
                    "{field} = {value}: message {message:?} does not name {named}"
                ),
                (result, expected) => {
                    panic!("{field} = {value}: got {result:?}, expected {expected:?}")
                }
            }
        }
    }
}

#[test]
fn zero_fields_take_the_defaults() {
    let completed = complete_subscription(request()).expect("valid");
    assert_eq!(completed.ack_timeout_ms, DEFAULT_ACK_TIMEOUT_MS);
    assert_eq!(
        completed.redelivery_backoff_initial_ms,
        DEFAULT_REDELIVERY_BACKOFF_INITIAL_MS
    );
    assert_eq!(
        completed.redelivery_backoff_max_ms,
        DEFAULT_REDELIVERY_BACKOFF_MAX_MS
    );
    assert_eq!(completed.dead_letter_topic, "");
    let with_dead_letters = complete_subscription(Subscription {
        max_deliveries: 5,
        ..request()
    })
    .expect("valid");
    assert_eq!(with_dead_letters.dead_letter_topic, "orders-billing-DLQ");
}

#[test]
fn the_default_dead_letter_topic_must_fit_the_name_rules() {
    // 200 + 100 bytes and the separators: over the 249-byte name limit.
    let long = Subscription {
        topic: "t".repeat(200),
        name: "s".repeat(100),
        max_deliveries: 3,
        ..request()
    };
    let error = message(complete_subscription(long.clone()));
    assert!(
        error.contains("give dead_letter_topic explicitly"),
        "{error}"
    );
    assert!(complete_subscription(Subscription {
        dead_letter_topic: "short-dlq".to_string(),
        ..long
    })
    .is_ok());
}

#[test]
fn types_and_kinds_must_be_known() {
    let error = message(complete_subscription(Subscription {
        r#type: 0,
        ..request()
    }));
    assert!(
        error.contains("UNSPECIFIED") && error.contains("KEY_SHARED"),
        "{error}"
    );
    let error = message(complete_subscription(Subscription {
        r#type: 9,
        ..request()
    }));
    assert!(error.contains("unknown subscription type 9"), "{error}");
    let error = message(complete_subscription(Subscription {
        selector_kind: 7,
        ..request()
    }));
    assert!(error.contains("unknown selector kind 7"), "{error}");
    let error = message(complete_subscription(Subscription {
        initial_position: 5,
        ..request()
    }));
    assert!(error.contains("unknown initial position 5"), "{error}");
}

#[test]
fn selectors_must_parse_and_all_takes_none() {
    let error = complete_subscription(Subscription {
        selector: "*".to_string(),
        ..request()
    })
    .expect_err("ALL with an expression");
    assert!(
        matches!(error, NameServerError::InvalidArgument(_)),
        "{error}"
    );
    let error = complete_subscription(Subscription {
        selector_kind: SelectorKind::Sql as i32,
        selector: "region = ".to_string(),
        ..request()
    })
    .expect_err("unfinished SQL");
    assert!(
        matches!(error, NameServerError::InvalidSelector { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("column"), "{error}");
    let error = complete_subscription(Subscription {
        selector_kind: SelectorKind::Tag as i32,
        selector: "a".repeat(MAX_SELECTOR_BYTES + 1),
        ..request()
    })
    .expect_err("overlong");
    assert!(error.to_string().contains("limit"), "{error}");
    assert!(complete_subscription(Subscription {
        selector_kind: SelectorKind::Sql as i32,
        selector: "region = 'eu' AND amount > 100".to_string(),
        ..request()
    })
    .is_ok());
    assert!(complete_subscription(Subscription {
        selector_kind: SelectorKind::Tag as i32,
        selector: "red || blue".to_string(),
        ..request()
    })
    .is_ok());
}

#[test]
fn long_selectors_are_not_quoted_whole() {
    let long = "x".repeat(MAX_SELECTOR_BYTES * 100);
    let error = message(complete_subscription(Subscription {
        selector: long.clone(),
        ..request()
    }));
    assert!(error.len() < 400, "{error}");
    assert!(
        error.contains(&format!("({} bytes in all)", long.len())),
        "{error}"
    );
    let stored = complete_subscription(request()).expect("valid");
    let found = differences(
        &stored,
        &Subscription {
            selector: long,
            ..stored.clone()
        },
    );
    assert!(found[0].len() < 400, "{found:?}");
    assert_eq!(quoted("a'b"), "\"a'b\"");
}

#[test]
fn limits_are_enforced() {
    for (field, subscription) in [
        (
            "ack_timeout_ms",
            Subscription {
                ack_timeout_ms: 999,
                ..request()
            },
        ),
        (
            "ack_timeout_ms",
            Subscription {
                ack_timeout_ms: MAX_ACK_TIMEOUT_MS + 1,
                ..request()
            },
        ),
        (
            "redelivery_backoff_max_ms",
            Subscription {
                redelivery_backoff_max_ms: MAX_REDELIVERY_BACKOFF_MS + 1,
                ..request()
            },
        ),
        (
            "redelivery_backoff_initial_ms",
            Subscription {
                redelivery_backoff_initial_ms: 120_000,
                ..request()
            },
        ),
        (
            "max_deliveries",
            Subscription {
                max_deliveries: LARGEST_MAX_DELIVERIES + 1,
                ..request()
            },
        ),
        (
            "dead_letter_topic",
            Subscription {
                dead_letter_topic: "orders".to_string(),
                ..request()
            },
        ),
    ] {
        let error = message(complete_subscription(subscription));
        assert!(error.contains(field), "{field}: {error}");
    }
    assert!(complete_subscription(Subscription {
        ack_timeout_ms: MAX_ACK_TIMEOUT_MS,
        redelivery_backoff_initial_ms: MAX_REDELIVERY_BACKOFF_MS,
        redelivery_backoff_max_ms: MAX_REDELIVERY_BACKOFF_MS,
        max_deliveries: LARGEST_MAX_DELIVERIES,
        ..request()
    })
    .is_ok());
}

#[test]
fn backlog_quotas_are_kept_and_only_compared_when_requested() {
    let stored = complete_subscription(Subscription {
        backlog_quota_messages: 500,
        backlog_policy: sluice_proto::v1::BacklogPolicy::Evict as i32,
        ..request()
    })
    .expect("valid");
    assert_eq!(stored.backlog_quota_messages, 500);
    // Consumers creating on subscribe leave quotas 0: no conflict.
    let consumer = complete_subscription(request()).expect("valid");
    assert!(differences(&stored, &consumer).is_empty());
    let other = complete_subscription(Subscription {
        backlog_quota_messages: 600,
        ..request()
    })
    .expect("valid");
    assert_eq!(
        differences(&stored, &other),
        vec!["backlog_quota_messages (stored 500, requested 600)".to_string()]
    );
    let refused = complete_subscription(Subscription {
        backlog_policy: 42,
        ..request()
    });
    assert!(message(refused).contains("unknown backlog policy 42"));
}

#[test]
fn differences_name_each_field_and_ignore_the_creation_time() {
    let stored = complete_subscription(request()).expect("valid");
    let same = Subscription {
        created_at_ms: 42,
        ..stored.clone()
    };
    assert!(differences(&stored, &same).is_empty());
    let other = Subscription {
        r#type: SubscriptionType::Exclusive as i32,
        ack_timeout_ms: 5_000,
        ..stored.clone()
    };
    let found = differences(&stored, &other);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with(
        "type (stored SUBSCRIPTION_TYPE_SHARED, requested SUBSCRIPTION_TYPE_EXCLUSIVE)"
    ));
    assert!(found[1].starts_with("ack_timeout_ms (stored 30000, requested 5000)"));
}
