//! The etcd client in use, replaced when the `[metadata] tls_*` files
//! change, so a rotated client certificate (or CA) reaches etcd without a
//! restart.
//!
//! Rules:
//! - The files are looked at every `tls_reload_check_interval_ms`
//!   (`sluice_service::WatchedFiles`: size and modification time).
//! - Changed files are built into a new client, which must then answer a
//!   read ([`Connector::probe`]); only then does it replace the client in
//!   use. Files that do not load, or a certificate etcd refuses, keep the
//!   previous client (WARN naming why) and are tried again at the next
//!   look; so is a change met while etcd is unreachable.
//! - Every request after the swap goes through the new client. Requests
//!   and watches already running keep the old client's connection until
//!   they end; a watch that breaks is re-established by its consumer
//!   through the new client, as after an etcd restart. Leases are etcd's:
//!   keep-alives, grants and revokes through the new client act on the
//!   same leases.
//! - The loop ends when the store is dropped.

use super::etcd_connect::{ConnectError, Connector};
use etcd_client::Client;
use sluice_service::{WatchedFiles, RELOAD_CHECK_INTERVAL_RANGE_MS};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

/// The client requests go through now.
pub struct ClientSlot {
    current: RwLock<Arc<Client>>,
}

impl ClientSlot {
    pub fn new(client: Client) -> Self {
        Self {
            current: RwLock::new(Arc::new(client)),
        }
    }

    pub fn get(&self) -> Arc<Client> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn replace(&self, client: Client) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(client);
    }
}

/// Looks at the TLS files until the slot is dropped; `files` were stamped
/// before the client in use was built.
pub async fn follow_tls_files(
    slot: Weak<ClientSlot>,
    connector: Connector,
    mut files: WatchedFiles,
) {
    // Never a busy loop, whatever a caller built the options with (the
    // config refuses values below the range at load).
    let interval = Duration::from_millis(
        connector
            .security
            .tls_reload_check_interval_ms
            .max(*RELOAD_CHECK_INTERVAL_RANGE_MS.start()),
    );
    loop {
        tokio::time::sleep(interval).await;
        let Some(slot) = slot.upgrade() else { return };
        let Some(stamps) = files.changed(Instant::now()) else {
            continue;
        };
        match rebuilt(&connector).await {
            Ok(client) => {
                slot.replace(client);
                files.accept(stamps);
                tracing::info!(
                    cert_file = ?connector.security.tls_cert_file,
                    "etcd TLS files changed; new etcd requests use them"
                );
            }
            Err(error) => tracing::warn!(
                %error,
                "etcd TLS files changed but cannot be used yet; still using the previous ones"
            ),
        }
    }
}

async fn rebuilt(connector: &Connector) -> Result<Client, ConnectError> {
    let client = connector.build().await?;
    connector.probe(&client).await?;
    Ok(client)
}
