//! `sluice-service`: the process shell of a Sluice service (nameserver,
//! broker, store).
//!
//! - [`load_config`]: typed configuration (defaults, TOML file,
//!   `SLUICE_<SERVICE>_*` variables) with unknown keys refused, naming the
//!   key, and keys of an earlier layout refused with where they went.
//! - [`shutdown_signal`]: ctrl-c or SIGTERM.
//! - [`grpc_server`] and [`incoming`]: the tonic server with Sluice's
//!   HTTP/2 limits and request tracing, and its listener.
//! - [`raise_open_file_limit`]: the soft limit of open files raised to
//!   the hard limit (done by [`main`], and by the store before it opens
//!   its storage, for `sluice dev`).
//! - [`main`]: a service binary's whole `main` around its `run`.

mod config;
mod file_limit;
mod main_wiring;
mod server;
mod signal;

pub use config::{load_config, ConfigError, KeyOrigin, MovedKey, MovedKeyUse, ServiceConfig};
pub use file_limit::{raise_open_file_limit, raised_soft_limit, FileLimit};
pub use main_wiring::{main, Binary, Shutdown};
pub use server::{grpc_server, incoming, Incoming};
pub use signal::shutdown_signal;
