//! The front's side of the order path over NATS: publish an order and wait for its
//! confirmation, and ask the workers what became of an order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use finalprice_shared::messages::{
    self, Confirmation, NewOrder, OrderState, Outcome, STATUS_SUBJECT, StatusReply, StatusRequest,
    order_subject,
};
use finalprice_shared::telemetry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::envelope::{Envelopes, Limits};
use crate::inbox::{Inbox, Reply, Waiter};
use crate::metrics::{FrontMetrics, PublishFailure, WaitOutcome};

/// How often a request that waits for the NATS connection looks at it again.
const CONNECTION_CHECK: Duration = Duration::from_millis(20);

/// First pause before a publish is tried again; it doubles up to [`MAX_PUBLISH_RETRY`].
const FIRST_PUBLISH_RETRY: Duration = Duration::from_millis(50);
const MAX_PUBLISH_RETRY: Duration = Duration::from_millis(500);

/// First pause between status polls for a duplicate submission; doubles up to a quarter second.
const FIRST_POLL: Duration = Duration::from_millis(25);

/// How long one look at the order stream answers every `/readyz`: probes may come from
/// anywhere and in any number, and each look is a request to nats-server's JetStream API.
const STREAM_LOOK_FRESH: Duration = Duration::from_secs(1);

/// How often the stream's gauges are refreshed without a probe asking: within a scrape
/// interval, at one stream-info request per front.
const STREAM_WATCH_EVERY: Duration = Duration::from_secs(5);

/// How a submission ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Committed in the database: the shopper may be told "accepted".
    Accepted,
    /// Durable in the stream, not confirmed in time: "being saved". `at` is the sequence of
    /// the message that carries it, which a status lookup needs to find an order travelling
    /// in another order's envelope.
    Pending { at: u64 },
}

/// What the wait after the PubAck learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirmed {
    Accepted,
    Pending,
}

/// A message that got no PubAck: why (the metric label), and whether it may be stored all the
/// same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unacked {
    /// The last try's failure.
    pub failure: PublishFailure,
    /// A try went out to a connection that looked alive and was not refused: nats-server may
    /// have stored it and only its PubAck was lost (a hung server, a timeout, a broken pipe).
    /// `false` only when no try can have been stored: nothing was handed to the client, or the
    /// server said no.
    pub maybe_stored: bool,
}

/// Why a submission did not end in the queue or was refused; each variant is one reaction.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No PubAck, and no try can have been stored: NATS down, stream missing or full. Nothing
    /// is durable; the shopper should try again (503, "not taken").
    #[error("the order queue is unavailable ({0:?})")]
    Unavailable(PublishFailure),
    /// No PubAck, but the order may be stored all the same: only a retry with the same key
    /// (the same order) or a status lookup can tell (503, "outcome unknown").
    #[error("the order queue did not confirm the order in time ({0:?})")]
    OutcomeUnknown(PublishFailure),
    /// A worker will never write this order (500-class: not saved).
    #[error("the order was rejected by a worker: {reason}")]
    Rejected { reason: String },
}

/// Why a status could not be learned; "cannot tell now", never "unknown".
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("not connected to nats-server")]
    Disconnected,
    #[error("no worker answers status requests")]
    NoWorker,
    #[error("no status answer in time")]
    TimedOut,
    #[error("status request could not be sent")]
    Publish(#[from] async_nats::PublishError),
    #[error("malformed status answer")]
    Malformed(#[from] messages::DecodeError),
    #[error("an order confirmation came back instead of a status answer")]
    NotAStatus,
}

/// How long each step of the order path may take before the front answers without it.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Handing the order to JetStream until its PubAck, tries again included.
    pub publish: Duration,
    /// The worker's confirmation after the PubAck.
    pub reply: Duration,
    /// A worker's answer to a status request.
    pub status: Duration,
}

