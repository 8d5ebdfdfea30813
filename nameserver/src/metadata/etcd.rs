//! [`MetadataStore`] backed by etcd (the production backend).
//!
//! The client's channel reconnects by itself after etcd restarts; every call
//! is bounded by `request_timeout_ms` so a hung etcd turns into
//! `Unavailable` instead of a stuck request. Keys live under a prefix
//! (`/sluice/v1/` by default).
//!
//! TLS, client certificates and etcd's own authentication are set up in
//! `etcd_connect.rs`; the client in use is replaced when its TLS files
//! rotate (`etcd_rotation.rs`), so every request takes the current one.

use super::etcd_connect::Connector;
use super::etcd_credentials::EtcdSecurity;
use super::etcd_refusal::chain;
use super::etcd_rotation::{follow_tls_files, ClientSlot};
use super::{
    Compare, KeyValue, LeaseId, MetadataError, MetadataStore, Transaction, WatchEvent, WatchEvents,
    WATCH_CHANNEL_EVENTS,
};
use async_trait::async_trait;
use etcd_client::{
    Client, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use sluice_service::WatchedFiles;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The key prefix every Sluice key lives under in etcd.
pub const DEFAULT_KEY_PREFIX: &str = "/sluice/v1/";

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub key_prefix: String,
    /// TLS and authentication (none by default: plaintext).
    pub security: EtcdSecurity,
}

/// etcd-backed metadata store.
#[derive(Clone)]
pub struct EtcdMetadataStore {
    /// The client in use: replaced when the TLS files rotate
    /// (`etcd_rotation.rs`).
    client: Arc<ClientSlot>,
    request_timeout: Duration,
    key_prefix: String,
}

fn unavailable(error: etcd_client::Error) -> MetadataError {
    MetadataError::Unavailable(chain(&error))
}

impl EtcdMetadataStore {
    /// Builds the client (see `etcd_connect.rs`): plaintext connects
    /// lazily, so this succeeds while etcd is still down; with TLS or a
    /// user, settings etcd refuses are an error naming the cause.
    pub async fn connect(options: EtcdOptions) -> Result<Self, MetadataError> {
        if options.endpoints.is_empty() {
            return Err(MetadataError::Unavailable(
                "no etcd endpoints configured".to_string(),
            ));
        }
        let connector = Connector::new(
            options.endpoints.clone(),
            Duration::from_millis(options.connect_timeout_ms),
            Duration::from_millis(options.request_timeout_ms),
            options.key_prefix.clone(),
            options.security.clone(),
        )
        .map_err(|error| MetadataError::Unavailable(error.to_string()))?;
        // Stamped before the files are read, so a change during the read
        // is seen at the next look.
        let files = WatchedFiles::new(
            options.security.tls_files(),
            Duration::from_millis(options.security.tls_reload_check_interval_ms),
        );
        let client = connector
            .first_client()
            .await
            .map_err(|error| MetadataError::Unavailable(error.to_string()))?;
        let slot = Arc::new(ClientSlot::new(client));
        if options.security.is_tls() {
            tokio::spawn(follow_tls_files(Arc::downgrade(&slot), connector, files));
        }
        Ok(Self {
            client: slot,
            request_timeout: Duration::from_millis(options.request_timeout_ms),
            key_prefix: options.key_prefix,
        })
    }

