//! The worker's lifecycle: connect and bind in [`Application::build`], pull and commit batches
//! in [`Application::run_until_stopped`] until the shutdown token fires, then finish every batch
//! in hand (commit, confirm, ack) and flush before returning.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use async_nats::{Client, Subscriber};
use finalprice_shared::config::{Config, WorkerConfig};
use finalprice_shared::{metrics, nats, presence};
use futures_util::StreamExt;
use prometheus_client::registry::Registry;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::decide::Policy;
use crate::process::{self, BatchContext};
use crate::stats::{PoolCollector, WorkerStats};
use crate::status;

/// How long an idle worker's pull request waits for a first order. Short, because a stopping
/// worker waits it out instead of abandoning a pull the server might still fill.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Failed pulls in a row after which the worker binds its consumer again.
const REBIND_AFTER_FAILURES: u32 = 5;

/// A worker, connected and bound to the shared consumer, not yet pulling.
#[derive(Debug)]
pub struct Application {
    client: Client,
    js: jetstream::Context,
    db: DatabaseConnection,
    stream: stream::Stream,
    /// `ORDERS_DLQ`, whose length the metrics show.
    dead_letters: stream::Stream,
    consumer: PullConsumer,
    config: WorkerConfig,
    /// `nats.request_timeout` bounds one NATS request; a pull may take the idle poll plus two.
    nats: finalprice_shared::config::NatsConfig,
    stats: Arc<WorkerStats>,
    metrics: TcpListener,
    /// Subscribed in `build`, before its JetStream round trips: a built worker already
    /// answers status requests and pings.
    status_requests: Subscriber,
    pings: Subscriber,
}

impl Application {
    /// The NATS client every part of the worker shares.
    pub fn nats_client(&self) -> &Client {
        &self.client
    }

