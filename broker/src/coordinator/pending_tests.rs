use super::*;

fn offset(topic: &str, partition: u32, offset: u64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        metadata: String::new(),
        cursor: String::new(),
    }
}

fn tp(topic: &str, partition: u32) -> TopicPartition {
    (topic.to_string(), partition)
}

#[test]
fn a_commit_marker_hands_the_latest_offsets_over_and_clears_them() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (7, 0), &[offset("t", 0, 10), offset("t", 1, 20)]);
    // A second send_offsets of the same transaction: the later offset wins.
    pending.install("g", (7, 0), &[offset("t", 0, 15)]);
    assert_eq!(pending.len(), 2);
    assert_eq!(pending.holder("g", &tp("t", 0)), Some((7, 0)));
    assert!(pending.group_has_pending("g"));
    // A marker of another epoch resolves nothing.
    assert!(pending.resolve((7, 1), true).is_empty());
    assert_eq!(pending.len(), 2);
    let committed = pending.resolve((7, 0), true);
    assert_eq!(
        committed,
        vec![(
            "g".to_string(),
            vec![offset("t", 0, 15), offset("t", 1, 20)]
        )]
    );
    assert_eq!(pending.len(), 0);
    assert!(!pending.group_has_pending("g"));
    assert_eq!(pending.holder("g", &tp("t", 0)), None);
    // A retried marker finds nothing.
    assert!(pending.resolve((7, 0), true).is_empty());
}

#[test]
fn an_abort_marker_drops_the_offsets() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (7, 2), &[offset("t", 0, 10)]);
    pending.install("h", (7, 2), &[offset("t", 0, 11)]);
    assert!(pending.resolve((7, 2), false).is_empty());
    assert_eq!(pending.len(), 0);
    assert!(!pending.group_has_pending("g") && !pending.group_has_pending("h"));
}

#[test]
fn one_marker_resolves_every_group_of_its_transaction() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (1, 0), &[offset("t", 0, 1)]);
    pending.install("h", (1, 0), &[offset("t", 0, 2)]);
    pending.install("h", (2, 0), &[offset("t", 1, 3)]);
    let committed = pending.resolve((1, 0), true);
    assert_eq!(
        committed,
        vec![
            ("g".to_string(), vec![offset("t", 0, 1)]),
            ("h".to_string(), vec![offset("t", 0, 2)])
        ]
    );
    assert_eq!(pending.holder("h", &tp("t", 1)), Some((2, 0)));
}

#[test]
fn another_transaction_on_a_pending_partition_is_refused() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (1, 0), &[offset("t", 0, 1)]);
    assert_eq!(
        pending.check("g", (2, 0), &[tp("t", 1), tp("t", 0)], 100),
        Err(PendingRefusal::Concurrent {
            topic: "t".into(),
            partition: 0,
            holder: (1, 0)
        })
    );
    // The same producer's next epoch is another transaction too.
    assert!(pending.check("g", (1, 1), &[tp("t", 0)], 100).is_err());
    // The same transaction, another group, or another partition is fine.
    assert_eq!(pending.check("g", (1, 0), &[tp("t", 0)], 100), Ok(()));
    assert_eq!(pending.check("h", (2, 0), &[tp("t", 0)], 100), Ok(()));
    assert_eq!(pending.check("g", (2, 0), &[tp("t", 1)], 100), Ok(()));
}

#[test]
fn pending_partitions_per_group_are_bounded() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (1, 0), &[offset("t", 0, 1), offset("t", 1, 1)]);
    // Updating what the transaction already holds costs nothing.
    assert_eq!(
        pending.check("g", (1, 0), &[tp("t", 0), tp("t", 1)], 2),
        Ok(())
    );
    assert_eq!(
        pending.check("g", (2, 0), &[tp("t", 2)], 2),
        Err(PendingRefusal::TooMany {
            pending: 3,
            limit: 2
        })
    );
    // Another group has its own budget.
    assert_eq!(
        pending.check("h", (2, 0), &[tp("t", 2), tp("t", 3)], 2),
        Ok(())
    );
    assert!(pending
        .check("h", (2, 0), &[tp("t", 2), tp("t", 3), tp("t", 4)], 2)
        .is_err());
    // Limit 0 refuses every transactional commit.
    assert!(pending.check("x", (3, 0), &[tp("t", 0)], 0).is_err());
}