    /// The client for a request starting now.
    fn client(&self) -> Arc<Client> {
        self.client.get()
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

    /// Runs `attempt` until it succeeds, fails in a way that must not be
    /// retried, or `request_timeout` (the bound on the whole call, retries
    /// included) has passed. With several endpoints the channel balances
    /// over them; a request that met a dead member fails and is sent again,
    /// and the balancer then prefers the members it can reach.
    async fn call<T, F, Fut>(
        &self,
        what: &str,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // A request etcd forwarded to a leader that just died is never
            // answered (etcd gives up on it only after its own ~7 s
            // timeout); an idempotent call abandons such an attempt early
            // and sends it again, by then to the new leader.
            let attempt_deadline = match retry {
                Retry::Idempotent => deadline.min(
                    tokio::time::Instant::now()
                        + (self.request_timeout / ATTEMPTS_PER_IDEMPOTENT_CALL)
                            .max(Duration::from_millis(MIN_ATTEMPT_TIMEOUT_MS)),
                ),
                Retry::NotApplied => deadline,
            };
            let error = match tokio::time::timeout_at(attempt_deadline, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_) if attempt_deadline < deadline => {
                    tracing::debug!(what, attempts, "etcd call unanswered; sending it again");
                    continue;
                }
                Err(_) => {
                    return Err(CallError::TimedOut(format!(
                        "etcd {what} timed out after {} ms ({attempts} attempts)",
                        self.request_timeout.as_millis()
                    )))
                }
            };
            let backoff = Duration::from_millis(RETRY_BACKOFF_MS);
            if !retry.allows(&error) || tokio::time::Instant::now() + backoff >= deadline {
                return Err(CallError::Etcd(error));
            }
            tracing::debug!(%error, what, attempts, "etcd call failed; retrying");
            tokio::time::sleep(backoff).await;
        }
    }

    async fn bounded<T, F, Fut>(
        &self,
        what: &str,
        retry: Retry,
        attempt: F,
    ) -> Result<T, MetadataError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call(what, retry, attempt)
            .await
            .map_err(CallError::into_unavailable)
    }
}

impl EtcdMetadataStore {
    /// Passes a watch's events on until the watch breaks, the consumer is
    /// gone, or it falls [`WATCH_CHANNEL_EVENTS`] behind; dropping the
    /// sender tells the consumer to watch again.
    async fn forward_watch(
        &self,
        mut stream: etcd_client::WatchStream,
        sender: tokio::sync::mpsc::Sender<WatchEvent>,
    ) {
        loop {
            let response = tokio::select! {
                response = stream.message() => response,
                _ = sender.closed() => return,
            };
            let response = match response {
                Ok(Some(response)) if !response.canceled() => response,
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "etcd watch broke");
                    return;
                }
            };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = self.relative_key(kv.key()) else {
                    continue;
                };
                let event = match event.event_type() {
                    EventType::Put => WatchEvent::Put(key),
                    EventType::Delete => WatchEvent::Delete(key),
                };
                if sender.try_send(event).is_err() {
                    return;
                }
            }
        }
    }
}

/// Pause between attempts of one call, so a member that just died is not
/// hammered while the channel notices.
const RETRY_BACKOFF_MS: u64 = 100;
/// An idempotent call's budget (`request_timeout_ms`) is split into this
/// many attempts at most, so one unanswered attempt leaves room for more.
const ATTEMPTS_PER_IDEMPOTENT_CALL: u32 = 4;
/// Shortest time one attempt is given.
const MIN_ATTEMPT_TIMEOUT_MS: u64 = 250;

/// Which failures a call may be repeated after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and writes whose repetition changes nothing (get, range, put
    /// of the same value, delete, lease keep-alive/revoke/time-to-live,
    /// grant, whose extra lease would only expire): any transient failure.
    Idempotent,
    /// Transactions: repeating one whose first attempt was applied would
    /// report a failed compare for a write that happened, so only failures
    /// where the request cannot have reached etcd's log are repeated (the
    /// rule etcd's own Go client applies to mutating calls).
    NotApplied,
}

impl Retry {
    fn allows(self, error: &etcd_client::Error) -> bool {
        match self {
            Retry::Idempotent => is_transient(error),
            Retry::NotApplied => was_not_applied(error),
        }
    }
}

/// Connection-level or leader-election failures: another attempt (maybe
/// on another member) can succeed. `Cancelled` is what a call gets when
/// the connection it rode closes under it (the member died mid-call:
/// "operation was canceled ... connection closed", seen in CI).
fn is_transient(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
            ) && !status.message().contains("lease not found")
        }
        etcd_client::Error::LeaseKeepAliveError(message) => !message.contains("lease not found"),
        _ => false,
    }
}

/// The request was refused before etcd could have proposed it: no
/// connection could be made, or the member had no leader to forward to.
fn was_not_applied(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().to_ascii_lowercase();
            status.code() == tonic::Code::Unavailable
                && (message.contains("connect")
                    || message.contains("connection refused")
                    || message.contains("no leader")
                    || message.contains("not ready"))
        }
        _ => false,
    }
}

enum CallError {
    TimedOut(String),
    Etcd(etcd_client::Error),
}

