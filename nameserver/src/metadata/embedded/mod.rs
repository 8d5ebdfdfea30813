//! In-process [`MetadataStore`] for `sluice dev`: the keys in memory (an
//! ordered index with a global revision, [`state`]), leases with deadlines
//! ([`leases`]), and the non-leased keys in a redb database
//! (`metadata.redb`, [`disk`]) written durably before each write returns.
//!
//! Leased keys are never persisted: their leases would be gone after a
//! restart anyway, and writes that touch only leased keys (registrations,
//! elections) cost no disk IO. An earlier version's `metadata.json` is
//! migrated once at open ([`migrate`]). A damaged or unreadable database
//! is [`MetadataError::Corrupt`] naming the file.
//!
//! Every operation runs on the blocking pool under one lock, start to end:
//! a write is planned, applied in memory and its durable part queued; it
//! returns once a group commit ([`group_commit`]) put it on disk. A caller
//! that gives up (a cancelled request) cannot leave memory and disk apart,
//! and writes reach the disk in revision order. Reads return what memory
//! holds once the newest value they return is durable, so nothing read can
//! vanish in a crash; an absence read can still be a delete whose writer
//! has not been acknowledged yet.

mod disk;
mod group_commit;
mod leases;
mod migrate;
mod state;

use super::{KeyValue, LeaseId, MetadataError, MetadataStore, Put, Transaction, WatchEvents};
use async_trait::async_trait;
use disk::Disk;
use group_commit::{Journal, Step};
use leases::Leases;
use state::{Outcome, State, WriteSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// How often the background task removes expired leases and their keys.
const LEASE_SWEEP_INTERVAL_MS: u64 = 100;

/// The keys, the leases and the queue to disk, guarded together.
struct Inner {
    state: State,
    leases: Leases,
    journal: Journal,
}

impl Inner {
    /// Drops the leases expired at `now` and their keys (memory only:
    /// leased keys are never on disk).
    fn expire(&mut self, now: Instant) {
        let expired = self.leases.take_expired(now);
        self.drop_lease_keys(&expired);
    }

    fn drop_lease_keys(&mut self, leases: &[LeaseId]) {
        if let Some(removal) = self.state.plan_lease_removal(leases) {
            debug_assert_eq!(self.state.disk_part(&removal), None);
            self.state.apply(removal);
        }
    }

    /// Queues the durable part of `write` and applies it; returns the
    /// revision to wait for before acknowledging: everything queued so
    /// far, as the write's compares may rest on any of it.
    fn write(&mut self, write: WriteSet) -> i64 {
        if let Some(durable) = self.state.disk_part(&write) {
            self.journal.queue(durable);
        }
        self.state.apply(write);
        self.journal.queued()
    }
}

/// The lock and the signal that a group commit finished.
struct Shared {
    inner: Mutex<Inner>,
    flushed: Condvar,
}

/// In-memory metadata store persisted in redb, for `sluice dev`.
pub struct EmbeddedMetadataStore {
    shared: Arc<Shared>,
    disk: Arc<Disk>,
}

fn poisoned() -> MetadataError {
    MetadataError::Unavailable(
        "the embedded metadata store failed earlier (a panic); restart".into(),
    )
}

fn stopped(error: &str) -> MetadataError {
    MetadataError::Unavailable(format!(
        "the embedded metadata store stopped after a failed disk write ({error}); restart to reload what is on disk"
    ))
}

/// Waits until revision `needed` (at most the last queued one) is on
/// disk, flushing the queue itself when no one else is.
fn wait_durable<'a>(
    shared: &'a Shared,
    disk: &Disk,
    mut guard: MutexGuard<'a, Inner>,
    needed: i64,
) -> Result<(), MetadataError> {
    let needed = needed.min(guard.journal.queued());
    loop {
        match guard.journal.next_step(needed) {
            Step::Done => return Ok(()),
            Step::Failed(error) => return Err(stopped(&error)),
            Step::Wait => guard = shared.flushed.wait(guard).map_err(|_| poisoned())?,
            Step::Flush(batch) => {
                let next_lease_id = guard.leases.next_id();
                let revision = batch.last().map_or(0, |write| write.revision);
                drop(guard);
                let result = disk
                    .write(&batch, next_lease_id)
                    .map_err(|error| error.to_string());
                // The flush must be recorded even after a panic elsewhere,
                // or its waiters would wait forever.
                guard = shared
                    .inner
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                guard.journal.flushed(revision, result);
                shared.flushed.notify_all();
            }
        }
    }
}

