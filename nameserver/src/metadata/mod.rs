//! The metadata store abstraction the nameserver keeps all cluster state in.
//!
//! Two implementations: [`EtcdMetadataStore`] for real clusters and
//! [`EmbeddedMetadataStore`] for `sluice dev`. Keys are relative (e.g.
//! `topics/orders`); the etcd implementation puts them under `/sluice/v1/`.
//! Both give the same semantics: a global revision, per-key mod and create
//! revisions, all-or-nothing transactions with compares, and leases whose
//! expiry removes the keys attached to them.

mod embedded;
mod embedded_watch;
mod etcd;
mod etcd_connect;
mod etcd_credentials;
mod etcd_diagnosis;
mod etcd_refusal;
mod etcd_rotation;

pub use embedded::EmbeddedMetadataStore;
pub use etcd::{EtcdMetadataStore, EtcdOptions, DEFAULT_KEY_PREFIX};
pub use etcd_credentials::EtcdSecurity;

/// The etcd key prefix used when none is configured.
pub fn etcd_default_key_prefix() -> &'static str {
    DEFAULT_KEY_PREFIX
}

use async_trait::async_trait;

/// Identifier of a lease (an etcd lease id; the node's session id).
pub type LeaseId = i64;

/// One stored key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the last write to this key.
    pub mod_revision: i64,
    /// Revision at which this key was created.
    pub create_revision: i64,
}

/// A condition a transaction checks before it applies its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key exists and was last written at exactly this revision.
    ModRevisionEquals(String, i64),
    /// The key does not exist.
    Absent(String),
    /// The key exists and holds exactly these bytes.
    ValueEquals(String, Vec<u8>),
    /// The key exists and was created at exactly this revision: the same
    /// incarnation of the key (a deleted and re-created key has a new
    /// create revision). The assigner election's fence.
    CreateRevisionEquals(String, i64),
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: Option<LeaseId>,
}

impl Put {
    pub fn new(key: impl Into<String>, value: Vec<u8>) -> Self {
        Self {
            key: key.into(),
            value,
            lease: None,
        }
    }
}

/// All-or-nothing: the puts and deletes apply only if every compare holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub compares: Vec<Compare>,
    pub puts: Vec<Put>,
    pub deletes: Vec<String>,
}

/// Why a metadata operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The backend could not be reached or did not answer in time; retry.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The request conflicted with the store's state (e.g. a lease that
    /// does not exist when writing under it).
    #[error("metadata conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back (bad persisted file, bad value).
    #[error("metadata corrupt: {0}")]
    Corrupt(String),
    /// The lease is unknown or has expired.
    #[error("lease {0} expired or unknown")]
    LeaseExpired(LeaseId),
}

/// Most change notifications a watch holds for its consumer; beyond it
/// the watch is closed (the consumer watches again and re-reads).
pub const WATCH_CHANNEL_EVENTS: usize = 1024;

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was written.
    Put(String),
    /// The key was deleted (also by its lease ending).
    Delete(String),
}

/// The receiving end of [`MetadataStore::watch_prefix`]; `None` from
/// `recv` means the watch broke.
pub type WatchEvents = tokio::sync::mpsc::Receiver<WatchEvent>;

/// What the nameserver needs from a metadata backend. Object safe: the
/// nameserver holds an `Arc<dyn MetadataStore>`.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetadataError>;
    /// Every key starting with `prefix`, in key order.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError>;
    /// Writes `key`; returns the new revision.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError>;
    /// Removes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, MetadataError>;
    /// Removes every key starting with `prefix`; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError>;
    /// Applies the transaction; `Ok(false)` when a compare failed (nothing
    /// was written).
    async fn commit(&self, transaction: Transaction) -> Result<bool, MetadataError> {
        Ok(self.commit_at(transaction).await?.is_some())
    }
    /// Applies the transaction and returns the revision it wrote at (the
    /// new mod revision of every key it put); `Ok(None)` when a compare
    /// failed.
    async fn commit_at(&self, transaction: Transaction) -> Result<Option<i64>, MetadataError>;
    /// Change notifications for every key starting with `prefix`, from now
    /// on. A trigger, not a replica: consumers re-read what they need. The
    /// channel holds at most [`WATCH_CHANNEL_EVENTS`] events; a watch that
    /// breaks (backend failure, consumer too slow) closes the channel, and
    /// the consumer watches again and re-reads.
    async fn watch_prefix(&self, prefix: &str) -> Result<WatchEvents, MetadataError>;
    /// Grants a lease that expires after `ttl_ms` unless kept alive.
    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError>;
    /// Renews the lease; returns the remaining TTL in milliseconds, or
    /// [`MetadataError::LeaseExpired`].
    async fn keep_alive(&self, lease: LeaseId) -> Result<u64, MetadataError>;
    /// Ends the lease now, deleting its keys. Unknown leases are not an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), MetadataError>;
    /// Remaining time of the lease in milliseconds; `None` if it is gone.
    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<u64>, MetadataError>;
    /// "etcd" or "embedded".
    fn backend_name(&self) -> &'static str;
}
