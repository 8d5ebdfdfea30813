//! Cost of one authorisation decision with 10,000 bindings (issue 13:
//! ≤ 1 µs), in two shapes: many topics with a few principals each, and
//! many principals on one topic; plus prefixes of many lengths.

use criterion::{criterion_group, criterion_main, Criterion};
use sluice_acl::{
    AclBinding, Authorizer, Host, Operation, PatternType, Permission, Principal, Request,
    ResourcePattern, ResourceType,
};
use std::hint::black_box;

fn binding(
    principal: &str,
    name: &str,
    pattern_type: PatternType,
    operation: Operation,
) -> AclBinding {
    AclBinding {
        principal: principal.parse().expect("valid principal"),
        host: Host::Any,
        operation,
        permission: Permission::Allow,
        pattern: ResourcePattern::new(ResourceType::Topic, name, pattern_type).expect("valid"),
    }
}

fn many_topics() -> Authorizer {
    let bindings = (0..10_000).map(|index| {
        binding(
            &format!("User:app-{}", index % 100),
            &format!("topic-{index}"),
            PatternType::Literal,
            Operation::Read,
        )
    });
    Authorizer::new(bindings, [])
}

fn many_principals_on_one_topic() -> Authorizer {
    let bindings = (0..10_000).map(|index| {
        binding(
            &format!("User:app-{index}"),
            "orders",
            PatternType::Literal,
            Operation::Read,
        )
    });
    Authorizer::new(bindings, [])
}

fn many_prefix_lengths() -> Authorizer {
    let bindings = (0..10_000).map(|index| {
        let prefix = format!("team-{index}-{}", "x".repeat(index % 50));
        binding(
            &format!("User:app-{}", index % 100),
            &prefix,
            PatternType::Prefixed,
            Operation::Write,
        )
    });
    Authorizer::new(bindings, [])
}

fn authorize(c: &mut Criterion) {
    let principal: Principal = "User:app-42".parse().expect("valid");
    let mut group = c.benchmark_group("authorize_10000_bindings");
    let shapes = [
        ("many_topics", many_topics(), "topic-9942", Operation::Read),
        (
            "many_principals_one_topic",
            many_principals_on_one_topic(),
            "orders",
            Operation::Read,
        ),
        (
            "prefixes_of_50_lengths",
            many_prefix_lengths(),
            "team-9942-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-orders",
            Operation::Write,
        ),
    ];
    for (name, authorizer, topic, operation) in &shapes {
        let request = Request {
            principal: &principal,
            host: "10.0.0.1",
            operation: *operation,
            resource_type: ResourceType::Topic,
            resource_name: topic,
        };
        assert!(
            authorizer.authorize(&request).allowed,
            "{name}: the benchmark must hit an allow"
        );
        group.bench_function(*name, |b| {
            b.iter(|| authorizer.authorize(black_box(&request)).allowed)
        });
    }
    group.finish();
}

criterion_group!(benches, authorize);
criterion_main!(benches);
