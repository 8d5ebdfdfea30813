//! Typed configuration: defaults, then a TOML file (which must exist when
//! given), then `SLUICE_<SERVICE>_*` environment variables (`__` separates
//! nested keys, e.g. `SLUICE_BROKER_TELEMETRY__LOG_FILTER=debug`).
//!
//! Unknown keys are refused, naming the key: the config structs are
//! `#[serde(deny_unknown_fields, default)]`. Keys of an earlier layout
//! ([`ServiceConfig::MOVED_KEYS`]) are refused with where they went.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_telemetry::TelemetryConfig;
use std::fmt;
use std::path::{Path, PathBuf};

/// A service's configuration struct, as the shell loads and uses it.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Prefix of the environment variables, e.g. `SLUICE_BROKER_`.
    const ENV_PREFIX: &'static str;
    /// Keys of an earlier layout and where they went.
    const MOVED_KEYS: &'static [MovedKey] = &[];

    /// Address the gRPC server binds.
    fn listen_address(&self) -> &str;
    /// The `[telemetry]` section.
    fn telemetry(&self) -> &TelemetryConfig;
    /// Every numeric key with its value and accepted range; loading
    /// refuses the config while any is outside (see [`crate::KeyRange`]).
    fn ranges(&self) -> Vec<crate::KeyRange> {
        Vec::new()
    }
    /// Rules between keys (e.g. a minimum below a maximum), one message per
    /// broken rule; loading refuses the config while any is broken.
    fn cross_checks(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A top-level key that moved into a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovedKey {
    /// The old top-level key, e.g. `subscription_window_messages`.
    pub old: &'static str,
    /// Its section now, e.g. `subscriptions`.
    pub section: &'static str,
    /// Its name in that section, e.g. `window_messages`.
    pub key: &'static str,
}

impl MovedKey {
    /// `[section] key`, as the TOML file spells it.
    pub fn new_location(&self) -> String {
        format!("[{}] {}", self.section, self.key)
    }

    /// The environment variable setting the key where it is now.
    pub fn new_variable(&self, env_prefix: &str) -> String {
        format!(
            "{env_prefix}{}__{}",
            self.section.to_uppercase(),
            self.key.to_uppercase()
        )
    }
}

/// Where a refused old key was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    /// The environment variable, as the old layout spelled it.
    Variable(String),
}

/// An old key found in the file or the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedKeyUse {
    pub moved: MovedKey,
    pub origin: KeyOrigin,
    /// The service's environment prefix (for the new variable's name).
    pub env_prefix: &'static str,
}

impl fmt::Display for MovedKeyUse {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved = &self.moved;
        match &self.origin {
            KeyOrigin::File(path) => write!(
                formatter,
                "{}: `{}` moved to `{}`",
                path.display(),
                moved.old,
                moved.new_location()
            ),
            KeyOrigin::Variable(variable) => write!(
                formatter,
                "{variable}: `{}` moved to `{}` (set {})",
                moved.old,
                moved.new_location(),
                moved.new_variable(self.env_prefix)
            ),
        }
    }
}

/// Why a configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Keys of an earlier layout, each with where it went.
    #[error("{}", join(.0))]
    Moved(Vec<MovedKeyUse>),
    /// Unreadable file, bad TOML, unknown key, wrong type.
    #[error(transparent)]
    Invalid(Box<figment::Error>),
    /// Values outside their key's range or breaking a rule between keys,
    /// one message each naming the key and the range.
    #[error("{}", .0.join("; "))]
    OutOfRange(Vec<String>),
}

fn join(uses: &[MovedKeyUse]) -> String {
    uses.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Invalid(Box::new(error))
    }
}

/// Defaults, then the TOML file at `path` (which must exist when given),
/// then `C::ENV_PREFIX` variables (`__` separates nested keys).
pub fn load_config<C: ServiceConfig>(path: Option<&Path>) -> Result<C, ConfigError> {
    let environment = || Env::prefixed(C::ENV_PREFIX).split("__");
    let moved = moved_keys_in::<C>(path, &Figment::from(environment()));
    if !moved.is_empty() {
        return Err(ConfigError::Moved(moved));
    }
    let mut figment = Figment::from(Serialized::defaults(C::default()));
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    let config: C = figment.merge(environment()).extract()?;
    let mut refused = crate::out_of_range(&config.ranges());
    refused.extend(config.cross_checks());
    if !refused.is_empty() {
        return Err(ConfigError::OutOfRange(refused));
    }
    Ok(config)
}

