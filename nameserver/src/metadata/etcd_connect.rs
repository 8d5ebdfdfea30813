//! Builds the etcd client of [`super::EtcdMetadataStore`]: plaintext, or
//! TLS (`[metadata] tls_*`, optionally a client certificate) and etcd's own
//! authentication (`user`, `password_file`).
//!
//! Rules:
//! - Plaintext without a user: the channel connects lazily, so the
//!   nameserver starts while etcd is still down (as before TLS).
//! - With TLS or a user, the new client makes one small read at once
//!   (bounded by `connect_timeout_ms`): a refusal (wrong CA, no or a
//!   refused client certificate, a wrong password) is an error naming the
//!   cause, so a misconfigured nameserver does not start; etcd not
//!   reachable yet is a warning, and requests fail until it is. A failure
//!   the etcd client cannot explain (TLS 1.3 refusals of a client
//!   certificate read as "connection closed") is diagnosed with a
//!   handshake of our own (`etcd_diagnosis.rs`).
//! - Plaintext: the same read runs in the background, only to log an
//!   ERROR naming a TLS etcd behind `http://` endpoints; the client never
//!   falls back from TLS to plaintext or the other way.
//! - With a user, building the client authenticates (etcd's client does so
//!   before it returns); while etcd cannot be reached that is tried again
//!   every [`CONNECT_RETRY_MS`].
//! - Expired authentication tokens are renewed by the client
//!   (`with_auto_token_refresh`).
//! - The password is read once, here; the TLS files every time a client
//!   is built (see `etcd_rotation.rs`).

use super::etcd_credentials::{load_tls, load_user, EtcdSecurity, UserPassword};
use super::etcd_diagnosis::{diagnose, NO_CLIENT_CERTIFICATE};
use super::etcd_refusal::{chain, verdict, Verdict};
use etcd_client::{Client, ConnectOptions, GetOptions};
use std::time::Duration;

/// Pause between attempts to authenticate to an etcd not reachable yet, in
/// milliseconds.
pub const CONNECT_RETRY_MS: u64 = 1_000;

/// Why no client was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// A file, or etcd, refused this configuration: named, not retried.
    Refused(String),
    /// etcd is not reachable now.
    Unreachable(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(message) | ConnectError::Unreachable(message) => {
                f.write_str(message)
            }
        }
    }
}

/// Everything needed to build a client again (after a rotation).
#[derive(Debug, Clone)]
pub struct Connector {
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// The key every probe reads (the key prefix).
    pub probe_key: String,
    pub security: EtcdSecurity,
    user: Option<UserPassword>,
}

impl Connector {
    /// Reads the password file (the TLS files are read by [`Self::build`]).
    pub fn new(
        endpoints: Vec<String>,
        connect_timeout: Duration,
        request_timeout: Duration,
        probe_key: String,
        security: EtcdSecurity,
    ) -> Result<Self, ConnectError> {
        let user = load_user(&security).map_err(ConnectError::Refused)?;
        Ok(Self {
            endpoints,
            connect_timeout,
            request_timeout,
            probe_key,
            security,
            user,
        })
    }

    /// Whether the first client is probed before the store is used (TLS
    /// or a user: settings etcd may refuse). A plaintext one is probed in
    /// the background, only to name a TLS etcd behind `http://` endpoints.
    pub fn probes_first(&self) -> bool {
        self.security.is_tls() || self.user.is_some()
    }

    /// The first client: built (retried while etcd cannot be reached to
    /// authenticate), then probed.
    pub async fn first_client(&self) -> Result<Client, ConnectError> {
        let client = loop {
            match self.build().await {
                Ok(client) => break client,
                Err(ConnectError::Unreachable(error)) => {
                    tracing::warn!(%error, "cannot authenticate to etcd yet; trying again");
                    tokio::time::sleep(Duration::from_millis(CONNECT_RETRY_MS)).await;
                }
                Err(refused) => return Err(refused),
            }
        };
        if !self.probes_first() {
            let connector = self.clone();
            let probed = client.clone();
            tokio::spawn(async move {
                if let Err(ConnectError::Refused(error)) = connector.probe(&probed).await {
                    tracing::error!(%error, "etcd refuses this nameserver's plaintext connection");
                }
            });
            return Ok(client);
        }
        match self.probe(&client).await {
            Ok(()) => tracing::info!(
                endpoints = ?self.endpoints,
                tls = self.security.is_tls(),
                client_certificate = self.security.tls_cert_file.is_some(),
                user = self.user.is_some(),
                "connected to etcd"
            ),
            Err(ConnectError::Unreachable(error)) => tracing::warn!(
                %error,
                "etcd not reachable yet; metadata requests fail until it is"
            ),
            Err(refused) => return Err(refused),
        }
        Ok(client)
    }

    /// A client with the TLS files as they are now.
    pub async fn build(&self) -> Result<Client, ConnectError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.request_timeout, self.request_timeout);
        if let Some(tls) = load_tls(&self.security).map_err(ConnectError::Refused)? {
            options = options.with_tls(tls.options);
        }
        if let Some(user) = &self.user {
            options = options
                .with_user(user.user.clone(), user.password.clone())
                .with_auto_token_refresh(true);
        }
        let connect = Client::connect(self.endpoints.clone(), Some(options));
        let unexplained = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error)) => self.judge(&error),
            Err(_) => ConnectError::Unreachable(format!(
                "connecting to etcd {:?} timed out after {} ms",
                self.endpoints,
                self.connect_timeout.as_millis()
            )),
        };
        Err(self.explain(unexplained).await)
    }

    /// One small read through `client`, bounded by the connect timeout.
    pub async fn probe(&self, client: &Client) -> Result<(), ConnectError> {
        let mut kv = client.kv_client();
        let read = kv.get(
            self.probe_key.clone(),
            Some(GetOptions::new().with_count_only()),
        );
        let unexplained = match tokio::time::timeout(self.connect_timeout, read).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => self.judge(&error),
            Err(_) => ConnectError::Unreachable(format!(
                "etcd {:?} did not answer within {} ms",
                self.endpoints,
                self.connect_timeout.as_millis()
            )),
        };
        Err(self.explain(unexplained).await)
    }

    /// `description`, saying whether a client certificate was presented
    /// (etcd answers none and a refused one alike).
    fn described(&self, description: String) -> String {
        if self.security.is_tls() && self.security.tls_cert_file.is_none() {
            description + NO_CLIENT_CERTIFICATE
        } else {
            description
        }
    }

    /// A failure the etcd client could not explain, diagnosed with a
    /// handshake of our own (`etcd_diagnosis.rs`).
    async fn explain(&self, error: ConnectError) -> ConnectError {
        let ConnectError::Unreachable(unexplained) = error else {
            return error;
        };
        let tls = load_tls(&self.security)
            .ok()
            .flatten()
            .map(|loaded| loaded.rustls);
        let found = diagnose(&self.endpoints, tls, self.connect_timeout).await;
        match found.map(|problem| verdict(&self.described(problem), &self.endpoints)) {
            Some(Verdict::Refused(message)) => ConnectError::Refused(message),
            _ => ConnectError::Unreachable(unexplained),
        }
    }

    fn judge(&self, error: &etcd_client::Error) -> ConnectError {
        match verdict(&self.described(chain(error)), &self.endpoints) {
            Verdict::Refused(message) => ConnectError::Refused(message),
            Verdict::Unreachable(message) => ConnectError::Unreachable(message),
        }
    }
}
