//! An open connection's watch on its client certificate (issue 13): it
//! wakes when the server publishes a new client-certificate verifier and
//! when the certificate's `notAfter` passes, and verifies the chain the
//! client presented again then (`client_trust.rs` decides). Polled by the
//! connection (`connection.rs`) whenever it waits for bytes, so an idle
//! connection is looked at too.

use crate::client_trust::{expiry_wait, not_after, verify_chain, ClientTrust, Distrust};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

pub struct TrustWatch {
    chain: Arc<[CertificateDer<'static>]>,
    changes: WatchStream<Arc<ClientTrust>>,
    /// The generation the chain was last verified under (at first, the
    /// one its handshake used).
    checked_generation: u64,
    /// The verifier in force, for the expiry check.
    current: Option<Arc<ClientTrust>>,
    /// When to look at the certificate's expiry next.
    expiry: Option<Pin<Box<Sleep>>>,
}

impl TrustWatch {
    /// Watches `chain`, accepted by a handshake under `generation`, on the
    /// server's `trust` channel.
    pub fn new(
        chain: Arc<[CertificateDer<'static>]>,
        trust: tokio::sync::watch::Receiver<Arc<ClientTrust>>,
        generation: u64,
    ) -> Self {
        let expiry = not_after(&chain).map(|not_after| {
            let wait = expiry_wait(not_after, SystemTime::now());
            Box::pin(tokio::time::sleep_until(Instant::now() + wait))
        });
        Self {
            chain,
            // Yields the verifier in force first: a rotation during the
            // handshake is seen at once.
            changes: WatchStream::new(trust),
            checked_generation: generation,
            current: None,
            expiry,
        }
    }

    /// `Ready(why)` once the chain no longer verifies; otherwise pending,
    /// with this task woken at the next change or expiry.
    pub fn poll_distrust(&mut self, cx: &mut Context<'_>) -> Poll<Distrust> {
        while let Poll::Ready(Some(trust)) = Pin::new(&mut self.changes).poll_next(cx) {
            let changed = trust.generation != self.checked_generation;
            self.checked_generation = trust.generation;
            self.current = Some(trust);
            if changed {
                if let Err(distrust) = self.verify() {
                    return Poll::Ready(distrust);
                }
            }
        }
        let Some(expiry) = self.expiry.as_mut() else {
            return Poll::Pending;
        };
        if expiry.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let still_valid = not_after(&self.chain)
            .map(|not_after| expiry_wait(not_after, SystemTime::now()))
            .filter(|wait| !wait.is_zero());
        if let Some(wait) = still_valid {
            // The wait was capped: look again later.
            expiry.as_mut().reset(Instant::now() + wait);
            let _ = expiry.as_mut().poll(cx);
            return Poll::Pending;
        }
        self.expiry = None;
        match self.verify() {
            Err(distrust) => Poll::Ready(distrust),
            Ok(()) => Poll::Pending,
        }
    }

    fn verify(&self) -> Result<(), Distrust> {
        let Some(verifier) = self.current.as_ref().and_then(|t| t.verifier.as_ref()) else {
            return Ok(());
        };
        verify_chain(&**verifier, &self.chain, UnixTime::now())
    }
}
