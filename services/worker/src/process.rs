//! One batch of deliveries → one transaction → one outcome per order, then the confirmations
//! (one message per front inbox that asks for it) and the acks, in that order: nothing is
//! confirmed before its commit, nothing is acked before its confirmation is on the wire.
//!
//! A batch the database refuses is retried order by order, so one bad order cannot hold back
//! the others; an order refused again and again, or one that does not even decode, goes to the
//! dead-letter stream with its reason, its shopper (if still waiting) is told it was not saved,
//! and only then is it removed from the queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap};
use finalprice_db::entity::orders;
use finalprice_shared::messages::{
    self, AddressedConfirmation, Confirmation, DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_ORDER_ID_HEADER, DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SEQUENCE_HEADER, NewOrder,
    Outcome, REPLY_TO_HEADER, REPLY_TOKEN_HEADER, ReplyTarget,
};
use finalprice_shared::telemetry;
use opentelemetry::trace::TraceContextExt;
use sea_orm::sea_query::{OnConflict, Value};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryTrait, Statement,
};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::error::{CommitFailure, classify};
use crate::stats::WorkerStats;

/// What one batch needs besides its messages.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub client: Client,
    /// Publishes dead letters (and waits for their PubAck).
    pub js: jetstream::Context,
    pub db: DatabaseConnection,
    pub stats: Arc<WorkerStats>,
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    /// The delivery on which an order the database refuses, or a message that is no valid
    /// order, is dead-lettered.
    pub dead_letter_after: i64,
    /// How long a batch's statement may take before it is given up (and the batch retried).
    pub commit_timeout: Duration,
}

/// Why an order can never be written. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The payload is not a valid order: nothing the front sends, so a bug or a stray publish.
    #[error("malformed or invalid order: {0}")]
    Malformed(String),
    /// The database refused this order's data on every try.
    #[error("refused by the database: {0}")]
    Refused(String),
}

/// A delivery whose payload decoded into a valid order, with the span that continues the
/// order's trace in this worker.
struct Delivery {
    order: NewOrder,
    message: jetstream::Message,
    span: tracing::Span,
}

/// The order only (its own `Debug` hides name and phone): the message's would print the
/// payload, phone number and all.
impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

/// Inserts the orders in one statement (so one transaction); an order already present is
/// skipped. Returns the ids this call inserted; the others were committed before.
pub async fn commit_orders<'a>(
    db: &DatabaseConnection,
    orders: impl IntoIterator<Item = &'a NewOrder>,
) -> Result<HashSet<Uuid>, DbErr> {
    // A redelivery can meet its original in the same batch; one row per id per statement.
    let mut seen = HashSet::new();
    let orders: Vec<&NewOrder> = orders
        .into_iter()
        .filter(|order| seen.insert(order.id))
        .collect();
    if orders.is_empty() {
        return Ok(HashSet::new());
    }
    let statement = insert_statement(db.get_database_backend(), &orders);
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id"))
        .collect()
}

