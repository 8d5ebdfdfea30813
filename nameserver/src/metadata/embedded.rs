//! In-process [`MetadataStore`] for `sluice dev`: a `BTreeMap` with a global
//! revision counter and leases with deadlines.
//!
//! Non-leased keys are written to `metadata.json` in the data directory on
//! every write that changes them (temp file, fsync, rename, fsync dir) and
//! loaded at start, so dev data survives restarts. Leased keys are never
//! persisted: their leases would be gone after a restart anyway. A corrupt
//! file is reported as [`MetadataError::Corrupt`].

use super::{Compare, KeyValue, LeaseId, MetadataError, MetadataStore, Transaction, WatchEvents};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

const FILE_NAME: &str = "metadata.json";
const FILE_VERSION: u32 = 1;
/// How often the background task removes expired leases and their keys.
const LEASE_SWEEP_INTERVAL_MS: u64 = 100;

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    mod_revision: i64,
    create_revision: i64,
    lease: Option<LeaseId>,
}

#[derive(Debug)]
struct Lease {
    ttl_ms: u64,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease_id: LeaseId,
    entries: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
}

#[derive(Serialize, Deserialize)]
struct PersistedEntry {
    key: String,
    value: Vec<u8>,
    mod_revision: i64,
    create_revision: i64,
}

#[derive(Serialize, Deserialize)]
struct PersistedFile {
    version: u32,
    revision: i64,
    next_lease_id: LeaseId,
    entries: Vec<PersistedEntry>,
}

/// In-memory metadata store with file persistence, for `sluice dev`.
pub struct EmbeddedMetadataStore {
    state: Arc<Mutex<State>>,
    data_dir: PathBuf,
}

impl State {
    fn expire_leases(&mut self, now: Instant) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove_lease(id);
        }
    }

    fn remove_lease(&mut self, id: LeaseId) -> bool {
        if self.leases.remove(&id).is_none() {
            return false;
        }
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.lease != Some(id));
        if self.entries.len() != before {
            self.revision += 1;
        }
        true
    }

    fn check_lease(&mut self, lease: Option<LeaseId>) -> Result<(), MetadataError> {
        self.expire_leases(Instant::now());
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(MetadataError::LeaseExpired(id)),
            _ => Ok(()),
        }
    }

    fn put_at(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>, revision: i64) {
        let create_revision = self
            .entries
            .get(key)
            .map(|entry| entry.create_revision)
            .unwrap_or(revision);
        self.entries.insert(
            key.to_string(),
            Entry {
                value,
                mod_revision: revision,
                create_revision,
                lease,
            },
        );
    }

    fn snapshot(&self) -> PersistedFile {
        PersistedFile {
            version: FILE_VERSION,
            revision: self.revision,
            next_lease_id: self.next_lease_id,
            entries: self
                .entries
                .iter()
                .filter(|(_, entry)| entry.lease.is_none())
                .map(|(key, entry)| PersistedEntry {
                    key: key.clone(),
                    value: entry.value.clone(),
                    mod_revision: entry.mod_revision,
                    create_revision: entry.create_revision,
                })
                .collect(),
        }
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::ModRevisionEquals(key, revision) => self
                .entries
                .get(key)
                .is_some_and(|entry| entry.mod_revision == *revision),
            Compare::Absent(key) => !self.entries.contains_key(key),
            Compare::ValueEquals(key, value) => self
                .entries
                .get(key)
                .is_some_and(|entry| &entry.value == value),
            Compare::CreateRevisionEquals(key, revision) => self
                .entries
                .get(key)
                .is_some_and(|entry| entry.create_revision == *revision),
        }
    }
}

fn persist_error(path: &Path, error: impl std::fmt::Display) -> MetadataError {
    MetadataError::Unavailable(format!("cannot write {}: {error}", path.display()))
}

