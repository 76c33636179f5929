//! Counters of what the worker did, shared lock-free between its tasks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; read with [`WorkerStats::snapshot`].
#[derive(Debug, Default)]
pub struct WorkerStats {
    batches_committed: AtomicU64,
    orders_inserted: AtomicU64,
    orders_already_committed: AtomicU64,
    orders_rejected: AtomicU64,
    batches_failed: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Transactions committed: with batching, fewer than the orders they hold.
    pub batches_committed: u64,
    /// Rows this worker inserted.
    pub orders_inserted: u64,
    /// Deliveries whose row already existed (a redelivery or a second submit).
    pub orders_already_committed: u64,
    /// Orders that can never be written (malformed or invalid).
    pub orders_rejected: u64,
    /// Batches whose transaction failed and were handed back for a later retry.
    pub batches_failed: u64,
}

impl WorkerStats {
    pub(crate) fn batch_committed(&self, inserted: u64, already: u64) {
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
        self.orders_inserted.fetch_add(inserted, Ordering::Relaxed);
        self.orders_already_committed
            .fetch_add(already, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, count: u64) {
        self.orders_rejected.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn batch_failed(&self) {
        self.batches_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            batches_committed: self.batches_committed.load(Ordering::Relaxed),
            orders_inserted: self.orders_inserted.load(Ordering::Relaxed),
            orders_already_committed: self.orders_already_committed.load(Ordering::Relaxed),
            orders_rejected: self.orders_rejected.load(Ordering::Relaxed),
            batches_failed: self.batches_failed.load(Ordering::Relaxed),
        }
    }
}