impl EmbeddedMetadataStore {
    /// Opens (creating if needed) the store in `data_dir`, migrating a
    /// `metadata.json` of an earlier version, and starts the lease sweeper,
    /// which stops when the store is dropped.
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<Arc<Self>, MetadataError> {
        let data_dir = data_dir.into();
        let path = data_dir.join(disk::FILE_NAME);
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir).map_err(|error| {
                MetadataError::Unavailable(format!("cannot create {}: {error}", data_dir.display()))
            })?;
            report(migrate::migrate(&data_dir)?, &data_dir);
            Disk::open(&data_dir.join(disk::FILE_NAME))
        })
        .await;
        let (disk, loaded) = match opened {
            Ok(result) => result?,
            // The reader panicked on the file's contents.
            Err(error) => {
                return Err(MetadataError::Corrupt(format!(
                    "{} cannot be read ({error}); move it away to start with empty metadata",
                    path.display()
                )))
            }
        };
        let inner = Inner {
            journal: Journal::durable_at(loaded.revision),
            state: State::loaded(loaded.revision, loaded.entries),
            leases: Leases::starting_at(loaded.next_lease_id),
        };
        let store = Arc::new(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                flushed: Condvar::new(),
            }),
            disk: Arc::new(disk),
        });
        tokio::spawn(sweep_leases(Arc::downgrade(&store.shared)));
        Ok(store)
    }

    /// Runs `operation` on the blocking pool under the lock, after removing
    /// expired leases, then waits until the revision it returns is durable.
    /// It completes even if the caller stops waiting.
    async fn run<T, F>(&self, operation: F) -> Result<T, MetadataError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner, Instant) -> Result<(T, i64), MetadataError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let disk = Arc::clone(&self.disk);
        tokio::task::spawn_blocking(move || {
            let mut inner = shared.inner.lock().map_err(|_| poisoned())?;
            if let Some(error) = inner.journal.failure() {
                return Err(stopped(error));
            }
            let now = Instant::now();
            inner.expire(now);
            let (result, needed) = operation(&mut inner, now)?;
            wait_durable(&shared, &disk, inner, needed)?;
            Ok(result)
        })
        .await
        .map_err(|error| MetadataError::Unavailable(format!("metadata task failed: {error}")))?
    }
}

/// The newest revision among `entries` (what a reader waits for).
fn newest(entries: &[KeyValue]) -> i64 {
    entries
        .iter()
        .map(|entry| entry.mod_revision)
        .max()
        .unwrap_or(0)
}

/// Logs what the migration at open did.
fn report(migration: migrate::Migration, data_dir: &std::path::Path) {
    match migration {
        migrate::Migration::NotNeeded => {}
        migrate::Migration::Migrated { keys } => tracing::info!(
            keys,
            directory = %data_dir.display(),
            "migrated {} into {}; the old file is kept as {}.migrated",
            migrate::LEGACY_FILE_NAME,
            disk::FILE_NAME,
            migrate::LEGACY_FILE_NAME
        ),
        migrate::Migration::LegacyIgnored => tracing::warn!(
            directory = %data_dir.display(),
            "{} is ignored: {} exists and holds the metadata; delete the JSON file",
            migrate::LEGACY_FILE_NAME,
            disk::FILE_NAME
        ),
    }
}

/// For the watch: `None` when the store is gone, `Some(None)` when its
/// revision is still `since`, else the (key, mod revision) pairs under
/// `prefix` now. Memory only: a trigger need not wait for the disk.
fn read_prefix(
    shared: &Weak<Shared>,
    prefix: &str,
    since: i64,
) -> Option<Option<super::embedded_watch::Snapshot>> {
    let shared = shared.upgrade()?;
    let mut inner = shared.inner.lock().ok()?;
    inner.expire(Instant::now());
    let revision = inner.state.revision();
    if revision == since {
        return Some(None);
    }
    Some(Some(super::embedded_watch::Snapshot {
        revision,
        keys: inner.state.mod_revisions(prefix),
    }))
}

