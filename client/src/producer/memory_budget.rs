//! The producer's memory limit (`memory_limit_bytes`): each record holds
//! its size in permits from enqueue until its batch is acknowledged or
//! failed.

use crate::ClientError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The producer's memory limit: each record holds its size in permits
/// from enqueue until its batch is acknowledged or failed.
pub(super) struct MemoryBudget {
    pub(super) semaphore: Arc<Semaphore>,
    limit_bytes: usize,
}

impl MemoryBudget {
    pub(super) fn new(limit_bytes: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(limit_bytes.min(Semaphore::MAX_PERMITS))),
            limit_bytes,
        }
    }

    /// Takes `bytes` of room if there is some right now.
    pub(super) fn try_acquire(
        &self,
        bytes: usize,
    ) -> Result<Option<OwnedSemaphorePermit>, ClientError> {
        let Some(permits) = u32::try_from(bytes)
            .ok()
            .filter(|_| bytes <= self.limit_bytes)
        else {
            // `acquire` reports the error.
            return Ok(None);
        };
        match self.semaphore.clone().try_acquire_many_owned(permits) {
            Ok(permit) => Ok(Some(permit)),
            Err(tokio::sync::TryAcquireError::NoPermits) => Ok(None),
            Err(tokio::sync::TryAcquireError::Closed) => Err(ClientError::Closed),
        }
    }

    /// Waits up to `timeout` for `bytes` of room.
    pub(super) async fn acquire(
        &self,
        bytes: usize,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, ClientError> {
        let too_large = || {
            ClientError::InvalidArgument(format!(
                "record of {bytes} bytes is larger than the producer's memory_limit_bytes ({})",
                self.limit_bytes
            ))
        };
        if bytes > self.limit_bytes {
            return Err(too_large());
        }
        let permits = u32::try_from(bytes).map_err(|_| too_large())?;
        match tokio::time::timeout(timeout, self.semaphore.clone().acquire_many_owned(permits)).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout {
                what: format!(
                    "waiting for producer memory (memory_limit_bytes = {}; is the cluster accepting writes?)",
                    self.limit_bytes
                ),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    #[cfg(test)]
    pub(super) fn available_bytes(&self) -> usize {
        self.semaphore.available_permits()
    }
}
