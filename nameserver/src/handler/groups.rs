//! Consumer groups (registered for listing).

use super::{invalid, now_ms, NameServerHandler};
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, Put, Transaction};
use sluice_proto::names::GroupName;
use sluice_proto::v1::{GroupListing, ListGroupsResponse};

impl NameServerHandler {
    /// Records `group` for listing; registering again keeps the first
    /// creation time.
    pub(crate) async fn do_register_group(&self, group: &str) -> Result<(), NameServerError> {
        GroupName::new(group).map_err(|error| invalid(error.to_string()))?;
        let key = keys::group(group);
        let listing = GroupListing {
            group: group.to_string(),
            created_at_ms: now_ms(),
        };
        // Absent compare: registering twice keeps the first creation time.
        self.store
            .commit(Transaction {
                compares: vec![Compare::Absent(key.clone())],
                puts: vec![Put::new(key, keys::encode(&listing))],
                deletes: Vec::new(),
            })
            .await?;
        Ok(())
    }

    /// Forgets `group`'s listing (its coordinator deleted it); absent is
    /// fine, so a retried deletion succeeds.
    pub(crate) async fn do_unregister_group(&self, group: &str) -> Result<(), NameServerError> {
        GroupName::new(group).map_err(|error| invalid(error.to_string()))?;
        self.store
            .commit(Transaction {
                compares: Vec::new(),
                puts: Vec::new(),
                deletes: vec![keys::group(group)],
            })
            .await?;
        tracing::info!(group, "group unregistered");
        Ok(())
    }

    pub(crate) async fn do_list_groups(&self) -> Result<ListGroupsResponse, NameServerError> {
        let mut groups = Vec::new();
        for entry in self.store.range(keys::GROUPS).await? {
            match keys::decode::<GroupListing>(&entry.key, &entry.value) {
                Ok(listing) => groups.push(listing),
                Err(error) => tracing::warn!(%error, "skipping undecodable group"),
            }
        }
        Ok(ListGroupsResponse { groups })
    }
}