fn write_file(data_dir: &Path, contents: &[u8]) -> Result<(), MetadataError> {
    use std::io::Write;
    let final_path = data_dir.join(FILE_NAME);
    let temporary_path = data_dir.join(format!("{FILE_NAME}.tmp"));
    let mut file =
        std::fs::File::create(&temporary_path).map_err(|e| persist_error(&temporary_path, e))?;
    file.write_all(contents)
        .map_err(|e| persist_error(&temporary_path, e))?;
    file.sync_all()
        .map_err(|e| persist_error(&temporary_path, e))?;
    drop(file);
    std::fs::rename(&temporary_path, &final_path).map_err(|e| persist_error(&final_path, e))?;
    // The rename is only durable once the directory entry is.
    let directory = std::fs::File::open(data_dir).map_err(|e| persist_error(data_dir, e))?;
    directory
        .sync_all()
        .map_err(|e| persist_error(data_dir, e))?;
    Ok(())
}

impl EmbeddedMetadataStore {
    /// Opens (creating if needed) the store in `data_dir` and starts the
    /// lease sweeper, which stops when the store is dropped.
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<Arc<Self>, MetadataError> {
        let data_dir = data_dir.into();
        let load_dir = data_dir.clone();
        let state = tokio::task::spawn_blocking(move || Self::load(&load_dir))
            .await
            .map_err(|error| {
                MetadataError::Unavailable(format!("loader task failed: {error}"))
            })??;
        let store = Arc::new(Self {
            state: Arc::new(Mutex::new(state)),
            data_dir,
        });
        let weak: Weak<Mutex<State>> = Arc::downgrade(&store.state);
        tokio::spawn(async move {
            let mut interval =
                tokio::time::interval(Duration::from_millis(LEASE_SWEEP_INTERVAL_MS));
            loop {
                interval.tick().await;
                let Some(state) = weak.upgrade() else { break };
                state.lock().await.expire_leases(Instant::now());
            }
        });
        Ok(store)
    }

    fn load(data_dir: &Path) -> Result<State, MetadataError> {
        std::fs::create_dir_all(data_dir).map_err(|error| {
            MetadataError::Unavailable(format!("cannot create {}: {error}", data_dir.display()))
        })?;
        let path = data_dir.join(FILE_NAME);
        let contents = match std::fs::read(&path) {
            Ok(contents) => contents,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    next_lease_id: 1,
                    ..State::default()
                })
            }
            Err(error) => {
                return Err(MetadataError::Unavailable(format!(
                    "cannot read {}: {error}",
                    path.display()
                )))
            }
        };
        let file: PersistedFile = serde_json::from_slice(&contents).map_err(|error| {
            MetadataError::Corrupt(format!(
                "{} is not a valid metadata file ({error}); move it away to start empty",
                path.display()
            ))
        })?;
        if file.version != FILE_VERSION {
            return Err(MetadataError::Corrupt(format!(
                "{} has version {}, expected {FILE_VERSION}",
                path.display(),
                file.version
            )));
        }
        let mut entries = BTreeMap::new();
        for entry in file.entries {
            if entry.mod_revision > file.revision || entry.create_revision > entry.mod_revision {
                return Err(MetadataError::Corrupt(format!(
                    "{}: key {:?} has revisions beyond the store revision",
                    path.display(),
                    entry.key
                )));
            }
            entries.insert(
                entry.key,
                Entry {
                    value: entry.value,
                    mod_revision: entry.mod_revision,
                    create_revision: entry.create_revision,
                    lease: None,
                },
            );
        }
        Ok(State {
            revision: file.revision,
            next_lease_id: file.next_lease_id.max(1),
            entries,
            leases: HashMap::new(),
        })
    }

    /// Persists the non-leased keys; called with the state lock held so
    /// files are written in revision order.
    async fn persist(&self, state: &State) -> Result<(), MetadataError> {
        let contents = serde_json::to_vec(&state.snapshot())
            .map_err(|error| MetadataError::Unavailable(format!("cannot encode: {error}")))?;
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || write_file(&data_dir, &contents))
            .await
            .map_err(|error| MetadataError::Unavailable(format!("writer task failed: {error}")))?
    }
}

/// The mod revision of every key under `prefix`, unless the store's
/// revision is still `since` (nothing changed); for the embedded watch.
async fn read_prefix(
    state: &Mutex<State>,
    prefix: &str,
    since: i64,
) -> Option<super::embedded_watch::Snapshot> {
    let mut state = state.lock().await;
    state.expire_leases(Instant::now());
    if state.revision == since {
        return None;
    }
    Some(super::embedded_watch::Snapshot {
        revision: state.revision,
        keys: state
            .entries
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| (key.clone(), entry.mod_revision))
            .collect(),
    })
}