/// The one statement that inserts `orders` (distinct ids), skips those already stored and
/// returns the ids it inserted.
///
/// On PostgreSQL the batch travels as four arrays, so every batch size is the same SQL: prepared
/// once per connection and planned once. A multi-row `VALUES` is new SQL for each size, parsed
/// and planned anew, and with sizes from 1 to `batch_size` the connection's statement cache
/// cannot hold them all. SQLite has no arrays and keeps the multi-row form.
pub fn insert_statement(backend: DbBackend, orders: &[&NewOrder]) -> Statement {
    if backend == DbBackend::Postgres {
        return Statement::from_sql_and_values(
            backend,
            "INSERT INTO orders (id, name, phone, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            [
                column(orders, |order| order.id),
                column(orders, |order| order.name.as_ref().to_owned()),
                column(orders, |order| order.phone.as_ref().to_owned()),
                column(orders, |order| order.created_at),
            ],
        );
    }
    let mut insert =
        orders::Entity::insert_many(orders.iter().map(|&order| orders::ActiveModel::from(order)))
            .on_conflict(
                OnConflict::column(orders::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .into_query();
    insert.returning_col(orders::Column::Id);
    backend.build(&insert)
}

/// One column of the batch as a PostgreSQL array parameter.
fn column<T>(orders: &[&NewOrder], field: impl Fn(&NewOrder) -> T) -> Value
where
    Vec<T>: Into<Value>,
{
    orders
        .iter()
        .map(|&order| field(order))
        .collect::<Vec<T>>()
        .into()
}

/// Handles one batch end to end. Never fails: every message leaves with a confirmation and an
/// ack, a dead letter and a term, or a nak that brings it back later.
pub async fn handle_batch(context: &BatchContext, messages: Vec<jetstream::Message>) {
    let batch_span = tracing::info_span!(
        "orders process batch",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = "orders",
        messaging.batch.message_count = messages.len(),
    );
    let redelivered = messages.iter().filter(|m| deliveries(m) > 1).count();
    context.stats.delivered(redelivered as u64);

    let mut decoded = Vec::with_capacity(messages.len());
    for message in messages {
        let span = order_span(&message);
        batch_span.add_link(span.context().span().span_context().clone());
        match messages::decode::<NewOrder>(&message.payload) {
            Ok(order) => decoded.push(Delivery {
                order,
                message,
                span,
            }),
            // Like a refused order, only after `dead_letter_after` deliveries: in a rolling
            // deploy a worker older than the front may not read what a newer one will.
            Err(error) if deliveries(&message) < context.dead_letter_after => {
                tracing::warn!(parent: &span, %error, "order not readable; retrying later");
                retry_later(context, &message).instrument(span).await;
            }
            Err(error) => {
                let reason = RejectReason::Malformed(error.to_string());
                dead_letter(context, &message, reason)
                    .instrument(span)
                    .await;
            }
        }
    }
    handle_orders(context, decoded).instrument(batch_span).await;
}

/// The consumer span of one delivery: a child of the front's publish span, so the order's one
/// trace runs from the browser's POST through this worker. Its parent is set before it starts.
fn order_span(message: &jetstream::Message) -> tracing::Span {
    let id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    let span = tracing::info_span!(
        parent: None,
        "orders process",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = "orders",
        messaging.message.id = %id,
        messaging.message.delivery_count = deliveries(message),
    );
    telemetry::nats::set_parent_from(&span, message.headers.as_ref());
    span
}

async fn handle_orders(context: &BatchContext, deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    let error = match commit(context, &deliveries).await {
        Ok(()) => return,
        Err(error) => error,
    };
    let failure = classify(&error);
    context.stats.batch_failed(failure);
    match failure {
        CommitFailure::Transient => {
            tracing::warn!(%error, orders = deliveries.len(), "batch not committed; retrying later");
            for delivery in &deliveries {
                retry_later(context, &delivery.message)
                    .instrument(delivery.span.clone())
                    .await;
            }
        }
        CommitFailure::Permanent => {
            tracing::warn!(%error, orders = deliveries.len(), "batch refused; committing its orders one by one");
            for delivery in deliveries {
                let span = delivery.span.clone();
                commit_alone(context, delivery).instrument(span).await;
            }
        }
    }
}

/// Commits the deliveries in one transaction, then confirms and acks each.
async fn commit(context: &BatchContext, deliveries: &[Delivery]) -> Result<(), DbErr> {
    // One database span for the one transaction, linked to every order it carries; and in each
    // order's own trace a step for the commit it waited on, linked back to that span.
    let db_span = tracing::info_span!(
        "INSERT orders",
        otel.kind = "client",
        db.system.name = context.db.get_database_backend().as_str(),
        db.operation.name = "INSERT",
        db.collection.name = "orders",
        db.operation.batch.size = deliveries.len(),
    );
    let db_context = db_span.context().span().span_context().clone();
    let waits: Vec<tracing::Span> = deliveries
        .iter()
        .map(|delivery| {
            db_span.add_link(delivery.span.context().span().span_context().clone());
            let wait = tracing::info_span!(
                parent: &delivery.span,
                "orders commit",
                db.operation.batch.size = deliveries.len()
            );
            wait.add_link(db_context.clone());
            wait
        })
        .collect();
    let started = Instant::now();
    // Run with no current span: the pool spawns long-lived tasks that would adopt it (and with
    // it every span above) as parent and keep it from ever closing. `db_span` times the
    // statement from outside instead.
    let inserted = commit_orders(&context.db, deliveries.iter().map(|d| &d.order))
        .instrument(tracing::Span::none());
    // sqlx bounds neither a statement nor a silent connection. Given up, the statement may
    // still commit; the retry then finds the rows and confirms them, so nothing is lost or
    // stored twice.
    let inserted = tokio::time::timeout(context.commit_timeout, inserted).await;
    drop((db_span, waits));
    let inserted = inserted.map_err(|_| {
        DbErr::Custom(format!(
            "no answer from the database within worker.commit_timeout ({:?})",
            context.commit_timeout
        ))
    })??;
    let fresh = inserted.len() as u64;
    context
        .stats
        .batch_committed(fresh, deliveries.len() as u64 - fresh, started.elapsed());
    tracing::debug!(
        orders = deliveries.len(),
        inserted = fresh,
        "batch committed"
    );
    confirm_accepted(context, deliveries).await;
    for delivery in deliveries {
        if let Err(error) = delivery.message.ack().await {
            // The row is committed; a redelivery will find it and confirm again.
            tracing::warn!(parent: &delivery.span, %error, "ack failed; the order will be redelivered");
        }
    }
    Ok(())
}

/// One order of a refused batch, on its own: committed, retried later, or dead-lettered.
async fn commit_alone(context: &BatchContext, delivery: Delivery) {
    let Err(error) = commit(context, std::slice::from_ref(&delivery)).await else {
        return;
    };
    let delivered = deliveries(&delivery.message);
    match classify(&error) {
        CommitFailure::Permanent if delivered >= context.dead_letter_after => {
            dead_letter(
                context,
                &delivery.message,
                RejectReason::Refused(error.to_string()),
            )
            .await;
        }
        _ => {
            tracing::warn!(%error, order_id = %delivery.order.id, delivered, "order not committed; retrying later");
            retry_later(context, &delivery.message).await;
        }
    }
}

/// How many times this message has been delivered, this time included.
fn deliveries(message: &jetstream::Message) -> i64 {
    message
        .info()
        .map(|info| info.delivered)
        .unwrap_or(1)
        .max(1)
}

/// Hands the message back for a later delivery: `retry_delay` doubled per earlier delivery, at
/// most `retry_max_delay`.
async fn retry_later(context: &BatchContext, message: &jetstream::Message) {
    let doublings = u32::try_from(deliveries(message) - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = context
        .retry_delay
        .saturating_mul(1 << doublings)
        .min(context.retry_max_delay);
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(%error, "nak failed; the order returns after ack_wait");
    }
}

/// The headers a dead letter gets from the worker that stored it.
const DEAD_LETTER_HEADERS: [&str; 4] = [
    DEAD_LETTER_REASON_HEADER,
    DEAD_LETTER_DELIVERIES_HEADER,
    DEAD_LETTER_SEQUENCE_HEADER,
    DEAD_LETTER_ORDER_ID_HEADER,
];

/// Moves an order that can never be written to the dead-letter stream, tells a waiting shopper
/// it was not saved, and removes it from the queue — in that order, so it is never in neither.
async fn dead_letter(context: &BatchContext, message: &jetstream::Message, reason: RejectReason) {
    // From the subject, which the front and a replay alike publish on (`orders.<id>`): a replay
    // has a message id of its own, and a header could name any order.
    let id = messages::order_id_from_subject(&message.subject);
    let Ok(info) = message.info() else {
        tracing::error!("delivery without JetStream metadata; cannot dead-letter it");
        return;
    };
    let (sequence, delivered) = (info.stream_sequence, info.delivered);

    let mut headers = HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(|headers| headers.iter()) {
        let name: &str = name.as_ref();
        if name == REPLY_TO_HEADER || name == REPLY_TOKEN_HEADER {
            continue; // nobody will wait on a replayed dead letter
        }
        // Set below from what this worker saw, never carried over from the message.
        if DEAD_LETTER_HEADERS
            .iter()
            .any(|ours| ours.eq_ignore_ascii_case(name))
        {
            continue;
        }
        // JetStream's own headers steer the publish they came on (`Nats-Expected-Stream`,
        // `Nats-Rollup`, `Nats-TTL`, …); carried over, one could make this publish fail on
        // every try.
        if name
            .get(..5)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
        {
            continue;
        }
        for value in values {
            headers.append(name, value.as_str());
        }
    }
    // Idempotent: a retry of this step stores the dead letter once.
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dead-letter-{sequence}").as_str(),
    );
    // On one line: a database's message can hold line breaks, which a header value cannot
    // (async-nats panics on one).
    let reason_line: String = reason
        .to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    headers.insert(DEAD_LETTER_REASON_HEADER, reason_line.as_str());
    headers.insert(
        DEAD_LETTER_DELIVERIES_HEADER,
        delivered.to_string().as_str(),
    );
    headers.insert(DEAD_LETTER_SEQUENCE_HEADER, sequence.to_string().as_str());
    if let Some(id) = id {
        headers.insert(DEAD_LETTER_ORDER_ID_HEADER, id.to_string().as_str());
    }
    let stored = async {
        context
            .js
            .publish_with_headers(
                messages::dead_letter_subject(sequence),
                headers,
                message.payload.clone(),
            )
            .await?
            .await
    }
    .await;
    if let Err(error) = stored {
        tracing::warn!(%error, stream_sequence = sequence, "dead letter not stored; retrying later");
        retry_later(context, message).await;
        return;
    }

    context.stats.dead_lettered();
    tracing::warn!(order_id = ?id, stream_sequence = sequence, delivered, %reason, "order dead-lettered");
    if let Some(id) = id {
        let confirmation = Confirmation {
            id,
            outcome: Outcome::Rejected {
                reason: reason.to_string(),
            },
        };
        // Alone, whatever the reply-to: a dead letter is rare and the front reads both forms.
        if let Some(inbox) = reply_to(message) {
            reply(context, inbox, &confirmation).await;
        }
    }
    if let Err(error) = message.ack_with(AckKind::Term).await {
        // Redelivered later, it is dead-lettered again under the same Nats-Msg-Id: one copy.
        tracing::warn!(%error, "term failed; the order will come back and be dead-lettered again");
    }
}

