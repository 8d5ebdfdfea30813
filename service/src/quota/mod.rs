//! Per-principal quotas (issue 13): `[quotas]` ([`QuotasConfig`]), the
//! token bucket ([`bucket`]), the table of every principal's buckets
//! ([`table`]), both pure with time passed in; [`Quotas`] is the shared
//! handle holding the clock and the lock; `layer.rs` charges requests per
//! second before a request's body is read.

pub mod bucket;
pub mod config;
pub mod layer;
pub mod table;

pub use bucket::Verdict;
pub use config::{PrincipalQuota, QuotaLimits, QuotasConfig};
pub use table::{QuotaKind, QuotaTable};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A node's quota state, shared by its connections and handlers.
#[derive(Debug, Clone)]
pub struct Quotas {
    table: Arc<Mutex<QuotaTable>>,
    origin: Instant,
}

impl Quotas {
    /// Limits from `config`; `exempt` principals (super users) never
    /// limited.
    pub fn new(config: &QuotasConfig, exempt: impl IntoIterator<Item = String>) -> Self {
        Self {
            table: Arc::new(Mutex::new(QuotaTable::new(config, exempt))),
            origin: Instant::now(),
        }
    }

    /// A server's quotas: `[quotas]`, with `[auth] super_users` (the
    /// services' own certificates) never limited.
    pub fn for_server(config: &QuotasConfig, auth: &crate::AuthConfig) -> Self {
        Self::new(config, auth.super_users.iter().cloned())
    }

    /// No limits.
    pub fn unlimited() -> Self {
        Self::new(&QuotasConfig::default(), [])
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn with<T>(&self, act: impl FnOnce(&mut QuotaTable, Duration) -> T) -> T {
        let now = self.now();
        act(
            &mut self.table.lock().unwrap_or_else(|e| e.into_inner()),
            now,
        )
    }

    /// Whether `principal` may go ahead with `kind` now (not charged).
    pub fn check(&self, principal: &str, kind: QuotaKind) -> Verdict {
        self.with(|table, now| table.check(principal, kind, now))
    }

    /// Charges `units` of `kind` to `principal`.
    pub fn charge(&self, principal: &str, kind: QuotaKind, units: u64) {
        self.with(|table, now| table.charge(principal, kind, units, now));
    }

    /// Check, then charge if admitted.
    pub fn admit(&self, principal: &str, kind: QuotaKind, units: u64) -> Verdict {
        self.with(|table, now| table.admit(principal, kind, units, now))
    }

    /// Whether `principal` has a limit of `kind` at all.
    pub fn limits(&self, principal: &str, kind: QuotaKind) -> bool {
        self.with(|table, _| table.limits(principal, kind))
    }

    /// `principal`'s limits (none for super users).
    pub fn limits_of(&self, principal: &str) -> QuotaLimits {
        self.with(|table, _| table.limits_of(principal))
    }
}

/// The refusal of a throttled request: THROTTLED with the wait in
/// `sluice-retry-after-ms`.
pub fn throttled(principal: &str, kind: QuotaKind, wait_ms: u64) -> sluice_proto::SluiceError {
    sluice_proto::SluiceError::new(
        sluice_proto::v1::ErrorCode::Throttled,
        format!(
            "{principal} is over its quota ({} in [quotas]); retry after {wait_ms} ms",
            kind.key()
        ),
    )
    .with_retry_after_ms(wait_ms)
}
