//! Deleting an inactive consumer group (issue 15): the coordinator appends
//! a deletion record to the group's `__consumer_offsets` partition (it is
//! the only writer there), forgets the group's offsets once the record is
//! durable (replay forgets them the same way), and asks the nameserver to
//! drop the group's listing. A group with members is refused
//! GROUP_NOT_EMPTY; a subscription's cursor group is refused (subscriptions
//! are deleted with their own command). A member joining while the
//! deletion is in flight starts without committed offsets (its reset
//! policy), as after any deletion.

use super::{forget_group, lock, Coordinator, State};
use crate::clients::nameserver_call;
use crate::commit_record;
use crate::error::BrokerError;
use crate::Shared;
use sluice_proto::batch;
use sluice_proto::names::GroupName;
use sluice_proto::v1::UnregisterGroupRequest;

/// Whether `group` may be deleted now. Pure.
fn check_deletable(state: &State, group: &str) -> Result<(), BrokerError> {
    let members = state
        .groups
        .get(group)
        .map_or(0, |group| group.members.len());
    if members > 0 {
        return Err(BrokerError::GroupNotEmpty {
            group: group.to_string(),
            members,
        });
    }
    if state
        .cursors
        .get(group)
        .is_some_and(|cursors| !cursors.is_empty())
    {
        return Err(BrokerError::InvalidArgument(format!(
            "group {group:?} holds subscription cursors; delete the subscription instead"
        )));
    }
    if state
        .pending
        .values()
        .any(|pending| pending.group_has_pending(group))
    {
        return Err(BrokerError::ConcurrentTransactions(format!(
            "group {group:?} has transactional offsets waiting for their transaction's marker; retry after it ends"
        )));
    }
    let known = state.committed.contains_key(group)
        || state.groups.contains_key(group)
        || state.registered.contains(group);
    if !known {
        return Err(BrokerError::UnknownGroup(group.to_string()));
    }
    Ok(())
}

impl Coordinator {
    /// Deletes inactive `group`: its committed offsets here, then its
    /// listing on the nameserver.
    pub async fn delete_group(&self, shared: &Shared, group: &str) -> Result<(), BrokerError> {
        GroupName::new(group).map_err(|error| BrokerError::InvalidArgument(error.to_string()))?;
        let partition = self.offsets_partition(shared, group)?;
        self.evict_expired_members();
        check_deletable(&lock(&self.state), group)?;
        let record = commit_record::encode_deletion(group)
            .map_err(|error| BrokerError::Internal(error.to_string()))?;
        let header = batch::validate(&record, usize::MAX).map_err(BrokerError::Batch)?;
        let state = self.state.clone();
        let name = group.to_string();
        let apply = Box::new(move |_base_offset: u64| {
            let mut state = lock(&state);
            forget_group(&mut state, &name);
            // As the replay does: a deletion forgets pending offsets too.
            for pending in state.pending.values_mut() {
                pending.forget_group(&name);
            }
            if state
                .groups
                .get(&name)
                .is_some_and(|group| group.members.is_empty())
            {
                state.groups.remove(&name);
            }
            state.registered.remove(&name);
        });
        let generation = partition.status().generation;
        let receiver = partition.submit(record, header, generation, Some(apply))?;
        receiver
            .await
            .map_err(|_| BrokerError::Unavailable("offsets partition stopped".into()))??;
        nameserver_call!(
            &shared.clients,
            unregister_group,
            UnregisterGroupRequest {
                group: group.to_string(),
            }
        )?;
        tracing::info!(group, "group deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Group;
    use super::*;

    #[test]
    fn only_a_known_inactive_streaming_group_is_deletable() {
        let mut state = State::default();
        assert!(matches!(
            check_deletable(&state, "g"),
            Err(BrokerError::UnknownGroup(_))
        ));
        state
            .committed
            .entry("g".into())
            .or_default()
            .insert(("t".into(), 0), (5, String::new()));
        assert!(check_deletable(&state, "g").is_ok());
        state.groups.insert("g".into(), Group::default());
        assert!(check_deletable(&state, "g").is_ok(), "no members");
        state
            .cursors
            .entry("g".into())
            .or_default()
            .insert(("t".into(), 0), "AQ".into());
        assert!(matches!(
            check_deletable(&state, "g"),
            Err(BrokerError::InvalidArgument(message)) if message.contains("subscription")
        ));
    }

    #[test]
    fn a_group_with_members_is_refused_with_their_count() {
        let coordinator = super::super::tests::coordinator();
        let mut state = State::default();
        super::super::tests::join(&coordinator, &mut state);
        match check_deletable(&state, "g") {
            Err(BrokerError::GroupNotEmpty { members, .. }) => assert_eq!(members, 1),
            other => panic!("expected GROUP_NOT_EMPTY, got {other:?}"),
        }
    }
}
