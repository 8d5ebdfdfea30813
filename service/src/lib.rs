//! `sluice-service`: the process shell of a Sluice service (nameserver,
//! broker, store).
//!
//! - [`load_config`]: typed configuration (defaults, TOML file,
//!   `SLUICE_<SERVICE>_*` variables) with unknown keys refused, naming the
//!   key, and keys of an earlier layout refused with where they went.
//! - [`shutdown_signal`]: ctrl-c or SIGTERM.
//! - [`ServerLimits`]: the tonic server with Sluice's HTTP/2 limits, the
//!   `[connections]` limits ([`ConnectionsConfig`]) and request tracing,
//!   and its listener.
//! - [`raise_open_file_limit`]: the soft limit of open files raised to
//!   the hard limit (done by [`main`], and by the store before it opens
//!   its storage, for `sluice dev`).
//! - [`main`]: a service binary's whole `main` around its `run`.
//! - [`check_example_config`]: the shipped `config/*.toml` state every
//!   numeric key's range, from the same [`KeyRange`]s loading enforces.

mod acl_refresh;
mod auth_config;
mod authorization;
mod budget;
mod config;
mod connection;
mod connection_deadline;
mod connections_config;
mod documented_ranges;
mod file_limit;
mod handshake;
mod main_wiring;
mod message_progress;
mod peer_tls;
mod plaintext_refusal;
mod principal;
mod ranges;
mod request_authorizer;
mod server;
mod server_io;
mod signal;
mod stream_limits;
mod tls;

pub use acl_refresh::{read_from_nameservers, run as run_acl_refresh};
pub use auth_config::{AuthConfig, MAX_SUPER_USERS};
pub use authorization::{AuthorizationLayer, AUDIT_TARGET};
pub use config::{load_config, ConfigError, KeyOrigin, MovedKey, MovedKeyUse, ServiceConfig};
pub use connection::{Connection, ConnectionInfo};
pub use connections_config::ConnectionsConfig;
pub use documented_ranges::{
    check_example_config, document_ranges, range_line, UPDATE_CONFIG_DOCS_VARIABLE,
};
pub use file_limit::{raise_open_file_limit, raised_soft_limit, FileLimit};
pub use main_wiring::{main, Binary, Shutdown};
pub use peer_tls::PeerTls;
pub use plaintext_refusal::TLS_REQUIRED_MESSAGE;
pub use principal::{principal_of, ANONYMOUS};
pub use ranges::{out_of_range, KeyRange, MAX_COUNT, MAX_DURATION_MS, MAX_SIZE_BYTES};
pub use request_authorizer::RequestAuthorizer;
pub use server::{Incoming, LimitedServer, ServerLimits, ACCEPT_PAUSE_MS};
pub use signal::shutdown_signal;
pub use tls::{ServerTls, TlsConfig, TlsError, RELOAD_CHECK_INTERVAL_RANGE_MS};
