//! Credit (permit) accounting of one subscription stream, Pulsar's
//! receiver queue: the broker may only deliver as many messages as the
//! client granted, so what a stream buffers is bounded.
//!
//! A stream opens with `queue_size` permits. Every message the application
//! takes (or the SDK discards) is counted; once half the queue has been
//! taken, that many permits are granted again in one `flow`. Messages
//! granted and not yet taken therefore never exceed `queue_size`.
//!
//! When the application waits on an empty queue, whatever was taken is
//! granted at once ([`CreditWindow::take_all`]): a broker that holds less
//! credit than asked (it caps each consumer's) never leaves the subscriber
//! waiting for a refill threshold it cannot reach.

/// The credit of one stream (one partition, one session).
#[derive(Debug, Clone)]
pub(crate) struct CreditWindow {
    queue_size: u32,
    /// Taken since the last grant.
    taken_since_grant: u32,
}

impl CreditWindow {
    /// A window of `queue_size` messages (at least one).
    pub fn new(queue_size: u32) -> Self {
        Self {
            queue_size: queue_size.max(1),
            taken_since_grant: 0,
        }
    }

    /// Permits sent with `open`.
    pub fn initial_permits(&self) -> u32 {
        self.queue_size
    }

    /// `count` messages left the buffer (taken by the application or
    /// discarded); returns the permits to grant now, if the refill
    /// threshold (half the queue) was reached.
    pub fn taken(&mut self, count: u32) -> Option<u32> {
        self.taken_since_grant = self.taken_since_grant.saturating_add(count);
        if self.taken_since_grant >= self.refill_threshold() {
            Some(std::mem::take(&mut self.taken_since_grant))
        } else {
            None
        }
    }

    /// Everything taken since the last grant, to grant now (the
    /// application is waiting and nothing is buffered).
    pub fn take_all(&mut self) -> Option<u32> {
        (self.taken_since_grant > 0).then(|| std::mem::take(&mut self.taken_since_grant))
    }

    fn refill_threshold(&self) -> u32 {
        (self.queue_size / 2).max(1)
    }
}

/// The queue size of each partition's stream when `receiver_queue_size`
/// messages are shared by `partitions` streams: an equal share, at least
/// one message (so with more partitions than `receiver_queue_size` the
/// total is `partitions` messages).
pub(crate) fn per_partition_queue_size(receiver_queue_size: u32, partitions: usize) -> u32 {
    let partitions = u32::try_from(partitions.max(1)).unwrap_or(u32::MAX);
    (receiver_queue_size / partitions).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a broker that delivers whenever it has permits and an
    /// application that takes one message at a time: the number of
    /// messages granted but not taken never exceeds the queue size, and
    /// the broker never runs dry while the application keeps taking.
    #[test]
    fn outstanding_messages_never_exceed_the_queue() {
        for queue_size in [1u32, 2, 3, 10, 1000] {
            let mut window = CreditWindow::new(queue_size);
            let mut broker_permits = window.initial_permits();
            let mut buffered = 0u32;
            let mut taken_total = 0u32;
            for _ in 0..10_000 {
                // The broker delivers everything it may.
                buffered += broker_permits;
                broker_permits = 0;
                assert!(
                    buffered <= queue_size,
                    "queue {queue_size}: {buffered} buffered"
                );
                assert!(buffered > 0, "queue {queue_size}: the broker ran dry");
                buffered -= 1;
                taken_total += 1;
                if let Some(grant) = window.taken(1) {
                    broker_permits += grant;
                }
            }
            assert_eq!(taken_total, 10_000);
        }
    }

    #[test]
    fn refills_at_half_the_queue() {
        let mut window = CreditWindow::new(10);
        assert_eq!(window.initial_permits(), 10);
        for _ in 0..4 {
            assert_eq!(window.taken(1), None);
        }
        assert_eq!(window.taken(1), Some(5));
        assert_eq!(window.taken(3), None);
        assert_eq!(window.taken(7), Some(10));
        let mut single = CreditWindow::new(0);
        assert_eq!(single.initial_permits(), 1);
        assert_eq!(single.taken(1), Some(1));
    }

    /// A broker that caps credit below half the queue still gets more
    /// once the application has taken everything and waits.
    #[test]
    fn an_idle_application_grants_what_it_took() {
        let broker_cap = 3u32;
        let mut window = CreditWindow::new(100);
        let mut broker_permits = window.initial_permits().min(broker_cap);
        let mut taken_total = 0;
        for _ in 0..50 {
            assert!(broker_permits > 0, "stalled after {taken_total} messages");
            // The broker delivers its permits; the application takes them all.
            let delivered = std::mem::take(&mut broker_permits);
            let mut granted = 0;
            for _ in 0..delivered {
                taken_total += 1;
                granted += window.taken(1).unwrap_or(0);
            }
            // The queue is empty and the application waits.
            granted += window.take_all().unwrap_or(0);
            broker_permits = granted.min(broker_cap);
        }
        assert_eq!(taken_total, 150);
        assert_eq!(window.take_all(), None);
    }

    #[test]
    fn queue_is_shared_by_partitions() {
        assert_eq!(per_partition_queue_size(1000, 1), 1000);
        assert_eq!(per_partition_queue_size(1000, 3), 333);
        assert_eq!(per_partition_queue_size(2, 8), 1);
        assert_eq!(per_partition_queue_size(10, 0), 10);
    }
}
