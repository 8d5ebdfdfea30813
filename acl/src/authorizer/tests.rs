use super::*;
use crate::model::ResourcePattern;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn user(name: &str) -> Principal {
    Principal::user(name).expect("valid principal")
}

fn binding(
    principal: &str,
    permission: Permission,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
    pattern_type: PatternType,
) -> AclBinding {
    AclBinding {
        principal: principal.parse().expect("valid principal"),
        host: Host::Any,
        operation,
        permission,
        pattern: ResourcePattern::new(resource_type, name, pattern_type).expect("valid pattern"),
    }
}

fn allow_topic(principal: &str, operation: Operation, name: &str) -> AclBinding {
    binding(
        principal,
        Permission::Allow,
        operation,
        ResourceType::Topic,
        name,
        PatternType::Literal,
    )
}

fn topic_request<'a>(principal: &'a Principal, operation: Operation, name: &'a str) -> Request<'a> {
    Request {
        principal,
        host: "10.0.0.1",
        operation,
        resource_type: ResourceType::Topic,
        resource_name: name,
    }
}

#[test]
fn nothing_is_allowed_without_a_binding_but_super_users_are() {
    let alice = user("alice");
    let root = user("root");
    let authorizer = Authorizer::new([], [root.clone()]);
    let request = topic_request(&alice, Operation::Read, "orders");
    assert_eq!(
        authorizer.authorize(&request),
        Decision {
            allowed: false,
            reason: DecisionReason::NoMatchingAcl
        }
    );
    let as_root = topic_request(&root, Operation::Delete, "orders");
    assert_eq!(
        authorizer.authorize(&as_root).reason,
        DecisionReason::SuperUser
    );
}

#[test]
fn an_allow_covers_its_principal_operation_resource_and_host_only() {
    let alice = user("alice");
    let bob = user("bob");
    let mut from_one_host = allow_topic("User:alice", Operation::Write, "orders");
    from_one_host.host = Host::Exact("10.0.0.1".into());
    let authorizer = Authorizer::new([from_one_host.clone()], []);
    let allowed = authorizer.authorize(&topic_request(&alice, Operation::Write, "orders"));
    assert_eq!(allowed.reason, DecisionReason::AllowedBy(&from_one_host));
    for refused in [
        topic_request(&bob, Operation::Write, "orders"),
        topic_request(&alice, Operation::Read, "orders"),
        topic_request(&alice, Operation::Write, "orders-eu"),
        Request {
            host: "10.0.0.2",
            ..topic_request(&alice, Operation::Write, "orders")
        },
        Request {
            resource_type: ResourceType::Group,
            ..topic_request(&alice, Operation::Write, "orders")
        },
    ] {
        assert!(!authorizer.authorize(&refused).allowed, "{refused:?}");
    }
}

#[test]
fn deny_wins_over_any_allow() {
    let alice = user("alice");
    let authorizer = Authorizer::new(
        [
            allow_topic("User:alice", Operation::All, "orders"),
            allow_topic("User:*", Operation::Read, "*"),
            binding(
                "User:*",
                Permission::Deny,
                Operation::Read,
                ResourceType::Topic,
                "ord",
                PatternType::Prefixed,
            ),
        ],
        [],
    );
    let read = authorizer.authorize(&topic_request(&alice, Operation::Read, "orders"));
    assert!(!read.allowed);
    assert!(matches!(read.reason, DecisionReason::DeniedBy(b) if b.permission == Permission::Deny));
    // The deny names Read only: All still allows the rest.
    assert!(
        authorizer
            .authorize(&topic_request(&alice, Operation::Write, "orders"))
            .allowed
    );
    assert!(
        authorizer
            .authorize(&topic_request(&alice, Operation::Read, "payments"))
            .allowed
    );
}

#[test]
fn using_a_resource_allows_describing_it_and_denying_use_does_not_deny_describe() {
    let alice = user("alice");
    let authorizer = Authorizer::new(
        [
            allow_topic("User:alice", Operation::Read, "orders"),
            binding(
                "User:alice",
                Permission::Deny,
                Operation::Write,
                ResourceType::Topic,
                "orders",
                PatternType::Literal,
            ),
        ],
        [],
    );
    assert!(
        authorizer
            .authorize(&topic_request(&alice, Operation::Describe, "orders"))
            .allowed
    );
    assert!(
        !authorizer
            .authorize(&topic_request(&alice, Operation::Create, "orders"))
            .allowed
    );
}

#[test]
fn a_wildcard_principal_covers_its_type_only() {
    let alice = user("alice");
    let service = Principal::new("Service:broker-1").expect("valid");
    let authorizer = Authorizer::new([allow_topic("User:*", Operation::Read, "orders")], []);
    assert!(
        authorizer
            .authorize(&topic_request(&alice, Operation::Read, "orders"))
            .allowed
    );
    assert!(
        !authorizer
            .authorize(&topic_request(&service, Operation::Read, "orders"))
            .allowed
    );
}

#[test]
fn prefixes_are_compared_on_character_boundaries() {
    let alice = user("alice");
    let prefix = |name: &str| {
        binding(
            "User:alice",
            Permission::Allow,
            Operation::Read,
            ResourceType::Topic,
            name,
            PatternType::Prefixed,
        )
    };
    // "é" is two bytes: a one-byte prefix length falls inside it.
    let authorizer = Authorizer::new([prefix("a"), prefix("éa"), prefix("ordersX")], []);
    for (name, allowed) in [
        ("éabc", true),
        ("é", false),
        ("abc", true),
        ("orders", false),
        ("", false),
    ] {
        let decision = authorizer.authorize(&topic_request(&alice, Operation::Read, name));
        assert_eq!(decision.allowed, allowed, "{name:?}");
    }
}