fn to_key_value(key: &str, entry: &Entry) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: entry.value.clone(),
        mod_revision: entry.mod_revision,
        create_revision: entry.create_revision,
    }
}

#[async_trait]
impl MetadataStore for EmbeddedMetadataStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, MetadataError> {
        let mut state = self.state.lock().await;
        state.expire_leases(Instant::now());
        Ok(state.entries.get(key).map(|entry| to_key_value(key, entry)))
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, MetadataError> {
        let mut state = self.state.lock().await;
        state.expire_leases(Instant::now());
        Ok(state
            .entries
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| to_key_value(key, entry))
            .collect())
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<i64, MetadataError> {
        let mut state = self.state.lock().await;
        state.check_lease(lease)?;
        let touches_persisted = lease.is_none()
            || state
                .entries
                .get(key)
                .is_some_and(|entry| entry.lease.is_none());
        state.revision += 1;
        let revision = state.revision;
        state.put_at(key, value, lease, revision);
        if touches_persisted {
            self.persist(&state).await?;
        }
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<bool, MetadataError> {
        let mut state = self.state.lock().await;
        state.expire_leases(Instant::now());
        let Some(removed) = state.entries.remove(key) else {
            return Ok(false);
        };
        state.revision += 1;
        if removed.lease.is_none() {
            self.persist(&state).await?;
        }
        Ok(true)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, MetadataError> {
        let mut state = self.state.lock().await;
        state.expire_leases(Instant::now());
        let keys: Vec<String> = state
            .entries
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, _)| key.clone())
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        for key in &keys {
            state.entries.remove(key);
        }
        state.revision += 1;
        self.persist(&state).await?;
        Ok(keys.len() as u64)
    }

    async fn commit_at(&self, transaction: Transaction) -> Result<Option<i64>, MetadataError> {
        let mut state = self.state.lock().await;
        state.expire_leases(Instant::now());
        if !transaction
            .compares
            .iter()
            .all(|compare| state.compare_holds(compare))
        {
            return Ok(None);
        }
        for put in &transaction.puts {
            if let Some(id) = put.lease {
                if !state.leases.contains_key(&id) {
                    return Err(MetadataError::Conflict(format!(
                        "lease {id} not found for key {:?}",
                        put.key
                    )));
                }
            }
        }
        if transaction.puts.is_empty() && transaction.deletes.is_empty() {
            return Ok(Some(state.revision));
        }
        state.revision += 1;
        let revision = state.revision;
        for key in &transaction.deletes {
            state.entries.remove(key);
        }
        for put in transaction.puts {
            state.put_at(&put.key, put.value, put.lease, revision);
        }
        self.persist(&state).await?;
        Ok(Some(revision))
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchEvents, MetadataError> {
        let state = Arc::downgrade(&self.state);
        let prefix = prefix.to_string();
        let read = move |since: i64| {
            let state = state.clone();
            let prefix = prefix.clone();
            async move { Some(read_prefix(&*state.upgrade()?, &prefix, since).await) }
        };
        super::embedded_watch::spawn(read).await
    }

    async fn grant(&self, ttl_ms: u64) -> Result<LeaseId, MetadataError> {
        let mut state = self.state.lock().await;
        let id = state.next_lease_id;
        state.next_lease_id += 1;
        state.leases.insert(
            id,
            Lease {
                ttl_ms,
                deadline: Instant::now() + Duration::from_millis(ttl_ms),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<u64, MetadataError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        state.expire_leases(now);
        match state.leases.get_mut(&lease) {
            Some(entry) => {
                entry.deadline = now + Duration::from_millis(entry.ttl_ms);
                Ok(entry.ttl_ms)
            }
            None => Err(MetadataError::LeaseExpired(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), MetadataError> {
        let mut state = self.state.lock().await;
        state.remove_lease(lease);
        Ok(())
    }

    async fn time_to_live(&self, lease: LeaseId) -> Result<Option<u64>, MetadataError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        state.expire_leases(now);
        Ok(state.leases.get(&lease).map(|entry| {
            u64::try_from(entry.deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX)
        }))
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}