    /// Opens the database pool, connects to NATS and makes sure the stream and the shared
    /// consumer exist as `nats/` defines them. Fails fast when either side is unreachable.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let db = finalprice_db::connect(&config.db).await.with_context(|| {
            format!(
                "cannot open the database {}",
                finalprice_shared::config::redact_url_password(&config.db.url)
            )
        })?;
        let client = nats::connect(&config.nats, "finalprice-worker").await?;
        // Subscribed first: the JetStream calls below are round trips on the same connection,
        // and nats-server handles a connection's messages in order, so once they return it
        // routes status requests and pings here. (`flush` only writes the socket.)
        let status_requests = status::subscribe(&client)
            .await
            .context("cannot subscribe to status requests")?;
        let pings = presence::subscribe(&client)
            .await
            .context("cannot subscribe to pings")?;
        let js = nats::jetstream(client.clone(), &config.nats);
        // Until JetStream answers: nats-server starting, or a cluster electing its leaders. The
        // metrics listener (and its /healthz) is bound only after, so a health check says "not
        // up" meanwhile.
        let (stream, dead_letters, consumer) =
            nats::until_set_up("order streams and workers' consumer", || {
                set_up_streams(&js, &config.nats)
            })
            .await
            .context("is nats-server running with JetStream enabled?")?;
        let metrics = metrics::bind(config.worker.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.worker.metrics_addr))?;
        Ok(Self {
            metrics,
            status_requests,
            pings,
            client,
            js,
            db,
            stream,
            dead_letters,
            consumer,
            config: config.worker.clone(),
            nats: config.nats.clone(),
            stats: Arc::default(),
        })
    }

    /// The counters of this worker, live.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.metrics.local_addr()
    }

    /// Pulls and commits until `shutdown` fires, then drains: batches in hand are committed,
    /// confirmed and acked (bounded by `worker.shutdown_grace`), and the acks flushed.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut registry = Registry::default();
        metrics::ProcessCollector::register(&mut registry);
        metrics::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        self.stats.register(&mut registry);
        registry.register_collector(Box::new(PoolCollector(self.db.clone())));
        tracing::info!(addr = %self.metrics.local_addr()?, "worker metrics on /metrics");
        let metrics_task = tokio::spawn(metrics::serve(
            self.metrics,
            Arc::new(registry),
            shutdown.clone(),
        ));
        let lag_task = tokio::spawn(watch_consumer(
            self.consumer.clone(),
            self.dead_letters.clone(),
            Arc::clone(&self.stats),
            shutdown.clone(),
        ));
        let pings = tokio::spawn(presence::answer_pings(
            self.client.clone(),
            self.pings,
            presence::this_process("finalprice-worker"),
            shutdown.clone(),
        ));
        let status_task = tokio::spawn(status::serve(
            self.client.clone(),
            self.status_requests,
            self.db.clone(),
            self.stream.clone(),
            shutdown.clone(),
        ));

        let context = BatchContext {
            client: self.client.clone(),
            js: self.js.clone(),
            db: self.db.clone(),
            stats: Arc::clone(&self.stats),
            policy: Policy {
                dead_letter_after: self.config.dead_letter_after,
                retry_delay: self.config.retry_delay,
                retry_max_delay: self.config.retry_max_delay,
            },
            commit_timeout: self.config.commit_timeout,
            max_orders: self.config.batch_size,
        };
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let batches = TaskTracker::new();
        tracing::info!(
            batch_size = self.config.batch_size,
            concurrency = self.config.concurrency,
            "worker pulling orders"
        );
        let pull_deadline = IDLE_POLL + self.config.batch_linger + self.nats.request_timeout * 2;
        let mut failures = 0u32;
        let mut consumer = self.consumer.clone();
        while !shutdown.is_cancelled() {
            // A permit first: a batch is only pulled when it can be worked on at once, so no
            // order sits in this process while its ack_wait runs out.
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => permit?,
            };
            // While nats-server is away a pull would only be queued, and sent after the
            // reconnect when this worker has long given up on it: what it then brings waits
            // out its ack_wait. The pull loop's backoff below paces the retries.
            let pulled = if self.client.connection_state() == State::Connected {
                // Bounded as a whole: with nats-server gone a pull can wait on a reply that
                // never comes, and a stopping worker must not wait on it.
                let deadline = Instant::now() + pull_deadline;
                next_batch(&consumer, &self.config, deadline).await
            } else {
                Err("not connected to nats-server".into())
            };
            let batch = match pulled {
                Ok(batch) => {
                    if failures > 0 {
                        tracing::info!(failures, "pulling orders again");
                    }
                    failures = 0;
                    batch
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.stats.pull_failed();
                    tracing::warn!(error = %error, failures, "pulling orders failed; retrying");
                    // A consumer that stays unknown across a leader change (nats-server has lost
                    // durable consumers there before) is made again from its definition;
                    // creating an existing one as defined changes nothing.
                    if failures.is_multiple_of(REBIND_AFTER_FAILURES)
                        && self.client.connection_state() == State::Connected
                    {
                        match tokio::time::timeout(
                            self.nats.request_timeout * 2,
                            nats::ensure_workers_consumer(&self.stream, &self.nats),
                        )
                        .await
                        {
                            Ok(Ok(again)) => {
                                tracing::info!("bound to the workers' consumer again");
                                consumer = again;
                            }
                            Ok(Err(error)) => {
                                tracing::warn!(error = %error, "cannot bind the workers' consumer yet")
                            }
                            Err(_) => tracing::warn!("binding the workers' consumer timed out"),
                        }
                    }
                    let backoff = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            };
            if batch.is_empty() {
                continue;
            }
            let context = context.clone();
            batches.spawn(async move {
                process::handle_batch(&context, batch).await;
                drop(permit);
            });
        }

        tracing::info!(
            in_flight = batches.len(),
            "stopping: finishing batches in hand"
        );
        batches.close();
        if tokio::time::timeout(self.config.shutdown_grace, batches.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace ran out; unfinished orders will be redelivered");
        }
        let _ = tokio::join!(status_task, metrics_task, lag_task, pings);
        // Acks are buffered publishes: without a flush the last ones may never leave.
        match tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "final flush failed"),
            Err(_) => tracing::warn!("final flush timed out"),
        }
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// The order stream, the dead-letter stream and the workers' consumer, as `nats/` defines them.
async fn set_up_streams(
    js: &jetstream::Context,
    config: &finalprice_shared::config::NatsConfig,
) -> Result<(stream::Stream, stream::Stream, PullConsumer), nats::SetupError> {
    let stream = nats::ensure_orders_stream(js, config).await?;
    let dead_letters = nats::ensure_dead_letter_stream(js, config).await?;
    let consumer = nats::ensure_workers_consumer(&stream, config).await?;
    Ok((stream, dead_letters, consumer))
}

/// How often the consumer's backlog is read for the lag gauges.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Keeps `consumer_pending` / `consumer_ack_pending` and `dead_letters` current until
/// `shutdown`.
async fn watch_consumer(
    mut consumer: PullConsumer,
    mut dead_letters: stream::Stream,
    stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LAG_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Bounded, its hand-over included (see `nats::HAND_OVER_WITHIN`), or a stop would wait
        // on it; a reading older than the next tick is of no use to the gauges anyway.
        match tokio::time::timeout(LAG_EVERY, consumer.info()).await {
            Ok(Ok(info)) => stats.consumer_state(info.num_pending, info.num_ack_pending),
            Ok(Err(error)) => tracing::debug!(%error, "consumer info unavailable"),
            Err(_) => tracing::debug!("consumer info not answered in time"),
        }
        match tokio::time::timeout(LAG_EVERY, dead_letters.info()).await {
            Ok(Ok(info)) => stats.dead_letters_held(info.state.messages),
            Ok(Err(error)) => tracing::debug!(%error, "dead-letter stream info unavailable"),
            Err(_) => tracing::debug!("dead-letter stream info not answered in time"),
        }
    }
}