/// Handles to everything an order needs on its way through NATS.
#[derive(Debug, Clone)]
pub struct OrderQueue {
    client: Client,
    js: jetstream::Context,
    envelopes: Envelopes,
    stream_name: String,
    /// For direct gets by subject; made without a server round trip.
    stream: stream::Stream<()>,
    inbox: Arc<Inbox>,
    timeouts: Timeouts,
    metrics: Arc<FrontMetrics>,
    /// The last look at the stream and when it was taken; held through a look, so probes
    /// that come meanwhile wait for its answer instead of asking again.
    stream_look: Arc<tokio::sync::Mutex<Option<(Instant, bool)>>>,
}

impl OrderQueue {
    /// Binds the queue to the stream named `stream_name` (which need not exist yet) and
    /// starts gathering orders into envelopes within `limits`.
    pub async fn new(
        client: Client,
        js: jetstream::Context,
        stream_name: String,
        inbox: Arc<Inbox>,
        timeouts: Timeouts,
        limits: Limits,
        metrics: Arc<FrontMetrics>,
    ) -> Result<Self, jetstream::context::GetStreamError> {
        let stream = js.get_stream_no_info(&stream_name).await?;
        let publisher = Publisher::new(
            client.clone(),
            js.clone(),
            timeouts.publish,
            Arc::clone(&metrics),
        );
        let envelopes = Envelopes::start(Arc::new(publisher), inbox.prefix(), limits);
        Ok(Self {
            client,
            js,
            envelopes,
            stream_name,
            stream,
            inbox,
            timeouts,
            metrics,
            stream_look: Arc::default(),
        })
    }

    fn connected(&self) -> bool {
        connected(&self.client)
    }

    /// The gatherer of envelopes.
    pub fn envelopes(&self) -> &Envelopes {
        &self.envelopes
    }

    /// The NATS client, for readiness checks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the order stream answers (for `/readyz`): `get_stream` is one stream-info
    /// round trip, bounded with its hand-over (see [`Self::status`]), taken at most once per
    /// [`STREAM_LOOK_FRESH`].
    pub async fn stream_reachable(&self) -> bool {
        let mut look = self.stream_look.lock().await;
        if let Some((at, reachable)) = *look
            && at.elapsed() < STREAM_LOOK_FRESH
        {
            return reachable;
        }
        let info = self.js.get_stream(&self.stream_name);
        let reachable = match tokio::time::timeout(self.timeouts.publish, info).await {
            Ok(Ok(stream)) => {
                self.metrics.stream_seen(stream.cached_info());
                true
            }
            _ => false,
        };
        *look = Some((Instant::now(), reachable));
        reachable
    }

    /// Looks at the order stream every [`STREAM_WATCH_EVERY`] until `shutdown`, so its gauges
    /// (length, bounds, replicas) stay current between probes.
    pub async fn watch_stream(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(STREAM_WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.stream_reachable().await;
        }
    }

    /// Publishes `order` (alone or in an envelope) and waits up to the reply timeout for a
    /// worker's confirmation. `Ok` only once the order is durable in the stream; `Accepted`
    /// only once it is committed.
    pub async fn submit(&self, order: &NewOrder) -> Result<Submitted, SubmitError> {
        let mut waiter = self.inbox.register();
        let publish_span = tracing::info_span!(
            "orders publish",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = "orders",
            messaging.message.id = %order.id,
        );
        // This span's context travels with the order, inside an envelope or as a header.
        let traceparent = telemetry::nats::traceparent_of(&publish_span);
        let acked = self
            .envelopes
            .publish(order.id, messages::encode(order), &waiter, traceparent)
            .instrument(publish_span)
            .await
            .map_err(|unacked| {
                if unacked.maybe_stored {
                    SubmitError::OutcomeUnknown(unacked.failure)
                } else {
                    SubmitError::Unavailable(unacked.failure)
                }
            })?;

        let waiting_since = Instant::now();
        let deadline = waiting_since + self.timeouts.reply;
        let submitted = if acked.duplicate {
            // Boxed, being rare: its state would otherwise be reserved in every request.
            Box::pin(self.confirmation_or_state(order.id, &mut waiter, deadline)).await
        } else {
            self.await_confirmation(order.id, &mut waiter, deadline)
                .await
        };
        let submitted = submitted.map(|submitted| match submitted {
            Confirmed::Accepted => Submitted::Accepted,
            Confirmed::Pending => Submitted::Pending { at: acked.sequence },
        });
        let outcome = match &submitted {
            Ok(Submitted::Accepted) => WaitOutcome::Accepted,
            Ok(Submitted::Pending { .. }) => WaitOutcome::Pending,
            Err(_) => WaitOutcome::Rejected,
        };
        self.metrics
            .confirmation_waited(outcome, waiting_since.elapsed());
        submitted
    }