#[test]
fn a_replayed_takeover_of_a_held_partition_keeps_the_counts_right() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (1, 0), &[offset("t", 0, 1)]);
    pending.install("g", (2, 0), &[offset("t", 0, 2)]);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending.holder("g", &tp("t", 0)), Some((2, 0)));
    assert!(pending.resolve((1, 0), true).is_empty());
    assert_eq!(
        pending.resolve((2, 0), true),
        vec![("g".to_string(), vec![offset("t", 0, 2)])]
    );
    assert!(!pending.group_has_pending("g"));
}

#[test]
fn forgetting_a_group_leaves_the_others() {
    let mut pending = PendingOffsets::default();
    pending.install("g", (1, 0), &[offset("t", 0, 1), offset("t", 1, 1)]);
    pending.install("h", (1, 0), &[offset("t", 0, 2)]);
    pending.forget_group("g");
    assert!(!pending.group_has_pending("g"));
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending.resolve((1, 0), true),
        vec![("h".to_string(), vec![offset("t", 0, 2)])]
    );
}

/// Random installs and markers against a plain model: the pending set, the
/// per-group counts and what a commit hands over always agree.
#[test]
fn random_installs_and_markers_match_a_model() {
    let mut seed: u64 = 0x5eed_1234;
    let mut next = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let mut pending = PendingOffsets::default();
    // Model: (group, partition) -> (txn, offset).
    let mut model: BTreeMap<(String, TopicPartition), (TxnKey, u64)> = BTreeMap::new();
    let mut committed: BTreeMap<(String, TopicPartition), u64> = BTreeMap::new();
    let mut model_committed: BTreeMap<(String, TopicPartition), u64> = BTreeMap::new();
    for step in 0..5_000u64 {
        let group = format!("g{}", next(3));
        let txn = (next(4) as i64, next(2) as i16);
        if next(3) > 0 {
            let partitions: Vec<CommittedOffset> = (0..=next(3))
                .map(|_| offset("t", next(5) as u32, step))
                .collect();
            let names: Vec<TopicPartition> = partitions
                .iter()
                .map(|o| (o.topic.clone(), o.partition))
                .collect();
            if pending.check(&group, txn, &names, 6).is_ok() {
                pending.install(&group, txn, &partitions);
                for o in &partitions {
                    model.insert(
                        (group.clone(), (o.topic.clone(), o.partition)),
                        (txn, o.offset),
                    );
                }
            }
        } else {
            let commit = next(2) == 0;
            for (group, offsets) in pending.resolve(txn, commit) {
                for o in offsets {
                    committed.insert((group.clone(), (o.topic, o.partition)), o.offset);
                }
            }
            let resolved: Vec<_> = model
                .iter()
                .filter(|(_, (holder, _))| *holder == txn)
                .map(|(key, (_, offset))| (key.clone(), *offset))
                .collect();
            for (key, offset) in resolved {
                model.remove(&key);
                if commit {
                    model_committed.insert(key, offset);
                }
            }
        }
        assert_eq!(pending.len(), model.len(), "step {step}");
        for ((group, partition), (txn, _)) in &model {
            assert_eq!(pending.holder(group, partition), Some(*txn), "step {step}");
        }
        for group in ["g0", "g1", "g2"] {
            let count = model.keys().filter(|(owner, _)| owner == group).count();
            assert!(count <= 6, "step {step}: the bound held");
            assert_eq!(pending.group_has_pending(group), count > 0, "step {step}");
        }
        assert_eq!(committed, model_committed, "step {step}");
    }
}
