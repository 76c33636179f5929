//! The front's side of the order path over NATS: publish an order and wait for its
//! confirmation, and ask the workers what became of an order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, HeaderMap, StatusCode};
use finalprice_shared::messages::{
    self, Confirmation, NewOrder, OrderState, Outcome, REPLY_TO_HEADER, REPLY_TOKEN_HEADER,
    STATUS_SUBJECT, StatusReply, StatusRequest, order_subject,
};
use finalprice_shared::telemetry;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

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

/// How a submission ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Committed in the database: the shopper may be told "accepted".
    Accepted,
    /// Durable in the stream, not confirmed in time: "being saved".
    Pending,
}

/// Why a submission did not end in the queue or was refused; each variant is one reaction.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No PubAck: NATS down, stream missing or full, publish timed out. Nothing is durable;
    /// the shopper should try again (503).
    #[error("the order queue is unavailable ({0:?})")]
    Unavailable(PublishFailure),
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
    /// Binds the queue to the stream named `stream_name` (which need not exist yet).
    pub async fn new(
        client: Client,
        js: jetstream::Context,
        stream_name: String,
        inbox: Arc<Inbox>,
        timeouts: Timeouts,
        metrics: Arc<FrontMetrics>,
    ) -> Result<Self, jetstream::context::GetStreamError> {
        let stream = js.get_stream_no_info(&stream_name).await?;
        Ok(Self {
            client,
            js,
            stream_name,
            stream,
            inbox,
            timeouts,
            metrics,
            stream_look: Arc::default(),
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Returns once the client is connected; callers bound the wait. async-nats offers no
    /// notification of its state, so it is looked at every few milliseconds (only while the
    /// connection is down).
    async fn until_connected(&self) {
        while !self.connected() {
            tokio::time::sleep(CONNECTION_CHECK).await;
        }
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
        let reachable = matches!(
            tokio::time::timeout(self.timeouts.publish, info).await,
            Ok(Ok(_))
        );
        *look = Some((Instant::now(), reachable));
        reachable
    }

    /// Publishes `order` and waits up to the reply timeout for a worker's confirmation.
    /// `Ok` only once the order is durable in the stream; `Accepted` only once it is committed.
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
        // Boxed: its state is freed at the PubAck instead of being reserved in every request's
        // future through the whole (longer) confirmation wait.
        let ack = Box::pin(self.publish(order, &waiter))
            .instrument(publish_span)
            .await?;

        let waiting_since = Instant::now();
        let deadline = waiting_since + self.timeouts.reply;
        let submitted = if ack.duplicate {
            // Boxed, being rare: its state would otherwise be reserved in every request.
            Box::pin(self.confirmation_or_state(order.id, &mut waiter, deadline)).await
        } else {
            self.await_confirmation(order.id, &mut waiter, deadline)
                .await
        };
        let outcome = match &submitted {
            Ok(Submitted::Accepted) => WaitOutcome::Accepted,
            Ok(Submitted::Pending) => WaitOutcome::Pending,
            Err(_) => WaitOutcome::Rejected,
        };
        self.metrics
            .confirmation_waited(outcome, waiting_since.elapsed());
        submitted
    }

    /// Hands `order` to the stream until its PubAck, trying again within the publish bound
    /// when a try fails in a way that passes: a stream leader being elected ("no responders",
    /// "temporarily unavailable", no answer), a connection lost. Every try carries the same
    /// `Nats-Msg-Id`, so a try whose PubAck was lost but which was stored is not stored again.
    async fn publish(&self, order: &NewOrder, waiter: &Waiter) -> Result<PublishAck, SubmitError> {
        let deadline = Instant::now() + self.timeouts.publish;
        let payload = messages::encode(order);
        let mut pause = FIRST_PUBLISH_RETRY;
        loop {
            let mut headers = HeaderMap::new();
            let mut id = Uuid::encode_buffer();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                &*order.id.hyphenated().encode_lower(&mut id),
            );
            headers.insert(REPLY_TO_HEADER, waiter.subject());
            // Lets the worker answer this order together with the batch's others for this front.
            headers.insert(REPLY_TOKEN_HEADER, waiter.token_text());
            telemetry::nats::inject_current(&mut headers);
            let attempt = async {
                // While nats-server is away the client queues what it is given and sends it
                // after the reconnect: an order answered 503 ("not taken, try again") would
                // then be stored after all, and once the queue is full every send waits for
                // the server. So nothing is handed over until the client is connected; a
                // reconnect within the bound costs a wait, not a refusal. (A connection lost
                // just after this look can still carry the order out later; a retry with the
                // same key is the same order.)
                self.until_connected().await;
                self.js
                    .publish_with_headers(order_subject(order.id), headers, payload.clone())
                    .await?
                    .await
            };
            // The first await may wait for an in-flight permit with no bound of its own.
            let failure = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(ack)) => return Ok(ack),
                Ok(Err(error)) => publish_failure(&error),
                Err(_) if !self.connected() => PublishFailure::Disconnected,
                Err(_) => PublishFailure::NoAck,
            };
            if !passes(failure) || Instant::now() + pause >= deadline {
                self.metrics.publish_failed(failure);
                return Err(SubmitError::Unavailable(failure));
            }
            tracing::debug!(?failure, ?pause, "publish failed; trying again");
            self.metrics.publish_retried(failure);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PUBLISH_RETRY);
        }
    }

    async fn await_confirmation(
        &self,
        id: Uuid,
        waiter: &mut Waiter,
        deadline: Instant,
    ) -> Result<Submitted, SubmitError> {
        let reply = tokio::time::timeout_at(deadline, waiter.recv())
            .instrument(tracing::info_span!("orders await confirmation", order_id = %id))
            .await;
        let Ok(Some(reply)) = reply else {
            return Ok(Submitted::Pending);
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
                Ok(Submitted::Pending)
            }
            Ok(Confirmation {
                outcome: Outcome::Accepted,
                ..
            }) => Ok(Submitted::Accepted),
            Ok(Confirmation {
                outcome: Outcome::Rejected { reason },
                ..
            }) => Err(SubmitError::Rejected { reason }),
            Err(error) => {
                // Durable but unreadable answer: do not claim a commit we cannot read.
                tracing::warn!(%error, order_id = %id, "malformed confirmation");
                Ok(Submitted::Pending)
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
    ) -> Result<Submitted, SubmitError> {
        let confirmation = self.await_confirmation(id, waiter, deadline);
        let state = self.poll_until_accepted(id, deadline);
        tokio::pin!(confirmation, state);
        tokio::select! {
            confirmed = &mut confirmation => match confirmed {
                Ok(Submitted::Pending) => Ok(state.await),
                definite => definite,
            },
            polled = &mut state => match polled {
                Submitted::Accepted => Ok(Submitted::Accepted),
                Submitted::Pending => confirmation.await,
            },
        }
    }

    async fn poll_until_accepted(&self, id: Uuid, deadline: Instant) -> Submitted {
        let mut pause = FIRST_POLL;
        loop {
            let asked = tokio::time::timeout_at(deadline, self.status(id)).await;
            match asked {
                Ok(Ok(StatusReply {
                    state: OrderState::Accepted,
                    ..
                })) => return Submitted::Accepted,
                Ok(_) => {}
                Err(_) => return Submitted::Pending,
            }
            if Instant::now() + pause >= deadline {
                return Submitted::Pending;
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
    pub async fn status(&self, id: Uuid) -> Result<StatusReply, StatusError> {
        match tokio::time::timeout(self.timeouts.status, self.ask_status(id)).await {
            Ok(answer) => answer,
            Err(_) if !self.connected() => Err(StatusError::Disconnected),
            Err(_) => Err(StatusError::TimedOut),
        }
    }

    async fn ask_status(&self, id: Uuid) -> Result<StatusReply, StatusError> {
        self.until_connected().await;
        let mut waiter = self.inbox.register();
        self.client
            .publish_with_reply(
                STATUS_SUBJECT,
                waiter.subject().to_owned(),
                messages::encode(&StatusRequest { id }),
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
    /// stream (the front may read the queue, never the database).
    pub async fn status_or_queued(&self, id: Uuid) -> Result<StatusReply, StatusError> {
        let error = match self.status(id).await {
            Ok(reply) => return Ok(reply),
            Err(error @ (StatusError::NoWorker | StatusError::TimedOut)) => error,
            Err(other) => return Err(other),
        };
        // The JetStream API bounds only the wait for the answer, not the hand-over (see above).
        let queued = tokio::time::timeout(
            self.timeouts.status,
            self.stream.direct_get_last_for_subject(order_subject(id)),
        )
        .await;
        match queued {
            Ok(Ok(message)) => Ok(StatusReply::pending(id, &message.payload)),
            // Not queued, and nobody to ask whether it was committed: cannot tell.
            Ok(Err(_)) | Err(_) => Err(error),
        }
    }
}

/// JetStream API error codes that mean "not now" rather than "no": the cluster has no
/// meta leader (10008), this server cannot serve the request yet (10009), or a message with
/// this `Nats-Msg-Id` is still being stored (10158: an earlier try that timed out in an
/// election; tried again, it is answered as a duplicate once stored).
const PASSING_API_ERRORS: [u64; 3] = [10008, 10009, 10158];

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
}
