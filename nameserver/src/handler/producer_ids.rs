//! Producer ids (ADR 0015): a cluster-wide counter in the metadata store
//! plus a tag binding each id to the principal that asked for it
//! (`sluice_acl::ProducerIdKey`), and the key brokers verify tags with.
//!
//! - The key is 256 random bits at [`keys::PRODUCER_ID_KEY`], written by
//!   the first nameserver that needs it with a create-if-absent
//!   transaction (racing nameservers all end up with the winner's key),
//!   read once per process and never logged. A restarted nameserver reads
//!   the same key, so ids it issued before stay valid.
//! - The counter is incremented with a compare-and-set, so an id is never
//!   issued twice; past `MAX_PRODUCER_ID_COUNTER` allocation is refused.
//! - Only cluster principals get the key (`GetProducerIdKey` needs
//!   `ClusterAction`).

use super::NameServerHandler;
use crate::error::NameServerError;
use crate::keys;
use crate::metadata::{Compare, Put, Transaction};
use sluice_acl::{Principal, ProducerIdKey, MAX_PRODUCER_ID_COUNTER, PRODUCER_ID_KEY_BYTES};

/// The key in both forms: for tagging here and for brokers.
pub(crate) struct ProducerIdSecret {
    key: ProducerIdKey,
    bytes: Vec<u8>,
}

impl NameServerHandler {
    async fn producer_id_secret(&self) -> Result<&ProducerIdSecret, NameServerError> {
        self.producer_id_key
            .get_or_try_init(|| self.load_or_create_producer_id_key())
            .await
    }

    async fn load_or_create_producer_id_key(&self) -> Result<ProducerIdSecret, NameServerError> {
        let key = keys::PRODUCER_ID_KEY;
        if self.store.get(key).await?.is_none() {
            let fresh: [u8; PRODUCER_ID_KEY_BYTES] = rand::random();
            // Absent compare: a racing nameserver's key wins and is read below.
            self.store
                .commit(Transaction {
                    compares: vec![Compare::Absent(key.to_string())],
                    puts: vec![Put::new(key, fresh.to_vec())],
                    deletes: Vec::new(),
                })
                .await?;
        }
        let entry = self.store.get(key).await?.ok_or_else(|| {
            NameServerError::Conflict("the producer-id key vanished after being written".into())
        })?;
        let secret = ProducerIdKey::from_bytes(&entry.value).map_err(|error| {
            NameServerError::CorruptValue {
                key: key.to_string(),
                reason: error.to_string(),
            }
        })?;
        tracing::info!("producer-id key loaded");
        Ok(ProducerIdSecret {
            key: secret,
            bytes: entry.value,
        })
    }

    /// The key's bytes, for a broker.
    pub(crate) async fn do_get_producer_id_key(&self) -> Result<Vec<u8>, NameServerError> {
        Ok(self.producer_id_secret().await?.bytes.clone())
    }

    /// Hands out the next producer id, bound to `principal`: a
    /// compare-and-set increment of `counters/producer_id`, so concurrent
    /// nameservers never give out the same counter and a counter is never
    /// reused (a restarted producer gets a new one, and brokers never
    /// confuse its sequences with the old ones).
    pub(crate) async fn do_allocate_producer_id(
        &self,
        principal: &Principal,
    ) -> Result<u64, NameServerError> {
        let secret = self.producer_id_secret().await?;
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
            if next > MAX_PRODUCER_ID_COUNTER {
                return Err(NameServerError::Refused(format!(
                    "producer ids are exhausted: all {} have been allocated",
                    MAX_PRODUCER_ID_COUNTER + 1
                )));
            }
            let id = secret
                .key
                .issue(next, principal)
                .map_err(|error| NameServerError::Refused(error.to_string()))?;
            let following = keys::ProducerIdCounter {
                next_producer_id: next + 1,
            };
            let transaction = Transaction {
                compares: vec![compare],
                puts: vec![Put::new(key, keys::encode(&following))],
                deletes: Vec::new(),
            };
            if self.store.commit(transaction).await? {
                return u64::try_from(id)
                    .map_err(|_| NameServerError::Refused("negative producer id".into()));
            }
        }
        Err(NameServerError::Conflict(format!(
            "producer id counter contended for {} attempts",
            self.config.max_cas_retries
        )))
    }
}
