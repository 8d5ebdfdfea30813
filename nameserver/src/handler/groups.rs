//! Consumer groups (registered for listing) and producer ids (a
//! cluster-wide counter).

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

    /// Hands out the next producer id: a compare-and-set increment of
    /// `counters/producer_id`, so concurrent nameservers never give out the
    /// same id and an id is never reused (a restarted producer gets a new
    /// one, and brokers never confuse its sequences with the old ones).
    pub(crate) async fn do_allocate_producer_id(&self) -> Result<u64, NameServerError> {
        let key = keys::PRODUCER_ID_COUNTER;
        for attempt in 0..self.config.max_cas_retries.max(1) {
            // Producers starting together all race for this one key.
            super::pause_before_cas_retry(attempt).await;
            let entry = self.store.get(key).await?;
            let (next, compare) = match entry {
                Some(entry) => (
                    keys::decode::<keys::ProducerIdCounter>(key, &entry.value)?.next_producer_id,
                    Compare::ModRevisionEquals(key.to_string(), entry.mod_revision),
                ),
                None => (0, Compare::Absent(key.to_string())),
            };
            // Record batches carry the id as a signed 64-bit field.
            if next >= i64::MAX as u64 {
                return Err(NameServerError::Refused(
                    "producer ids are exhausted".to_string(),
                ));
            }
            let following = keys::ProducerIdCounter {
                next_producer_id: next + 1,
            };
            let transaction = Transaction {
                compares: vec![compare],
                puts: vec![Put::new(key, keys::encode(&following))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return Ok(next);
            }
        }
        Err(NameServerError::Conflict(format!(
            "producer id counter contended for {} attempts",
            self.config.max_cas_retries
        )))
    }
}