/// Up to `batch_size` orders: whatever is ready now; if nothing is, the first order to arrive
/// plus whatever else arrives within `batch_linger` of it.
///
/// A pull that fails or runs past `deadline` after orders arrived still returns those orders:
/// they are this worker's until their `ack_wait` runs out, so dropping them would leave their
/// shoppers waiting that long for nothing. Only a pull that brought nothing is an error.
async fn next_batch(
    consumer: &PullConsumer,
    config: &WorkerConfig,
    deadline: Instant,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut batch = Vec::new();
    let ready = fetch_ready(consumer, config.batch_size, &mut batch, deadline).await;
    if !batch.is_empty() {
        return Ok(kept_despite(batch, ready));
    }
    ready?;
    let waiting = async {
        let waiting = consumer
            .batch()
            .max_messages(1)
            .expires(IDLE_POLL)
            .messages()
            .await?;
        drain(waiting, &mut batch).await
    };
    let waited = within(deadline, waiting).await;
    if batch.is_empty() {
        return waited.map(|()| batch);
    }
    if !config.batch_linger.is_zero() {
        tokio::time::sleep(config.batch_linger).await;
    }
    let more = match config.batch_size {
        0 | 1 => Ok(()),
        size => fetch_ready(consumer, size - 1, &mut batch, deadline).await,
    };
    Ok(kept_despite(batch, waited.and(more)))
}

/// Adds the orders available right now to `batch`, up to `max` (a no-wait pull: returns at
/// once). On an error or at `deadline`, what arrived before stays in `batch`.
async fn fetch_ready(
    consumer: &PullConsumer,
    max: usize,
    batch: &mut Vec<jetstream::Message>,
    deadline: Instant,
) -> Result<(), async_nats::Error> {
    let pull = async {
        let messages = consumer.fetch().max_messages(max).messages().await?;
        drain(messages, batch).await
    };
    within(deadline, pull).await
}

/// `pull`, given up at `deadline` as a failed pull: with nats-server gone mid-pull no reply
/// and no error may ever come.
async fn within(
    deadline: Instant,
    pull: impl Future<Output = Result<(), async_nats::Error>>,
) -> Result<(), async_nats::Error> {
    tokio::time::timeout_at(deadline, pull)
        .await
        .unwrap_or_else(|_| Err("pull timed out".into()))
}

/// Moves a pull's deliveries into `into` until the pull ends or fails; what arrived before a
/// failure is kept.
async fn drain<T, E>(
    mut deliveries: impl futures_util::Stream<Item = Result<T, E>> + Unpin,
    into: &mut Vec<T>,
) -> Result<(), async_nats::Error>
where
    E: Into<async_nats::Error>,
{
    while let Some(delivery) = deliveries.next().await {
        into.push(delivery.map_err(Into::into)?);
    }
    Ok(())
}

/// The orders of a pull that may have failed after they arrived: logged, and kept.
fn kept_despite<T>(batch: Vec<T>, pulled: Result<(), async_nats::Error>) -> Vec<T> {
    if let Err(error) = pulled {
        tracing::warn!(%error, orders = batch.len(), "pull failed part-way; working on what arrived");
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pull_that_fails_part_way_keeps_what_arrived() {
        let deliveries = futures_util::stream::iter([
            Ok(1),
            Ok(2),
            Err(std::io::Error::other("connection lost")),
            Ok(3),
        ]);
        let mut batch = Vec::new();
        let drained = drain(deliveries, &mut batch).await;
        assert_eq!(batch, [1, 2]);
        assert_eq!(
            drained.as_ref().map_err(ToString::to_string),
            Err("connection lost".to_owned())
        );
        assert_eq!(kept_despite(batch, drained), [1, 2]);
    }

    #[tokio::test]
    async fn a_pull_that_runs_out_of_time_keeps_what_arrived() {
        // One delivery, then silence: nats-server gone mid-pull sends neither a reply nor an error.
        let deliveries = futures_util::stream::iter([Ok::<_, std::io::Error>(1)])
            .chain(futures_util::stream::pending());
        let mut batch = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(20);
        let pulled = within(deadline, drain(deliveries, &mut batch)).await;
        assert_eq!(
            pulled.as_ref().map_err(ToString::to_string),
            Err("pull timed out".to_owned())
        );
        assert_eq!(kept_despite(batch, pulled), [1]);
    }

    #[tokio::test]
    async fn a_pull_that_ends_brings_everything() {
        let deliveries = futures_util::stream::iter([Ok::<_, std::io::Error>(1), Ok(2)]);
        let mut batch = vec![0];
        let drained = drain(deliveries, &mut batch).await;
        assert!(drained.is_ok(), "{drained:?}");
        assert_eq!(batch, [0, 1, 2]);
    }
}