    async fn await_confirmation(
        &self,
        id: Uuid,
        waiter: &mut Waiter,
        deadline: Instant,
    ) -> Result<Confirmed, SubmitError> {
        let reply = tokio::time::timeout_at(deadline, waiter.recv())
            .instrument(tracing::info_span!("orders await confirmation", order_id = %id))
            .await;
        let Ok(Some(reply)) = reply else {
            return Ok(Confirmed::Pending);
        };
        // The hand-back continues the worker's "orders confirm" span: the trace ends here.
        let received = tracing::info_span!(
            "orders confirmation received",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "receive",
        );
        let confirmation = match reply {
            Reply::Confirmation(addressed) => {
                telemetry::nats::set_parent_from_traceparent(
                    &received,
                    addressed.traceparent.as_deref(),
                );
                Ok(addressed.confirmation)
            }
            Reply::Message(message) => {
                telemetry::nats::set_parent_from(&received, message.headers.as_ref());
                messages::decode::<Confirmation>(&message.payload)
            }
        };
        let _entered = received.enter();
        match confirmation {
            // Never trust an answer about another order.
            Ok(Confirmation { id: answered, .. }) if answered != id => {
                tracing::warn!(order_id = %id, "confirmation names another order");
                Ok(Confirmed::Pending)
            }
            Ok(Confirmation {
                outcome: Outcome::Accepted,
                ..
            }) => Ok(Confirmed::Accepted),
            Ok(Confirmation {
                outcome: Outcome::Rejected { reason },
                ..
            }) => Err(SubmitError::Rejected { reason }),
            Err(error) => {
                // Durable but unreadable answer: do not claim a commit we cannot read.
                tracing::warn!(%error, order_id = %id, "malformed confirmation");
                Ok(Confirmed::Pending)
            }
        }
    }

    /// The outcome of an order whose publish was answered "duplicate". The stored copy may be
    /// another submission of the key (a double click), whose confirmation goes to whoever sent
    /// it, so the order's real state is asked for; or this request's own earlier try, stored
    /// while its PubAck was lost in an election, whose confirmation comes to `waiter`. The
    /// first definite answer of the two wins.
    async fn confirmation_or_state(
        &self,
        id: Uuid,
        waiter: &mut Waiter,
        deadline: Instant,
    ) -> Result<Confirmed, SubmitError> {
        let confirmation = self.await_confirmation(id, waiter, deadline);
        let state = self.poll_until_accepted(id, deadline);
        tokio::pin!(confirmation, state);
        tokio::select! {
            confirmed = &mut confirmation => match confirmed {
                Ok(Confirmed::Pending) => Ok(state.await),
                definite => definite,
            },
            polled = &mut state => match polled {
                Confirmed::Accepted => Ok(Confirmed::Accepted),
                Confirmed::Pending => confirmation.await,
            },
        }
    }

