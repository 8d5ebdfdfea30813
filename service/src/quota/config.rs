//! `[quotas]`: per-principal rate limits, the same section in every
//! service. A key left out means unlimited; 0 is refused at load (a rate
//! of nothing would stop the principal for good: say so with ACLs).
//!
//! ```toml
//! [quotas]
//! window_ms = 1000
//! [quotas.default]
//! requests_per_second = 1000
//! [[quotas.principal]]
//! name = "User:alice"
//! produce_bytes_per_second = 1048576
//! ```
//!
//! A principal's own entry sets the keys it names; the others come from
//! `[quotas.default]`. Super users (`[auth] super_users`: the services'
//! own certificates) are never limited, so traffic between services is
//! never throttled. Quotas are per node, as in Kafka: each server enforces
//! its own share, read from its config.

use crate::ranges::{KeyRange, MAX_COUNT, MAX_DURATION_MS, MAX_SIZE_BYTES};
use serde::{Deserialize, Serialize};
use sluice_acl::Principal;

/// The section's name in every service's TOML file.
pub const SECTION: &str = "quotas";

/// Most `[[quotas.principal]]` entries one config may have.
pub const MAX_PRINCIPAL_QUOTAS: usize = 10_000;

/// Largest rate any `_per_second` key accepts: 1 TiB (or 2^40
/// requests) per second, far beyond any one node.
pub const MAX_RATE_PER_SECOND: u64 = MAX_SIZE_BYTES;

/// `[quotas]`: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// The burst a principal may use at once, as this long at its rate, in
    /// milliseconds. Range: 1 ..= 60,000. Default: 1000.
    pub window_ms: u64,
    /// The longest wait a throttled client is told, in milliseconds (a
    /// debt beyond it is told in several waits). Range: 1 ..= 300,000.
    /// Default: 30,000.
    pub max_throttle_ms: u64,
    /// Principals whose usage is remembered at once; beyond it the idle
    /// ones are forgotten, and while none is idle new principals share one
    /// bucket at the default limits, so a flood of identities can neither
    /// grow memory nor escape the limits. Range: 1 ..= 4,294,967,295.
    /// Default: 100,000.
    pub max_tracked_principals: u64,
    /// `[quotas.default]`: every principal's limits unless its own entry
    /// says otherwise. Default: none (unlimited).
    pub default: QuotaLimits,
    /// `[[quotas.principal]]`: one principal's limits. Default: none.
    pub principal: Vec<PrincipalQuota>,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            window_ms: 1000,
            max_throttle_ms: 30_000,
            max_tracked_principals: 100_000,
            default: QuotaLimits::default(),
            principal: Vec::new(),
        }
    }
}

/// One set of limits; a key left out is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaLimits {
    /// Requests (gRPC calls; a stream counts once) per second, on every
    /// service. Range: 1 ..= 1,099,511,627,776. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Connections open at once (counted when the principal is known,
    /// after the TLS handshake), on every service. Range: 1 ..=
    /// 4,294,967,295. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Produced batch bytes per second (broker only). Range: 1 ..=
    /// 1,099,511,627,776. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_second: Option<u64>,
    /// Fetched batch bytes per second (broker only). Range: 1 ..=
    /// 1,099,511,627,776. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_bytes_per_second: Option<u64>,
}

/// `[[quotas.principal]]`: `name` (`Type:name`, e.g. `User:alice`) and the
/// keys of [`QuotaLimits`] it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrincipalQuota {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_second: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_bytes_per_second: Option<u64>,
}

impl PrincipalQuota {
    pub fn limits(&self) -> QuotaLimits {
        QuotaLimits {
            requests_per_second: self.requests_per_second,
            connections: self.connections,
            produce_bytes_per_second: self.produce_bytes_per_second,
            fetch_bytes_per_second: self.fetch_bytes_per_second,
        }
    }
}