/// Tells the shoppers of committed deliveries: one message per front inbox for all the orders
/// it waits on (nats-server and the front handle one message instead of hundreds), a message
/// of its own for any other reply-to. Each order still gets its own confirm span in its trace.
async fn confirm_accepted(context: &BatchContext, deliveries: &[Delivery]) {
    let mut gathered: HashMap<&str, Vec<AddressedConfirmation>> = HashMap::new();
    let mut spans = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let confirmation = Confirmation {
            id: delivery.order.id,
            outcome: Outcome::Accepted,
        };
        match reply_target(&delivery.message) {
            Some(ReplyTarget::Gathered { inbox, token }) => {
                let span = confirm_span(&delivery.span);
                gathered
                    .entry(inbox)
                    .or_default()
                    .push(AddressedConfirmation {
                        token,
                        confirmation,
                        traceparent: telemetry::nats::traceparent_of(&span),
                    });
                spans.push(span);
            }
            Some(ReplyTarget::Alone(subject)) => {
                reply(context, subject, &confirmation)
                    .instrument(delivery.span.clone())
                    .await;
            }
            None => {}
        }
    }
    // Bounded so that no batch size makes a message larger than this nats-server takes.
    let per_message = (context.client.server_info().max_payload / MAX_ENTRY_BYTES).max(1);
    for (inbox, confirmations) in gathered {
        let subject = messages::confirmations_subject(inbox);
        for chunk in confirmations.chunks(per_message) {
            if let Err(error) = context
                .client
                .publish(subject.clone(), messages::encode(&chunk))
                .await
            {
                tracing::warn!(%error, orders = chunk.len(), "confirmations not sent");
            }
        }
    }
    drop(spans);
}