fn moved_keys_in<C: ServiceConfig>(path: Option<&Path>, environment: &Figment) -> Vec<MovedKeyUse> {
    if C::MOVED_KEYS.is_empty() {
        return Vec::new();
    }
    // An unreadable or malformed file finds nothing here; the load then
    // reports it.
    let file = path.map(|path| (path, Figment::from(Toml::file_exact(path))));
    let mut found = Vec::new();
    for moved in C::MOVED_KEYS {
        if let Some((path, file)) = &file {
            if file.find_value(moved.old).is_ok() {
                found.push(MovedKeyUse {
                    moved: *moved,
                    origin: KeyOrigin::File(path.to_path_buf()),
                    env_prefix: C::ENV_PREFIX,
                });
            }
        }
        if environment.find_value(moved.old).is_ok() {
            found.push(MovedKeyUse {
                moved: *moved,
                origin: KeyOrigin::Variable(format!(
                    "{}{}",
                    C::ENV_PREFIX,
                    moved.old.to_uppercase()
                )),
                env_prefix: C::ENV_PREFIX,
            });
        }
    }
    found
}

#[cfg(test)]
// figment::Jail (which serializes environment changes between tests)
// takes closures returning figment::Error.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        listen_address: String,
        queue: Queue,
        telemetry: TelemetryConfig,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Queue {
        max_bytes: u64,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                listen_address: "127.0.0.1:1".to_string(),
                queue: Queue::default(),
                telemetry: TelemetryConfig::default(),
            }
        }
    }

    impl Default for Queue {
        fn default() -> Self {
            Self { max_bytes: 10 }
        }
    }

    impl ServiceConfig for Example {
        const ENV_PREFIX: &'static str = "SLUICE_EXAMPLE_";
        const MOVED_KEYS: &'static [MovedKey] = &[MovedKey {
            old: "queue_max_bytes",
            section: "queue",
            key: "max_bytes",
        }];

        fn listen_address(&self) -> &str {
            &self.listen_address
        }

        fn telemetry(&self) -> &TelemetryConfig {
            &self.telemetry
        }
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "example.toml",
                "listen_address = \"0.0.0.0:2\"\n[queue]\nmax_bytes = 20\n",
            )?;
            jail.set_env("SLUICE_EXAMPLE_QUEUE__MAX_BYTES", "30");
            let loaded: Example = load_config(Some(Path::new("example.toml"))).expect("loads");
            assert_eq!(loaded.listen_address, "0.0.0.0:2");
            assert_eq!(loaded.queue.max_bytes, 30);
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        figment::Jail::expect_with(|_| {
            let error = load_config::<Example>(Some(Path::new("absent.toml")))
                .expect_err("an explicit path must exist");
            assert!(error.to_string().contains("absent.toml"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("example.toml", "[queue]\nmax_byte = 1\n")?;
            let error = load_config::<Example>(Some(Path::new("example.toml")))
                .expect_err("a misspelt key must not be ignored");
            assert!(error.to_string().contains("max_byte"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn moved_keys_in_the_file_name_their_new_place() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("example.toml", "queue_max_bytes = 1\n")?;
            let error = load_config::<Example>(Some(Path::new("example.toml")))
                .expect_err("an old key must be refused");
            assert_eq!(
                error.to_string(),
                "example.toml: `queue_max_bytes` moved to `[queue] max_bytes`"
            );
            Ok(())
        });
    }

    #[test]
    fn moved_keys_in_the_environment_name_their_new_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_EXAMPLE_QUEUE_MAX_BYTES", "1");
            let error = load_config::<Example>(None).expect_err("an old variable must be refused");
            assert_eq!(
                error.to_string(),
                "SLUICE_EXAMPLE_QUEUE_MAX_BYTES: `queue_max_bytes` moved to `[queue] max_bytes` \
                 (set SLUICE_EXAMPLE_QUEUE__MAX_BYTES)"
            );
            Ok(())
        });
    }
}