/// Every [`LEASE_SWEEP_INTERVAL_MS`], drops expired leases and their keys,
/// until the store is gone.
async fn sweep_leases(shared: Weak<Shared>) {
    let mut interval = tokio::time::interval(Duration::from_millis(LEASE_SWEEP_INTERVAL_MS));
    loop {
        interval.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let swept = tokio::task::spawn_blocking(move || {
            let locked = shared.inner.lock();
            if let Ok(mut inner) = locked {
                inner.expire(Instant::now());
            }
        })
        .await;
        if swept.is_err() {
            break;
        }
    }
}

#[async_trait]
impl MetadataStore for EmbeddedMetadataStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetadataError> {
        let key = key.to_string();
        self.run(move |inner, _| {
            let entry = inner.state.get(&key);
            let needed = entry.as_ref().map_or(0, |entry| entry.mod_revision);
            Ok((entry, needed))
        })
        .await
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError> {
        let prefix = prefix.to_string();
        self.run(move |inner, _| {
            let entries = inner.state.range(&prefix);
            let needed = newest(&entries);
            Ok((entries, needed))
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError> {
        let put = Put {
            key: key.to_string(),
            value,
            lease,
        };
        self.run(move |inner, _| {
            if let Some(id) = lease.filter(|id| !inner.leases.contains(*id)) {
                return Err(MetadataError::LeaseExpired(id));
            }
            let write = inner.state.plan_put(put);
            let revision = write.revision;
            Ok((revision, inner.write(write)))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, MetadataError> {
        let key = key.to_string();
        self.run(move |inner, _| match inner.state.plan_deletes([key]) {
            Some(write) => Ok((true, inner.write(write))),
            None => Ok((false, inner.journal.queued())),
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError> {
        let prefix = prefix.to_string();
        self.run(
            move |inner, _| match inner.state.plan_delete_prefix(&prefix) {
                Some(write) => {
                    let removed = write.changes.len() as u64;
                    Ok((removed, inner.write(write)))
                }
                None => Ok((0, inner.journal.queued())),
            },
        )
        .await
    }

    async fn commit_at(&self, transaction: Transaction) -> Result<Option<i64>, MetadataError> {
        self.run(move |inner, _| {
            let leases = &inner.leases;
            let outcome = inner
                .state
                .plan_transaction(transaction, |id| leases.contains(id))?;
            // A refused or empty transaction answered from state that is not
            // durable yet waits for it too.
            Ok(match outcome {
                Outcome::CompareFailed => (None, inner.journal.queued()),
                Outcome::Nothing => (Some(inner.state.revision()), inner.journal.queued()),
                Outcome::Write(write) => {
                    let revision = write.revision;
                    (Some(revision), inner.write(write))
                }
            })
        })
        .await
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchEvents, MetadataError> {
        let shared = Arc::downgrade(&self.shared);
        let prefix = prefix.to_string();
        let read = move |since: i64| {
            let (shared, prefix) = (shared.clone(), prefix.clone());
            async move {
                tokio::task::spawn_blocking(move || read_prefix(&shared, &prefix, since))
                    .await
                    .ok()
                    .flatten()
            }
        };
        super::embedded_watch::spawn(read).await
    }

    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError> {
        self.run(move |inner, now| Ok((inner.leases.grant(ttl_ms, now), 0)))
            .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<u64, MetadataError> {
        self.run(move |inner, now| {
            let ttl_ms = inner
                .leases
                .keep_alive(lease, now)
                .ok_or(MetadataError::LeaseExpired(lease))?;
            Ok((ttl_ms, 0))
        })
        .await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), MetadataError> {
        self.run(move |inner, _| {
            if inner.leases.remove(lease) {
                inner.drop_lease_keys(&[lease]);
            }
            Ok(((), 0))
        })
        .await
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<u64>, MetadataError> {
        self.run(move |inner, now| Ok((inner.leases.remaining_ms(lease, now), 0)))
            .await
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}
