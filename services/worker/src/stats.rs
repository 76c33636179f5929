//! What the worker did, as Prometheus metrics: read by `/metrics` and by the tests alike.

use std::time::Duration;

use finalprice_shared::metrics::duration_buckets;
use finalprice_shared::metrics::label_values;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sea_orm::DatabaseConnection;

use crate::error::CommitFailure;

/// The database pool's connections against its size, read at each scrape:
/// `finalprice_worker_db_pool_connections`, `…_idle_connections` and `…_max_connections`.
#[derive(Debug)]
pub(crate) struct PoolCollector(pub(crate) DatabaseConnection);

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(pool) = finalprice_db::pool_state(&self.0) else {
            return Ok(());
        };
        let gauges = [
            (
                "finalprice_worker_db_pool_connections",
                "Database connections open, in use or idle",
                pool.open,
            ),
            (
                "finalprice_worker_db_pool_idle_connections",
                "Open database connections no batch holds",
                pool.idle,
            ),
            (
                "finalprice_worker_db_pool_max_connections",
                "The most database connections the pool opens (db.max_connections)",
                pool.max,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::from(value));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Why a batch was not committed, as a label.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FailureKind {
    Transient,
    Permanent,
}

label_values!(FailureKind {
    Transient => "transient",
    Permanent => "permanent",
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: FailureKind,
}

/// The worker's metrics.
#[derive(Debug)]
pub struct WorkerStats {
    batches_committed: Counter,
    orders_inserted: Counter,
    orders_already_committed: Counter,
    orders_dead_lettered: Counter,
    redeliveries: Counter,
    batches_failed: Family<FailureLabels, Counter>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    dead_letters: Gauge,
    pulls_failed: Counter,
}

impl Default for WorkerStats {
    fn default() -> Self {
        let batches_failed = Family::<FailureLabels, Counter>::default();
        for &kind in FailureKind::ALL {
            drop(batches_failed.get_or_create(&FailureLabels { kind }));
        }
        Self {
            batches_committed: Counter::default(),
            orders_inserted: Counter::default(),
            orders_already_committed: Counter::default(),
            orders_dead_lettered: Counter::default(),
            redeliveries: Counter::default(),
            batches_failed,
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: Histogram::new(duration_buckets()),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
            dead_letters: Gauge::default(),
            pulls_failed: Counter::default(),
        }
    }
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
    /// Orders moved to the dead-letter stream.
    pub orders_rejected: u64,
    /// Batches whose transaction failed and were handed back for a later retry.
    pub batches_failed: u64,
    /// Deliveries that were not the message's first.
    pub redeliveries: u64,
    /// Pulls that failed and were retried.
    pub pulls_failed: u64,
}

impl WorkerStats {
    /// Registers every metric under `finalprice_worker_…`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("finalprice_worker");
        registry.register(
            "batches_committed",
            "Transactions committed (one per batch)",
            self.batches_committed.clone(),
        );
        registry.register(
            "orders_committed",
            "Rows inserted",
            self.orders_inserted.clone(),
        );
        registry.register(
            "orders_already_committed",
            "Deliveries whose row already existed (redelivery or resubmission)",
            self.orders_already_committed.clone(),
        );
        registry.register(
            "orders_dead_lettered",
            "Orders moved to ORDERS_DLQ",
            self.orders_dead_lettered.clone(),
        );
        registry.register(
            "redeliveries",
            "Deliveries that were not a message's first",
            self.redeliveries.clone(),
        );
        registry.register(
            "batches_failed",
            "Batches not committed, by kind of failure",
            self.batches_failed.clone(),
        );
        registry.register(
            "batch_size",
            "Orders per committed batch",
            self.batch_size.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Time to commit one batch",
            self.commit_seconds.clone(),
        );
        registry.register(
            "consumer_pending",
            "Orders in the stream not yet delivered to any worker (lag)",
            self.consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Orders delivered to workers and not yet acked",
            self.consumer_ack_pending.clone(),
        );
        registry.register(
            "dead_letters",
            "Orders in ORDERS_DLQ now, kept for an operator to look at (`just dlq`)",
            self.dead_letters.clone(),
        );
        registry.register(
            "pulls_failed",
            "Pulls that failed (no connection, a consumer leader change, a server gone), each \
             retried after a growing pause",
            self.pulls_failed.clone(),
        );
    }

    pub(crate) fn delivered(&self, redelivered: u64) {
        self.redeliveries.inc_by(redelivered);
    }

    pub(crate) fn batch_committed(&self, inserted: u64, already: u64, took: Duration) {
        self.batches_committed.inc();
        self.orders_inserted.inc_by(inserted);
        self.orders_already_committed.inc_by(already);
        self.batch_size.observe((inserted + already) as f64);
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn pull_failed(&self) {
        self.pulls_failed.inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.orders_dead_lettered.inc();
    }

    pub(crate) fn batch_failed(&self, failure: CommitFailure) {
        let kind = match failure {
            CommitFailure::Transient => FailureKind::Transient,
            CommitFailure::Permanent => FailureKind::Permanent,
        };
        self.batches_failed
            .get_or_create(&FailureLabels { kind })
            .inc();
    }

    pub(crate) fn consumer_state(&self, pending: u64, ack_pending: usize) {
        self.consumer_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.consumer_ack_pending
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    pub(crate) fn dead_letters_held(&self, messages: u64) {
        self.dead_letters
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let failed = |kind| {
            self.batches_failed
                .get_or_create(&FailureLabels { kind })
                .get()
        };
        StatsSnapshot {
            batches_committed: self.batches_committed.get(),
            orders_inserted: self.orders_inserted.get(),
            orders_already_committed: self.orders_already_committed.get(),
            orders_rejected: self.orders_dead_lettered.get(),
            batches_failed: failed(FailureKind::Transient) + failed(FailureKind::Permanent),
            redeliveries: self.redeliveries.get(),
            pulls_failed: self.pulls_failed.get(),
        }
    }
}