impl QuotaLimits {
    /// `self`'s keys, and `fallback`'s where `self` has none.
    pub fn or(&self, fallback: &QuotaLimits) -> QuotaLimits {
        QuotaLimits {
            requests_per_second: self.requests_per_second.or(fallback.requests_per_second),
            connections: self.connections.or(fallback.connections),
            produce_bytes_per_second: self
                .produce_bytes_per_second
                .or(fallback.produce_bytes_per_second),
            fetch_bytes_per_second: self
                .fetch_bytes_per_second
                .or(fallback.fetch_bytes_per_second),
        }
    }

    /// Each key with its range, spelt `{prefix} key`. A key left out is
    /// listed at its smallest value (always accepted) so that the
    /// example file states its range.
    fn ranges(&self, prefix: &str, bytes_quotas: bool) -> Vec<KeyRange> {
        let rate = |key: &str, value: Option<u64>| {
            KeyRange::new(
                &format!("{prefix} {key}"),
                value.unwrap_or(1),
                1,
                MAX_RATE_PER_SECOND,
            )
        };
        let mut ranges = vec![
            rate("requests_per_second", self.requests_per_second),
            KeyRange::count(
                &format!("{prefix} connections"),
                self.connections.unwrap_or(1),
            ),
        ];
        if bytes_quotas {
            ranges.push(rate(
                "produce_bytes_per_second",
                self.produce_bytes_per_second,
            ));
            ranges.push(rate("fetch_bytes_per_second", self.fetch_bytes_per_second));
        }
        ranges
    }

    fn any(&self) -> bool {
        self != &QuotaLimits::default()
    }
}

impl QuotasConfig {
    /// Every numeric key, spelt `[quotas] key`, `[quotas.default] key` and
    /// `[quotas.principal "User:alice"] key`; the byte rates only where
    /// `bytes_quotas` (brokers: see [`QuotasConfig::cross_checks`]).
    pub fn ranges(&self, bytes_quotas: bool) -> Vec<KeyRange> {
        let mut ranges = vec![
            KeyRange::new("[quotas] window_ms", self.window_ms, 1, 60_000),
            KeyRange::new(
                "[quotas] max_throttle_ms",
                self.max_throttle_ms,
                1,
                300_000.min(MAX_DURATION_MS),
            ),
            KeyRange::new(
                "[quotas] max_tracked_principals",
                self.max_tracked_principals,
                1,
                MAX_COUNT,
            ),
        ];
        ranges.extend(self.default.ranges("[quotas.default]", bytes_quotas));
        for entry in &self.principal {
            let limits = entry.limits();
            if limits.any() {
                let prefix = format!("[quotas.principal {:?}]", entry.name);
                ranges.extend(limits.ranges(&prefix, bytes_quotas));
            }
        }
        ranges
    }

