//! `finalprice-worker status`: the state of the order path as operators need it — the queue,
//! the consumer's backlog, the dead letters, and which fronts and workers are alive.

use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use finalprice_shared::config::NatsConfig;
use finalprice_shared::messages::Presence;
use finalprice_shared::{nats, presence};

/// How long `status` listens for fronts and workers answering its ping.
const PING_WINDOW: Duration = Duration::from_millis(500);

/// The numbers `status` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Orders in `ORDERS`: waiting for a worker or being committed.
    pub queued: u64,
    pub queued_bytes: u64,
    pub max_queued: i64,
    /// `None`: no worker has created the consumer yet.
    pub consumer: Option<ConsumerState>,
    pub dead_letters: u64,
    pub alive: Vec<Presence>,
}

/// The shared consumer's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerState {
    /// Not yet delivered to any worker (the lag).
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: usize,
    /// Delivered more than once and not yet acked.
    pub redelivered: usize,
    /// Pull requests waiting: idle workers.
    pub waiting: usize,
}

/// Reads the report from NATS.
pub async fn read(config: &NatsConfig) -> anyhow::Result<Report> {
    let client = nats::connect(config, "finalprice-status").await?;
    let js = nats::jetstream(client.clone(), config);
    let orders = nats::orders_stream_config(config)?;
    let dlq = nats::dead_letter_stream_config(config)?;
    // get_stream fetches the stream's info: one round trip per stream, read from the cache.
    let stream = js.get_stream(&orders.name).await?;
    let info = stream.cached_info().clone();
    let consumer = match stream
        .get_consumer::<jetstream::consumer::pull::Config>("workers")
        .await
    {
        Ok(mut consumer) => {
            let info = consumer.info().await?;
            Some(ConsumerState {
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
            })
        }
        Err(_) => None,
    };
    let dead_letters = match js.get_stream(&dlq.name).await {
        Ok(dlq) => dlq.cached_info().state.messages,
        Err(_) => 0,
    };
    let alive = presence::collect(&client, PING_WINDOW)
        .await
        .map_err(|error| anyhow::anyhow!(error))?;
    Ok(Report {
        queued: info.state.messages,
        queued_bytes: info.state.bytes,
        max_queued: info.config.max_messages,
        consumer,
        dead_letters,
        alive,
    })
}

impl Report {
    /// Fronts and workers that answered.
    pub fn count(&self, service: &str) -> usize {
        self.alive.iter().filter(|p| p.service == service).count()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "queue ORDERS:        {} orders ({} bytes), limit {}",
            self.queued, self.queued_bytes, self.max_queued
        );
        match &self.consumer {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "consumer workers:    pending {} (lag), ack pending {}, redelivered {}, idle pulls {}",
                    c.pending, c.ack_pending, c.redelivered, c.waiting
                );
            }
            None => {
                let _ = writeln!(out, "consumer workers:    none yet (no worker has started)");
            }
        }
        let _ = writeln!(out, "dead letters:        {} (just dlq)", self.dead_letters);
        let _ = writeln!(
            out,
            "alive:               {} front(s), {} worker(s)",
            self.count("finalprice-front"),
            self.count("finalprice-worker")
        );
        for presence in &self.alive {
            let up = (Utc::now() - presence.started_at).num_seconds().max(0);
            let _ = writeln!(
                out,
                "  {:<18} {}  v{}  up {}s",
                presence.service, presence.instance, presence.version, up
            );
        }
        out
    }
}
