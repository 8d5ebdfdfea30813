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
mod audit;
mod auth_config;
mod authentication;
mod authorization;
mod budget;
mod client_cert;
mod client_trust;
mod config;
mod connection;
mod connection_counts;
mod connection_deadline;
mod connection_trust;
mod connections_config;
mod credential_expiry;
mod crypto_provider;
mod documented_ranges;
mod ending_body;
mod file_limit;
mod handshake;
mod jwks;
mod jwt_cache;
mod jwt_config;
#[cfg(any(test, feature = "test-util"))]
pub mod jwt_mint;
mod jwt_ring;
mod jwt_verify;
mod main_wiring;
mod message_progress;
mod metrics_endpoint;
mod peer_connector;
mod peer_tls;
mod plaintext_refusal;
mod principal;
pub mod quota;
mod ranges;
mod request_authorizer;
mod revocable_body;
mod server;
mod server_io;
mod signal;
mod stream_limits;
mod tls;
mod token_auth;
mod watched_files;

pub use acl_refresh::{read_from_nameservers, run as run_acl_refresh};
pub use audit::AuditLayer;
pub use auth_config::{AuthConfig, MAX_SUPER_USERS};
pub use authorization::{AuthorizationLayer, AUDIT_TARGET};
pub use config::{load_config, ConfigError, KeyOrigin, MovedKey, MovedKeyUse, ServiceConfig};
pub use connection::{Connection, ConnectionInfo, REVOKED_CLOSE_GRACE_MS};
pub use connections_config::ConnectionsConfig;
pub use crypto_provider::provider as tls_crypto_provider;
pub use documented_ranges::{
    check_example_config, document_ranges, range_line, UPDATE_CONFIG_DOCS_VARIABLE,
};
pub use file_limit::{raise_open_file_limit, raised_soft_limit, FileLimit};
pub use jwks::KeySet;
pub use jwt_config::{JwtConfig, MAX_JWKS_FILE_BYTES, MAX_JWKS_KEYS};
pub use jwt_verify::{bearer_token, verify as verify_token, JwtPolicy, TokenError, Verified};
pub use main_wiring::{main, Binary, Shutdown};
pub use metrics_endpoint::{metrics_ranges, start_metrics_endpoint, MetricsEndpoint};
pub use peer_tls::{PeerEndpoint, PeerTls};
pub use plaintext_refusal::TLS_REQUIRED_MESSAGE;
pub use principal::{anonymous, principal_of, ANONYMOUS};
pub use quota::{QuotaKind, QuotaLimits, QuotaTable, Quotas, QuotasConfig};
pub use ranges::{out_of_range, KeyRange, MAX_COUNT, MAX_DURATION_MS, MAX_SIZE_BYTES};
pub use request_authorizer::RequestAuthorizer;
pub use server::{
    Incoming, LimitedServer, ServerLimits, ACCEPT_PAUSE_MS, ADDRESS_WARN_INTERVAL_MS,
};
pub use signal::shutdown_signal;
pub use tls::{ServerTls, TlsConfig, TlsError, RELOAD_CHECK_INTERVAL_RANGE_MS};
pub use token_auth::TokenAuthenticator;
pub use watched_files::WatchedFiles;