impl CallError {
    fn into_unavailable(self) -> MetadataError {
        match self {
            CallError::TimedOut(message) => MetadataError::Unavailable(message),
            CallError::Etcd(error) => unavailable(error),
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
        let full_key = self.full_key(key);
        let response = self
            .bounded("get", Retry::Idempotent, || {
                let mut kv = self.client().kv_client();
                let full_key = full_key.clone();
                async move { kv.get(full_key, None).await }
            })
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| self.convert(kv))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError> {
        let full_prefix = self.full_key(prefix);
        let response = self
            .bounded("range", Retry::Idempotent, || {
                let mut kv = self.client().kv_client();
                let full_prefix = full_prefix.clone();
                async move {
                    kv.get(full_prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        response.kvs().iter().map(|kv| self.convert(kv)).collect()
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError> {
        let full_key = self.full_key(key);
        let result = self
            .call("put", Retry::Idempotent, || {
                let mut kv = self.client().kv_client();
                let options = lease.map(|lease| PutOptions::new().with_lease(lease));
                let full_key = full_key.clone();
                let value = value.clone();
                async move { kv.put(full_key, value, options).await }
            })
            .await;
        match result {
            Ok(response) => Ok(response
                .header()
                .map(|header| header.revision())
                .unwrap_or(0)),
            Err(CallError::Etcd(error)) if is_lease_not_found(&error) => {
                Err(MetadataError::LeaseExpired(lease.unwrap_or_default()))
            }
            Err(error) => Err(error.into_unavailable()),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, MetadataError> {
        let full_key = self.full_key(key);
        let response = self
            .bounded("delete", Retry::Idempotent, || {
                let mut kv = self.client().kv_client();
                let full_key = full_key.clone();
                async move { kv.delete(full_key, None).await }
            })
            .await?;
        Ok(response.deleted() > 0)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError> {
        let full_prefix = self.full_key(prefix);
        let response = self
            .bounded("delete_prefix", Retry::Idempotent, || {
                let mut kv = self.client().kv_client();
                let full_prefix = full_prefix.clone();
                async move {
                    kv.delete(full_prefix, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(u64::try_from(response.deleted()).unwrap_or(0))
    }

    async fn commit_at(&self, transaction: Transaction) -> Result<Option<i64>, MetadataError> {
        let mut compares: Vec<etcd_client::Compare> = transaction
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
                // A missing key has create revision 0, which no real
                // revision equals, so this also requires existence.
                Compare::CreateRevisionEquals(key, revision) => {
                    etcd_client::Compare::create_revision(
                        self.full_key(key),
                        CompareOp::Equal,
                        *revision,
                    )
                }
            })
            .collect();
        // etcd treats a missing key as value "" for a value compare; require
        // existence explicitly so ValueEquals means "exists and equals".
        for compare in &transaction.compares {
            if let Compare::ValueEquals(key, _) = compare {
                compares.push(etcd_client::Compare::version(
                    self.full_key(key),
                    CompareOp::Greater,
                    0,
                ));
            }
        }
        let mut operations: Vec<TxnOp> = Vec::new();
        for put in transaction.puts {
            let options = put.lease.map(|lease| PutOptions::new().with_lease(lease));
            operations.push(TxnOp::put(self.full_key(&put.key), put.value, options));
        }
        for key in transaction.deletes {
            operations.push(TxnOp::delete(self.full_key(&key), None));
        }
        let txn = Txn::new().when(compares).and_then(operations);
        let result = self
            .call("transaction", Retry::NotApplied, || {
                let mut kv = self.client().kv_client();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await;
        match result {
            // A transaction's header revision is the store's revision after
            // it: the mod revision of the keys it wrote.
            Ok(response) if response.succeeded() => Ok(Some(
                response
                    .header()
                    .map(|header| header.revision())
                    .unwrap_or(0),
            )),
            Ok(_) => Ok(None),
            Err(CallError::Etcd(error)) if is_lease_not_found(&error) => {
                Err(MetadataError::Conflict(error.to_string()))
            }
            Err(error) => Err(error.into_unavailable()),
        }
    }

    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError> {
        // etcd leases have whole-second TTLs; round up so a lease never
        // lives shorter than asked.
        let ttl_seconds = i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX);
        let response = self
            .bounded("lease grant", Retry::Idempotent, || {
                let mut lease = self.client().lease_client();
                async move { lease.grant(ttl_seconds, None).await }
            })
            .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease_id: LeaseId) -> Result<u64, MetadataError> {
        let result = self
            .call("lease keep-alive", Retry::Idempotent, || {
                let mut lease = self.client().lease_client();
                async move {
                    let (mut keeper, mut stream) = lease.keep_alive(lease_id).await?;
                    keeper.keep_alive().await?;
                    match stream.message().await? {
                        Some(response) => Ok(response),
                        // Retried like any broken stream.
                        None => Err(etcd_client::Error::LeaseKeepAliveError(
                            "etcd closed the lease keep-alive stream".to_string(),
                        )),
                    }
                }
            })
            .await;
        match result {
            Ok(response) if response.ttl() > 0 => {
                Ok(u64::try_from(response.ttl()).unwrap_or(0) * 1000)
            }
            Ok(_) => Err(MetadataError::LeaseExpired(lease_id)),
            Err(CallError::Etcd(error)) if is_lease_not_found(&error) => {
                Err(MetadataError::LeaseExpired(lease_id))
            }
            Err(error) => Err(error.into_unavailable()),
        }
    }

    async fn revoke(&self, lease_id: LeaseId) -> Result<(), MetadataError> {
        let result = self
            .call("lease revoke", Retry::Idempotent, || {
                let mut lease = self.client().lease_client();
                async move { lease.revoke(lease_id).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(CallError::Etcd(error)) if is_lease_not_found(&error) => Ok(()),
            Err(error) => Err(error.into_unavailable()),
        }
    }

    async fn time_to_live(&self, lease_id: LeaseId) -> Result<Option<u64>, MetadataError> {
        let result = self
            .call("lease time-to-live", Retry::Idempotent, || {
                let mut lease = self.client().lease_client();
                async move { lease.time_to_live(lease_id, None).await }
            })
            .await;
        match result {
            Ok(response) if response.ttl() > 0 => {
                Ok(Some(u64::try_from(response.ttl()).unwrap_or(0) * 1000))
            }
            Ok(_) => Ok(None),
            Err(CallError::Etcd(error)) if is_lease_not_found(&error) => Ok(None),
            Err(error) => Err(error.into_unavailable()),
        }
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchEvents, MetadataError> {
        let full_prefix = self.full_key(prefix);
        let mut client = self.client().watch_client();
        let options = WatchOptions::new().with_prefix();
        let established = async {
            let mut stream = client.watch(full_prefix, Some(options)).await?;
            // Events count from the watch's creation: wait for etcd to
            // confirm it, so a consumer re-reading after this call misses
            // nothing.
            match stream.message().await? {
                Some(response) if response.created() && !response.canceled() => Ok(stream),
                _ => Err(etcd_client::Error::WatchError(
                    "etcd did not create the watch".to_string(),
                )),
            }
        };
        let stream = tokio::time::timeout(self.request_timeout, established)
            .await
            .map_err(|_| MetadataError::Unavailable("etcd watch: no answer".to_string()))?
            .map_err(unavailable)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_CHANNEL_EVENTS);
        let store = self.clone();
        tokio::spawn(async move { store.forward_watch(stream, sender).await });
        Ok(receiver)
    }

    fn backend_name(&self) -> &'static str {
        "etcd"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn a_call_cut_off_with_its_connection_is_repeated_only_when_idempotent() {
        let cut = status(tonic::Code::Cancelled, "operation was canceled");
        assert!(Retry::Idempotent.allows(&cut));
        // A transaction may have reached the log before the connection
        // closed: its outcome is unknown, so it is not sent again.
        assert!(!Retry::NotApplied.allows(&cut));
    }

    #[test]
    fn refused_before_the_log_is_repeated_for_every_call() {
        let refused = status(tonic::Code::Unavailable, "etcdserver: no leader");
        assert!(Retry::Idempotent.allows(&refused));
        assert!(Retry::NotApplied.allows(&refused));
    }

    #[test]
    fn an_unknown_lease_and_a_failed_precondition_are_final() {
        let lease = status(
            tonic::Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert!(!Retry::Idempotent.allows(&lease));
        let lease_unavailable = status(tonic::Code::Unavailable, "requested lease not found");
        assert!(!Retry::Idempotent.allows(&lease_unavailable));
        let invalid = status(
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided",
        );
        assert!(!Retry::Idempotent.allows(&invalid));
        assert!(!Retry::NotApplied.allows(&invalid));
    }
}