#[test]
fn duplicated_bindings_count_once() {
    let same = allow_topic("User:alice", Operation::Read, "orders");
    let authorizer = Authorizer::new([same.clone(), same], []);
    assert_eq!(authorizer.bindings().len(), 1);
}

/// The rules applied by a linear scan, as the crate doc states them.
fn decide_by_scan(
    bindings: &[AclBinding],
    super_users: &[Principal],
    request: &Request<'_>,
) -> bool {
    if super_users.contains(request.principal) {
        return true;
    }
    let matching = bindings.iter().filter(|binding| {
        let principal = binding.principal == *request.principal
            || binding.principal.as_str() == request.principal.wildcard_of_type();
        let host = binding.host == Host::Any || binding.host == Host::Exact(request.host.into());
        principal
            && host
            && binding.pattern.resource_type == request.resource_type
            && binding.pattern.covers(request.resource_name)
    });
    let mut allowed = false;
    for binding in matching {
        match binding.permission {
            Permission::Deny if binding.operation.denies(request.operation) => return false,
            Permission::Allow if binding.operation.allows(request.operation) => allowed = true,
            _ => {}
        }
    }
    allowed
}

const PRINCIPALS: [&str; 4] = ["User:alice", "User:bob", "User:*", "Service:broker"];
const NAMES: [&str; 6] = ["orders", "orders-eu", "ord", "payments", "*", "o"];
const HOSTS: [&str; 2] = ["10.0.0.1", "10.0.0.2"];

fn random_binding(random: &mut StdRng) -> AclBinding {
    let pattern_type = PatternType::ALL_VALUES[random.random_range(0..2)];
    let mut name = NAMES[random.random_range(0..NAMES.len())];
    if pattern_type == PatternType::Prefixed && name == "*" {
        name = "or";
    }
    AclBinding {
        principal: PRINCIPALS[random.random_range(0..PRINCIPALS.len())]
            .parse()
            .expect("valid"),
        host: if random.random_bool(0.7) {
            Host::Any
        } else {
            Host::Exact(HOSTS[random.random_range(0..2)].into())
        },
        operation: Operation::ALL_VALUES[random.random_range(0..Operation::ALL_VALUES.len())],
        permission: Permission::ALL_VALUES[random.random_range(0..2)],
        pattern: ResourcePattern::new(
            ResourceType::ALL_VALUES[random.random_range(0..2)],
            name,
            pattern_type,
        )
        .expect("valid pattern"),
    }
}

/// Random binding sets and requests: the index decides as the linear scan
/// does, and adding a deny that matches a request always denies it.
#[test]
fn the_index_decides_as_the_rules_say_and_deny_always_wins() {
    let requesters: Vec<Principal> = ["User:alice", "User:bob", "Service:broker"]
        .iter()
        .map(|written| written.parse().expect("valid"))
        .collect();
    for seed in 0..300 {
        let mut random = StdRng::seed_from_u64(seed);
        let count = random.random_range(0..40);
        let bindings: Vec<AclBinding> = (0..count).map(|_| random_binding(&mut random)).collect();
        let super_users = if seed % 10 == 0 {
            vec![requesters[2].clone()]
        } else {
            vec![]
        };
        let authorizer = Authorizer::new(bindings.clone(), super_users.clone());
        for _ in 0..50 {
            let principal = &requesters[random.random_range(0..requesters.len())];
            let request = Request {
                principal,
                host: HOSTS[random.random_range(0..2)],
                operation: Operation::ALL_VALUES
                    [random.random_range(1..Operation::ALL_VALUES.len())],
                resource_type: ResourceType::ALL_VALUES[random.random_range(0..2)],
                resource_name: NAMES[random.random_range(0..NAMES.len() - 2)],
            };
            let decided = authorizer.authorize(&request).allowed;
            assert_eq!(
                decided,
                decide_by_scan(&bindings, &super_users, &request),
                "seed {seed}: {request:?}"
            );
            if super_users.contains(principal) {
                continue;
            }
            let mut with_deny = bindings.clone();
            with_deny.push(AclBinding {
                principal: principal.clone(),
                host: Host::Any,
                operation: request.operation,
                permission: Permission::Deny,
                pattern: ResourcePattern::new(
                    request.resource_type,
                    request.resource_name,
                    PatternType::Literal,
                )
                .expect("valid pattern"),
            });
            let denied = Authorizer::new(with_deny, super_users.clone());
            assert!(
                !denied.authorize(&request).allowed,
                "seed {seed}: deny must win"
            );
        }
    }
}

#[test]
fn writing_some_topic_is_found_whatever_its_name() {
    let alice = user("alice");
    let bob = user("bob");
    let authorizer = Authorizer::new([allow_topic("User:alice", Operation::Write, "orders")], []);
    let some_topic = |principal| Request {
        principal,
        host: "10.0.0.1",
        operation: Operation::Write,
        resource_type: ResourceType::Topic,
        resource_name: "",
    };
    assert!(authorizer.allows_some(&some_topic(&alice)));
    assert!(!authorizer.allows_some(&some_topic(&bob)));
    assert!(!authorizer.allows_some(&Request {
        operation: Operation::Read,
        ..some_topic(&alice)
    }));
}