/// An upper bound of one gathered confirmation's size: token (≤ 20 digits), id, status and
/// traceparent come to ~185 bytes of JSON. With the 64 KB `max_payload` of
/// `nats/nats-server.conf`, 256 confirmations per message.
const MAX_ENTRY_BYTES: usize = 256;

/// The inbox the front named for this order; `None` for orders replayed from the dead-letter
/// stream or published by a tool, for which nobody waits.
fn reply_to(message: &jetstream::Message) -> Option<&str> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(REPLY_TO_HEADER))
        .map(|value| value.as_str())
}

/// Where this order's answer goes, as its front asked (see [`messages::REPLY_TOKEN_HEADER`]).
fn reply_target(message: &jetstream::Message) -> Option<ReplyTarget<'_>> {
    let token = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(REPLY_TOKEN_HEADER))
        .map(|value| value.as_str());
    Some(ReplyTarget::of(reply_to(message)?, token))
}

/// The producer span of one order's confirmation, in that order's trace.
fn confirm_span(parent: &tracing::Span) -> tracing::Span {
    tracing::info_span!(
        parent: parent,
        "orders confirm",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
    )
}

/// Sends one confirmation on `inbox`, carrying this order's trace context so the front's wait
/// links to it.
async fn reply(context: &BatchContext, inbox: &str, confirmation: &Confirmation) {
    let span = confirm_span(&tracing::Span::current());
    let sent = async {
        let mut headers = HeaderMap::new();
        telemetry::nats::inject_current(&mut headers);
        context
            .client
            .publish_with_headers(inbox.to_owned(), headers, messages::encode(confirmation))
            .await
    }
    .instrument(span)
    .await;
    if let Err(error) = sent {
        // The shopper's page falls back to "being saved" and learns the state by a status request.
        tracing::warn!(%error, order_id = %confirmation.id, "confirmation not sent");
    }
}