    /// Rules between keys: names are principals, each named once, a
    /// bounded number; `bytes_quotas` is false on services that move no
    /// records (nameserver, store), where produce and fetch quotas would
    /// silently do nothing.
    pub fn cross_checks(&self, bytes_quotas: bool) -> Vec<String> {
        let mut broken = Vec::new();
        if self.principal.len() > MAX_PRINCIPAL_QUOTAS {
            broken.push(format!(
                "[quotas] has {} principal entries; at most {MAX_PRINCIPAL_QUOTAS}",
                self.principal.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for entry in &self.principal {
            if let Err(error) = Principal::new(&entry.name) {
                broken.push(format!("[[quotas.principal]] name: {error}"));
            }
            if !seen.insert(entry.name.as_str()) {
                broken.push(format!(
                    "[[quotas.principal]] {} is named twice",
                    entry.name
                ));
            }
        }
        if !bytes_quotas {
            let entries = std::iter::once(("[quotas.default]".to_string(), self.default.clone()))
                .chain(self.principal.iter().map(|entry| {
                    (
                        format!("[[quotas.principal]] {}", entry.name),
                        entry.limits(),
                    )
                }));
            for (name, limits) in entries {
                if limits.produce_bytes_per_second.is_some()
                    || limits.fetch_bytes_per_second.is_some()
                {
                    broken.push(format!(
                        "{name}: produce_bytes_per_second and fetch_bytes_per_second apply to \
                         brokers only"
                    ));
                }
            }
        }
        broken
    }

    /// `principal`'s limits: its own entry, then the default.
    pub fn limits_of(&self, principal: &str) -> QuotaLimits {
        self.principal
            .iter()
            .find(|entry| entry.name == principal)
            .map_or_else(
                || self.default.clone(),
                |entry| entry.limits().or(&self.default),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::out_of_range;
    use figment::providers::{Format, Serialized, Toml};

    fn load(toml: &str) -> Result<QuotasConfig, String> {
        figment::Figment::from(Serialized::defaults(QuotasConfig::default()))
            .merge(Toml::string(toml))
            .extract::<QuotasConfig>()
            .map_err(|error| error.to_string())
    }

    #[test]
    fn the_defaults_limit_nothing_and_are_in_range() {
        let config = QuotasConfig::default();
        assert_eq!(out_of_range(&config.ranges(true)), Vec::<String>::new());
        assert_eq!(config.cross_checks(false), Vec::<String>::new());
        assert_eq!(config.limits_of("User:alice"), QuotaLimits::default());
    }

    #[test]
    fn a_principal_entry_overrides_the_default_key_by_key() {
        let config = load(
            "window_ms = 500\n\
             [default]\nrequests_per_second = 100\nproduce_bytes_per_second = 10\n\
             [[principal]]\nname = \"User:alice\"\nproduce_bytes_per_second = 1048576\n",
        )
        .expect("loads");
        assert_eq!(config.window_ms, 500);
        let alice = config.limits_of("User:alice");
        assert_eq!(alice.produce_bytes_per_second, Some(1_048_576));
        assert_eq!(alice.requests_per_second, Some(100));
        assert_eq!(
            config.limits_of("User:bob").produce_bytes_per_second,
            Some(10)
        );
        assert_eq!(config.cross_checks(true), Vec::<String>::new());
        assert_eq!(
            config.cross_checks(false).len(),
            2,
            "{:?}",
            config.cross_checks(false)
        );
    }

    #[test]
    fn zero_unknown_keys_bad_names_and_twins_are_refused() {
        let zero = load("[default]\nproduce_bytes_per_second = 0\n").expect("parses");
        assert_eq!(out_of_range(&zero.ranges(true)).len(), 1);
        let zero = load("[[principal]]\nname = \"User:a\"\nconnections = 0\n").expect("parses");
        assert_eq!(
            out_of_range(&zero.ranges(true)),
            ["[quotas.principal \"User:a\"] connections = 0 is outside 1..=4294967295"]
        );
        assert!(load("[default]\nproduce_bytes_per_sec = 1\n").is_err());
        assert!(load("[[principal]]\nname = \"User:a\"\nbogus = 1\n").is_err());
        let twins = load(
            "[[principal]]\nname = \"User:a\"\nconnections = 1\n\
             [[principal]]\nname = \"User:a\"\nconnections = 2\n\
             [[principal]]\nname = \"nobody\"\n",
        )
        .expect("parses");
        assert_eq!(
            twins.cross_checks(true).len(),
            2,
            "{:?}",
            twins.cross_checks(true)
        );
    }

    #[test]
    fn every_setting_at_its_extremes() {
        for range in QuotasConfig::default().ranges(true) {
            let Some(key) = range.key.strip_prefix("[quotas] ") else {
                continue;
            };
            for (value, accepted) in [
                (range.min, true),
                (range.max, true),
                (range.max + 1, false),
                (range.min - 1, false),
            ] {
                let config = load(&format!("{key} = {value}")).expect("parses");
                assert_eq!(
                    out_of_range(&config.ranges(true)).is_empty(),
                    accepted,
                    "{key} = {value}"
                );
            }
        }
    }
}