    async fn poll_until_accepted(&self, id: Uuid, deadline: Instant) -> Confirmed {
        let mut pause = FIRST_POLL;
        loop {
            let asked = tokio::time::timeout_at(deadline, self.status(id, None)).await;
            match asked {
                Ok(Ok(StatusReply {
                    state: OrderState::Accepted,
                    ..
                })) => return Confirmed::Accepted,
                Ok(_) => {}
                Err(_) => return Confirmed::Pending,
            }
            if Instant::now() + pause >= deadline {
                return Confirmed::Pending;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Asks the workers for the state of order `id`.
    ///
    /// Bounded as a whole: the wait for a connection (nothing is queued while there is none,
    /// see [`Self::submit`]) and the request's hand-over included, since the connection can
    /// drop after that wait, and once the client's queue is full a send waits until NATS is
    /// back.
    pub async fn status(&self, id: Uuid, at: Option<u64>) -> Result<StatusReply, StatusError> {
        match tokio::time::timeout(self.timeouts.status, self.ask_status(id, at)).await {
            Ok(answer) => answer,
            Err(_) if !self.connected() => Err(StatusError::Disconnected),
            Err(_) => Err(StatusError::TimedOut),
        }
    }

    async fn ask_status(&self, id: Uuid, at: Option<u64>) -> Result<StatusReply, StatusError> {
        until_connected(&self.client).await;
        let mut waiter = self.inbox.register();
        self.client
            .publish_with_reply(
                STATUS_SUBJECT,
                waiter.subject().to_owned(),
                messages::encode(&StatusRequest { id, at }),
            )
            .await?;
        match waiter.recv().await {
            Some(Reply::Message(message)) if message.status == Some(StatusCode::NO_RESPONDERS) => {
                Err(StatusError::NoWorker)
            }
            Some(Reply::Message(message)) => Ok(messages::decode(&message.payload)?),
            Some(Reply::Confirmation(_)) => Err(StatusError::NotAStatus),
            None => Err(StatusError::TimedOut),
        }
    }

    /// The workers' answer, or, when no worker answers, whether the order still waits in the
    /// stream (the front may read the queue, never the database): in the message at `at` (the
    /// hint its link carries), or in the last message on its own subject.
    pub async fn status_or_queued(
        &self,
        id: Uuid,
        at: Option<u64>,
    ) -> Result<StatusReply, StatusError> {
        let error = match self.status(id, at).await {
            Ok(reply) => return Ok(reply),
            Err(error @ (StatusError::NoWorker | StatusError::TimedOut)) => error,
            Err(other) => return Err(other),
        };
        // The JetStream API bounds only the wait for the answer, not the hand-over (see above).
        let queued = tokio::time::timeout(self.timeouts.status, async {
            if let Some(sequence) = at
                && let Ok(message) = self.stream.direct_get(sequence).await
                && let Some(reply) =
                    StatusReply::pending(id, &message.subject, &message.headers, &message.payload)
            {
                return Some(reply);
            }
            let message = self
                .stream
                .direct_get_last_for_subject(order_subject(id))
                .await
                .ok()?;
            StatusReply::pending(id, &message.subject, &message.headers, &message.payload)
        })
        .await;
        match queued {
            Ok(Some(reply)) => Ok(reply),
            // Not queued, and nobody to ask whether it was committed: cannot tell.
            Ok(None) | Err(_) => Err(error),
        }
    }
}

fn connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// Returns once `client` is connected; callers bound the wait. async-nats offers no
/// notification of its state, so it is looked at every few milliseconds (only while the
/// connection is down).
async fn until_connected(client: &Client) {
    while !connected(client) {
        tokio::time::sleep(CONNECTION_CHECK).await;
    }
}

/// Hands messages to the order stream until their PubAck, trying again within the publish
/// bound when a try fails in a way that passes.
#[derive(Debug)]
pub struct Publisher {
    client: Client,
    js: jetstream::Context,
    /// Handing a message to JetStream until its PubAck, tries again included.
    bound: Duration,
    metrics: Arc<FrontMetrics>,
}

impl Publisher {
    pub fn new(
        client: Client,
        js: jetstream::Context,
        bound: Duration,
        metrics: Arc<FrontMetrics>,
    ) -> Self {
        Self {
            client,
            js,
            bound,
            metrics,
        }
    }

    fn connected(&self) -> bool {
        connected(&self.client)
    }

    /// How long an order may take from its hand-over to its PubAck.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Why a publish that ran out of time now got no PubAck: no connection, or no answer.
    pub fn failure_now(&self) -> PublishFailure {
        if self.connected() {
            PublishFailure::NoAck
        } else {
            PublishFailure::Disconnected
        }
    }

    /// The front's metrics.
    pub fn metrics(&self) -> &FrontMetrics {
        &self.metrics
    }

    /// Counts `orders` orders that got no PubAck, for this reason.
    pub fn gave_up(&self, failure: PublishFailure, orders: usize) {
        for _ in 0..orders {
            self.metrics.publish_failed(failure);
        }
    }

    /// Publishes one message carrying `orders` orders until its PubAck or `deadline`. A try that fails in a
    /// way that passes (a stream leader being elected: "no responders", "temporarily
    /// unavailable", no answer; a connection lost) is made again with the same headers, so
    /// the same `Nats-Msg-Id`: a try whose PubAck was lost but which was stored is not stored
    /// again. Retries are counted per message; the caller counts failures per order.
    ///
    /// `message` is made at the first hand-over, once the client is connected (`None`: nothing
    /// is left to send), so that an order whose request stopped waiting before then is left
    /// out rather than stored after its shopper was told it was not taken.
    pub async fn publish(
        &self,
        orders: usize,
        deadline: Instant,
        message: impl FnOnce() -> Option<Message> + Send,
    ) -> Result<PublishAck, Unacked> {
        let mut pause = FIRST_PUBLISH_RETRY;
        self.metrics.published(orders);
        let mut message = Some(message);
        let mut made: Option<Message> = None;
        let mut maybe_stored = false;
        loop {
            let mut handed_over = false;
            let attempt = async {
                // While nats-server is away the client queues what it is given and sends it
                // after the reconnect: an order answered 503 ("not taken, try again") would
                // then be stored after all, and once the queue is full every send waits for
                // the server. So nothing is handed over until the client is connected; a
                // reconnect within the bound costs a wait, not a refusal. (A connection lost
                // just after this look can still carry the order out later: such a try counts
                // as maybe stored.)
                until_connected(&self.client).await;
                if made.is_none() {
                    made = message.take().and_then(|make| make());
                }
                let (subject, headers, payload) = made.clone()?;
                handed_over = true;
                let sent = self
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await;
                Some(match sent {
                    Ok(ack) => ack.await,
                    Err(error) => Err(error),
                })
            };
            // The first await may wait for an in-flight permit with no bound of its own.
            let outcome = tokio::time::timeout_at(deadline, attempt).await;
            let (failure, this_try) = match outcome {
                Ok(Some(Ok(ack))) => return Ok(ack),
                Ok(Some(Err(error))) => (publish_failure(&error), may_be_stored(&error)),
                // Every order of the message stopped waiting before it was made.
                Ok(None) => (self.failure_now(), false),
                Err(_) if !self.connected() => (PublishFailure::Disconnected, handed_over),
                Err(_) => (PublishFailure::NoAck, handed_over),
            };
            // An earlier try may be stored whatever the later ones met.
            maybe_stored |= this_try;
            let nothing_left = message.is_none() && made.is_none();
            if nothing_left || !passes(failure) || Instant::now() + pause >= deadline {
                return Err(Unacked {
                    failure,
                    maybe_stored,
                });
            }
            tracing::debug!(?failure, ?pause, orders, "publish failed; trying again");
            self.metrics.publish_retried(failure);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PUBLISH_RETRY);
        }
    }
}

/// A JetStream message: subject, headers, payload.
pub type Message = (String, HeaderMap, Bytes);

/// JetStream API error codes that mean "not now" rather than "no": the cluster has no
/// meta leader (10008), this server cannot serve the request yet (10009), or a message with
/// this `Nats-Msg-Id` is still being stored (10158: an earlier try that timed out in an
/// election; tried again, it is answered as a duplicate once stored).
const PASSING_API_ERRORS: [u64; 3] = [10008, 10009, STILL_BEING_STORED];

/// "A message with this `Nats-Msg-Id` is still being stored".
const STILL_BEING_STORED: u64 = 10158;

/// Each way a publish can fail, as a metric label (every kind maps to 503 alike).
fn publish_failure(error: &PublishError) -> PublishFailure {
    match error.kind() {
        PublishErrorKind::Other
            if std::error::Error::source(error)
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
                .is_some_and(|api| PASSING_API_ERRORS.contains(&api.error_code().0)) =>
        {
            PublishFailure::Unavailable
        }
        PublishErrorKind::StreamNotFound => PublishFailure::StreamNotFound,
        PublishErrorKind::TimedOut => PublishFailure::NoAck,
        PublishErrorKind::BrokenPipe => PublishFailure::BrokenPipe,
        PublishErrorKind::MaxAckPending => PublishFailure::TooManyInFlight,
        PublishErrorKind::MaxPayloadExceeded => PublishFailure::TooLarge,
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            PublishFailure::Expectation
        }
        // The server refused: with `discard: new`, a full stream ends here.
        PublishErrorKind::Other => PublishFailure::Refused,
    }
}

/// Whether a try that failed with `error` may be stored all the same. No: refused before it
/// was sent (too large, too many PubAcks pending) or by the server (no stream answered, the
/// stream full, an expectation not met, no leader). Yes: no answer in time (the request may
/// have reached a hung server, or waited in the client), a broken pipe after the send, "a
/// message with this id is still being stored" (10158: an earlier copy is), and anything the
/// client reports without a server's error code.
fn may_be_stored(error: &PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => true,
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => false,
        PublishErrorKind::Other => std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_none_or(|api| api.error_code().0 == STILL_BEING_STORED),
    }
}

