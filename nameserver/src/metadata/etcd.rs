//! [`MetadataStore`] backed by etcd (the production backend).
//!
//! The client's channel reconnects by itself after etcd restarts; every call
//! is bounded by `request_timeout_ms` so a hung etcd turns into
//! `Unavailable` instead of a stuck request. Keys live under a prefix
//! (`/sluice/v1/` by default).

use super::{Compare, KeyValue, LeaseId, MetadataError, MetadataStore, Transaction};
use async_trait::async_trait;
use etcd_client::{
    Client, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp,
};
use std::future::Future;
use std::time::Duration;

/// The key prefix every Sluice key lives under in etcd.
pub const DEFAULT_KEY_PREFIX: &str = "/sluice/v1/";

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub key_prefix: String,
}

/// etcd-backed metadata store.
#[derive(Clone)]
pub struct EtcdMetadataStore {
    client: Client,
    request_timeout: Duration,
    key_prefix: String,
}

fn unavailable(error: etcd_client::Error) -> MetadataError {
    MetadataError::Unavailable(error.to_string())
}

impl EtcdMetadataStore {
    /// Builds the client. The channel connects lazily, so this succeeds
    /// while etcd is still down; calls fail with `Unavailable` until it is up.
    pub async fn connect(options: EtcdOptions) -> Result<Self, MetadataError> {
        if options.endpoints.is_empty() {
            return Err(MetadataError::Unavailable(
                "no etcd endpoints configured".to_string(),
            ));
        }
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(options.connect_timeout_ms))
            .with_timeout(Duration::from_millis(options.request_timeout_ms))
            .with_keep_alive(
                Duration::from_millis(options.request_timeout_ms),
                Duration::from_millis(options.request_timeout_ms),
            );
        let connect = Client::connect(options.endpoints.clone(), Some(connect_options));
        let client =
            tokio::time::timeout(Duration::from_millis(options.connect_timeout_ms), connect)
                .await
                .map_err(|_| {
                    MetadataError::Unavailable(format!(
                        "connecting to etcd {:?} timed out after {} ms",
                        options.endpoints, options.connect_timeout_ms
                    ))
                })?
                .map_err(unavailable)?;
        Ok(Self {
            client,
            request_timeout: Duration::from_millis(options.request_timeout_ms),
            key_prefix: options.key_prefix,
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.key_prefix, key)
    }

    fn relative_key(&self, key: &[u8]) -> Result<String, MetadataError> {
        let key = std::str::from_utf8(key)
            .map_err(|_| MetadataError::Corrupt("etcd returned a non-UTF-8 key".to_string()))?;
        Ok(key
            .strip_prefix(self.key_prefix.as_str())
            .unwrap_or(key)
            .to_string())
    }

    fn convert(&self, key_value: &etcd_client::KeyValue) -> Result<KeyValue, MetadataError> {
        Ok(KeyValue {
            key: self.relative_key(key_value.key())?,
            value: key_value.value().to_vec(),
            mod_revision: key_value.mod_revision(),
            create_revision: key_value.create_revision(),
        })
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, MetadataError> {
        match tokio::time::timeout(self.request_timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(MetadataError::Unavailable(format!(
                "etcd {what} timed out after {} ms",
                self.request_timeout.as_millis()
            ))),
        }
    }
}

fn is_lease_not_found(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        // The keep-alive call reports an unknown lease this way.
        etcd_client::Error::LeaseKeepAliveError(message) => message.contains("lease not found"),
        _ => false,
    }
}