/// Whether a publish that failed this way may succeed if tried again soon. "No responders"
/// also means a stream that does not exist; tried again it costs the bound, as a stream a
/// front has not created yet may soon be there.
fn passes(failure: PublishFailure) -> bool {
    match failure {
        PublishFailure::StreamNotFound
        | PublishFailure::Unavailable
        | PublishFailure::NoAck
        | PublishFailure::BrokenPipe
        | PublishFailure::Disconnected => true,
        PublishFailure::TooManyInFlight
        | PublishFailure::TooLarge
        | PublishFailure::Expectation
        | PublishFailure::Refused => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish that JetStream's API refused with `err_code`, as async-nats reports it.
    fn refused_with(err_code: u64) -> PublishError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 503,
            "err_code": err_code,
            "description": "from the server",
        }))
        .expect("an API error");
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn an_election_passes_and_a_full_stream_does_not() {
        // No meta leader, a server not ready, a try still being stored (an election's).
        for code in [10008, 10009, 10158] {
            let failure = publish_failure(&refused_with(code));
            assert_eq!(failure, PublishFailure::Unavailable, "{code}");
            assert!(passes(failure), "{code} is tried again");
        }
        // 10077: "maximum messages exceeded", a full stream with `discard: new`.
        let full = publish_failure(&refused_with(10077));
        assert_eq!(full, PublishFailure::Refused);
        assert!(!passes(full), "a full stream is answered at once");
        for (kind, expected) in [
            (PublishErrorKind::StreamNotFound, true),
            (PublishErrorKind::TimedOut, true),
            (PublishErrorKind::BrokenPipe, true),
            (PublishErrorKind::MaxPayloadExceeded, false),
            (PublishErrorKind::WrongLastMessageId, false),
        ] {
            let failure = publish_failure(&PublishError::new(kind));
            assert_eq!(passes(failure), expected, "{kind:?}");
        }
    }

    #[test]
    fn only_a_try_the_server_refused_or_never_got_is_surely_not_stored() {
        // Refused by the server: no leader, not ready, the stream full.
        for code in [10008, 10009, 10077] {
            assert!(!may_be_stored(&refused_with(code)), "{code}");
        }
        // "Still being stored": an earlier copy is.
        assert!(may_be_stored(&refused_with(10158)));
        for (kind, maybe) in [
            (PublishErrorKind::TimedOut, true),
            (PublishErrorKind::BrokenPipe, true),
            (PublishErrorKind::Other, true),
            (PublishErrorKind::StreamNotFound, false),
            (PublishErrorKind::MaxAckPending, false),
            (PublishErrorKind::MaxPayloadExceeded, false),
            (PublishErrorKind::WrongLastMessageId, false),
        ] {
            assert_eq!(may_be_stored(&PublishError::new(kind)), maybe, "{kind:?}");
        }
    }
}