#[async_trait]
impl MetadataStore for EtcdMetadataStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetadataError> {
        let mut kv = self.client.kv_client();
        let response = self
            .bounded("get", kv.get(self.full_key(key), None))
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| self.convert(kv))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError> {
        let mut kv = self.client.kv_client();
        let response = self
            .bounded(
                "range",
                kv.get(self.full_key(prefix), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        response.kvs().iter().map(|kv| self.convert(kv)).collect()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError> {
        let mut kv = self.client.kv_client();
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        let result = match tokio::time::timeout(
            self.request_timeout,
            kv.put(self.full_key(key), value, options),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                return Err(MetadataError::Unavailable(format!(
                    "etcd put timed out after {} ms",
                    self.request_timeout.as_millis()
                )))
            }
        };
        match result {
            Ok(response) => Ok(response
                .header()
                .map(|header| header.revision())
                .unwrap_or(0)),
            Err(error) if is_lease_not_found(&error) => {
                Err(MetadataError::LeaseExpired(lease.unwrap_or_default()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, MetadataError> {
        let mut kv = self.client.kv_client();
        let response = self
            .bounded("delete", kv.delete(self.full_key(key), None))
            .await?;
        Ok(response.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError> {
        let mut kv = self.client.kv_client();
        let response = self
            .bounded(
                "delete_prefix",
                kv.delete(
                    self.full_key(prefix),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            )
            .await?;
        Ok(u64::try_from(response.deleted()).unwrap_or(0))
    }

    async fn commit(&self, transaction: Transaction) -> Result<bool, MetadataError> {
        let compares: Vec<etcd_client::Compare> = transaction
            .compares
            .iter()
            .map(|compare| match compare {
                Compare::ModRevisionEquals(key, revision) => etcd_client::Compare::mod_revision(
                    self.full_key(key),
                    CompareOp::Equal,
                    *revision,
                ),
                // A key that does not exist has version 0.
                Compare::Absent(key) => {
                    etcd_client::Compare::version(self.full_key(key), CompareOp::Equal, 0)
                }
                Compare::ValueEquals(key, value) => {
                    etcd_client::Compare::value(self.full_key(key), CompareOp::Equal, value.clone())
                }
            })
            .collect();
        let mut operations: Vec<TxnOp> = Vec::new();
        for put in transaction.puts {
            let options = put.lease.map(|lease| PutOptions::new().with_lease(lease));
            operations.push(TxnOp::put(self.full_key(&put.key), put.value, options));
        }
        for key in transaction.deletes {
            operations.push(TxnOp::delete(self.full_key(&key), None));
        }
        // etcd treats a missing key as value "" for a value compare; require
        // existence explicitly so ValueEquals means "exists and equals".
        let mut compares = compares;
        for compare in &transaction.compares {
            if let Compare::ValueEquals(key, _) = compare {
                compares.push(etcd_client::Compare::version(
                    self.full_key(key),
                    CompareOp::Greater,
                    0,
                ));
            }
        }
        let txn = Txn::new().when(compares).and_then(operations);
        let mut kv = self.client.kv_client();
        let result = match tokio::time::timeout(self.request_timeout, kv.txn(txn)).await {
            Ok(result) => result,
            Err(_) => {
                return Err(MetadataError::Unavailable(format!(
                    "etcd transaction timed out after {} ms",
                    self.request_timeout.as_millis()
                )))
            }
        };
        match result {
            Ok(response) => Ok(response.succeeded()),
            Err(error) if is_lease_not_found(&error) => {
                Err(MetadataError::Conflict(error.to_string()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError> {
        // etcd leases have whole-second TTLs; round up so a lease never
        // lives shorter than asked.
        let ttl_seconds = i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let response = self
            .bounded("lease grant", lease.grant(ttl_seconds, None))
            .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease_id: LeaseId) -> Result<u64, MetadataError> {
        let mut lease = self.client.lease_client();
        let request_timeout = self.request_timeout;
        let call = async move {
            let (mut keeper, mut stream) = lease.keep_alive(lease_id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        let response = match tokio::time::timeout(request_timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) if is_lease_not_found(&error) => {
                return Err(MetadataError::LeaseExpired(lease_id))
            }
            Ok(Err(error)) => return Err(unavailable(error)),
            Err(_) => {
                return Err(MetadataError::Unavailable(format!(
                    "etcd lease keep-alive timed out after {} ms",
                    request_timeout.as_millis()
                )))
            }
        };
        match response {
            Some(response) if response.ttl() > 0 => {
                Ok(u64::try_from(response.ttl()).unwrap_or(0) * 1000)
            }
            Some(_) => Err(MetadataError::LeaseExpired(lease_id)),
            None => Err(MetadataError::Unavailable(
                "etcd closed the lease keep-alive stream".to_string(),
            )),
        }
    }

    async fn revoke(&self, lease_id: LeaseId) -> Result<(), MetadataError> {
        let mut lease = self.client.lease_client();
        match tokio::time::timeout(self.request_timeout, lease.revoke(lease_id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) if is_lease_not_found(&error) => Ok(()),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(MetadataError::Unavailable(format!(
                "etcd lease revoke timed out after {} ms",
                self.request_timeout.as_millis()
            ))),
        }
    }

    async fn time_to_live(&self, lease_id: LeaseId) -> Result<Option<u64>, MetadataError> {
        let mut lease = self.client.lease_client();
        let result =
            tokio::time::timeout(self.request_timeout, lease.time_to_live(lease_id, None)).await;
        match result {
            Ok(Ok(response)) if response.ttl() > 0 => {
                Ok(Some(u64::try_from(response.ttl()).unwrap_or(0) * 1000))
            }
            Ok(Ok(_)) => Ok(None),
            Ok(Err(error)) if is_lease_not_found(&error) => Ok(None),
            Ok(Err(error)) => Err(unavailable(error)),
            Err(_) => Err(MetadataError::Unavailable(format!(
                "etcd lease time-to-live timed out after {} ms",
                self.request_timeout.as_millis()
            ))),
        }
    }

    fn backend_name(&self) -> &'static str {
        "etcd"
    }
}
