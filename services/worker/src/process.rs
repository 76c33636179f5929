//! One pull of deliveries → chunks of at most `worker.batch_size` orders, committed side by
//! side, one transaction each → one outcome per order, then the confirmations (one message per
//! front inbox that asks for it) and the acks, in that order: nothing is confirmed before its
//! commit, nothing is acked before its confirmation is on the wire.
//!
//! A message carries one order, or an envelope of several (see `messages::ENVELOPE_HEADER`);
//! either way each order is committed, confirmed or dead-lettered on its own, and the message
//! is acked only once every order in it is committed or dead-lettered. A chunk the database
//! refuses is retried order by order, so one bad order cannot hold back the others. What is
//! done with each order is decided by `decide` (pure, tested case by case); this module
//! reads the messages, commits, and carries the decision out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use finalprice_db::entity::orders;
use finalprice_shared::messages::{
    self, AddressedConfirmation, Confirmation, DeadLetter, NewOrder, Outcome, REPLY_TO_HEADER,
    REPLY_TOKEN_HEADER, ReplyTarget,
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

use crate::decide::{self, Attempt, Policy, Reason, Settle, Verdict};
use crate::error::{CommitFailure, classify};
use crate::stats::WorkerStats;

/// What one batch needs besides its messages.
#[derive(Debug, Clone)]
pub(crate) struct BatchContext {
    pub client: Client,
    /// Publishes dead letters (and waits for their PubAck).
    pub js: jetstream::Context,
    pub db: DatabaseConnection,
    pub stats: Arc<WorkerStats>,
    /// When an order is retried and when it is dead-lettered.
    pub policy: Policy,
    /// How long a batch's statement may take before it is given up (and the batch retried).
    pub commit_timeout: Duration,
    /// The most orders one statement commits: envelopes make a batch of messages hold many
    /// more orders than messages.
    pub max_orders: usize,
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

/// One order of a delivered message.
struct Entry {
    /// The order, or why it cannot be read.
    order: Result<NewOrder, String>,
    /// Its id, even when the rest of it cannot be read: its dead letter names it, and its
    /// shopper is answered.
    id: Option<Uuid>,
    /// Its place in its envelope; `None` when the message is the order itself (or an envelope
    /// that cannot be opened, which then goes to the dead-letter stream whole).
    position: Option<usize>,
    /// Its waiter within the envelope's inbox.
    token: Option<u64>,
    /// Its bytes: a dead letter's payload, replayable as an order alone.
    payload: Bytes,
    /// The consumer span that continues the order's trace in this worker.
    span: tracing::Span,
}

/// The id only: the order's own `Debug` hides name and phone, the payload would not.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// A delivered message and the orders it carries.
struct Parcel {
    message: jetstream::Message,
    delivered: i64,
    /// Whether the message is an envelope, whose inbox is shared by its orders.
    envelope: bool,
    entries: Vec<Entry>,
}

impl Parcel {
    fn open(message: jetstream::Message) -> Self {
        let delivered = deliveries(&message);
        let envelope = message.headers.as_ref().is_some_and(messages::is_envelope);
        let entries = if envelope {
            envelope_entries(&message, delivered)
        } else {
            vec![whole_message(&message, delivered, None)]
        };
        Self {
            message,
            delivered,
            envelope,
            entries,
        }
    }

    /// Where the answer for `entry` goes, as its front asked (see
    /// [`messages::REPLY_TOKEN_HEADER`]); `None` for orders nobody waits for (a replay, a tool).
    fn reply_target(&self, entry: &Entry) -> Option<ReplyTarget<'_>> {
        let headers = self.message.headers.as_ref()?;
        let reply_to = headers.get(REPLY_TO_HEADER)?.as_str();
        if self.envelope {
            return entry.token.map(|token| ReplyTarget::Gathered {
                inbox: reply_to,
                token,
            });
        }
        let token = headers.get(REPLY_TOKEN_HEADER).map(|value| value.as_str());
        Some(ReplyTarget::of(reply_to, token))
    }
}

/// The message as one order: the form every front sends an order alone in, or an envelope
/// that cannot be opened (`unreadable`).
fn whole_message(
    message: &jetstream::Message,
    delivered: i64,
    unreadable: Option<String>,
) -> Entry {
    // From the subject, which the front and a replay alike publish on (`orders.<id>`): a
    // replay has a message id of its own, and a header could name any order.
    let id = messages::order_id_from_subject(&message.subject);
    let span = order_span(id, delivered);
    telemetry::nats::set_parent_from(&span, message.headers.as_ref());
    let order = match unreadable {
        Some(reason) => Err(reason),
        None => messages::decode::<NewOrder>(&message.payload).map_err(|error| error.to_string()),
    };
    Entry {
        order,
        id,
        position: None,
        token: None,
        payload: message.payload.clone(),
        span,
    }
}

/// Each order of an envelope, read on its own. An envelope that cannot be opened, holds more
/// orders than [`messages::MAX_ENVELOPE_ORDERS`] or not as many as its header says is no
/// front's: it goes to the dead-letter stream whole, and costs no work per entry.
fn envelope_entries(message: &jetstream::Message, delivered: i64) -> Vec<Entry> {
    let entries = match messages::open_envelope(&message.payload) {
        Ok(entries) => entries,
        Err(error) => return vec![whole_message(message, delivered, Some(error.to_string()))],
    };
    let announced = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(messages::ENVELOPE_HEADER))
        .and_then(|count| count.as_str().trim().parse::<usize>().ok());
    if entries.len() > messages::MAX_ENVELOPE_ORDERS || announced != Some(entries.len()) {
        let reason = format!(
            "an envelope of {} orders announced as {announced:?} (at most {})",
            entries.len(),
            messages::MAX_ENVELOPE_ORDERS
        );
        return vec![whole_message(message, delivered, Some(reason))];
    }
    entries
        .iter()
        .enumerate()
        .map(|(position, entry)| {
            let id = entry.order_id();
            let span = order_span(id, delivered);
            telemetry::nats::set_parent_from_traceparent(&span, entry.traceparent());
            Entry {
                order: entry.order().map_err(|error| error.to_string()),
                id,
                position: Some(position),
                token: entry.token(),
                payload: part_of(&message.payload, entry.order_bytes()),
                span,
            }
        })
        .collect()
}

/// `part` (a slice of `whole`) as a `Bytes` sharing `whole`'s buffer.
fn part_of(whole: &Bytes, part: &[u8]) -> Bytes {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if start <= whole.len() && whole.len() - start >= part.len() {
        whole.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Handles one batch end to end. Never fails: every order leaves with a confirmation, a dead
/// letter or a retry, and every message with an ack or a nak that brings it back later.
pub(crate) async fn handle_batch(context: &BatchContext, messages: Vec<jetstream::Message>) {
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
    let parcels: Vec<Parcel> = messages.into_iter().map(Parcel::open).collect();
    // Side by side, not one after another: a pull of envelopes can hold many times
    // `batch_size` orders, and the last chunk's shoppers would otherwise wait for every commit
    // before theirs (the database pool bounds how many run at once).
    let chunks = chunks(parcels, context.max_orders)
        .into_iter()
        .map(|chunk| handle_chunk(context, chunk).instrument(batch_span.clone()));
    futures_util::future::join_all(chunks).await;
}

/// The messages in groups of at most `max_orders` orders each, every message whole in one
/// group (a message with more orders than that is a group of its own).
fn chunks(parcels: Vec<Parcel>, max_orders: usize) -> Vec<Vec<Parcel>> {
    let mut chunks: Vec<Vec<Parcel>> = Vec::new();
    let mut orders = 0;
    for parcel in parcels {
        let size = parcel.entries.len();
        match chunks.last_mut() {
            Some(chunk) if orders + size <= max_orders => chunk.push(parcel),
            _ => {
                chunks.push(vec![parcel]);
                orders = 0;
            }
        }
        orders += size;
    }
    chunks
}

async fn handle_chunk(context: &BatchContext, parcels: Vec<Parcel>) {
    let attempts = commit_chunk(context, &parcels).await;
    let plans = parcels
        .iter()
        .zip(&attempts)
        .map(|(parcel, attempts)| decide::decide(&context.policy, parcel.delivered, attempts))
        .collect();
    carry_out(context, &parcels, plans).await;
}

/// Commits every readable order of the chunk in one transaction; if the database refuses the
/// transaction, each order alone. Returns what became of each order, message by message.
async fn commit_chunk(context: &BatchContext, parcels: &[Parcel]) -> Vec<Vec<Attempt>> {
    let readable: Vec<&Entry> = parcels
        .iter()
        .flat_map(|parcel| &parcel.entries)
        .filter(|entry| entry.order.is_ok())
        .collect();
    let mut alone: HashMap<usize, Attempt> = HashMap::new();
    let together = match commit(context, &readable).await {
        Ok(()) => Attempt::Committed,
        Err(error) => {
            let failure = classify(&error);
            context.stats.batch_failed(failure);
            match failure {
                CommitFailure::Transient => {
                    tracing::warn!(%error, orders = readable.len(), "batch not committed; retrying later");
                    Attempt::NotNow
                }
                CommitFailure::Permanent => {
                    tracing::warn!(%error, orders = readable.len(), "batch refused; committing its orders one by one");
                    for (index, entry) in readable.iter().enumerate() {
                        let attempt = commit_alone(context, entry)
                            .instrument(entry.span.clone())
                            .await;
                        alone.insert(index, attempt);
                    }
                    Attempt::NotNow
                }
            }
        }
    };
    let mut index = 0;
    parcels
        .iter()
        .map(|parcel| {
            parcel
                .entries
                .iter()
                .map(|entry| match &entry.order {
                    Err(reason) => Attempt::Unreadable(reason.clone()),
                    Ok(_) => {
                        let attempt = alone.remove(&index).unwrap_or_else(|| together.clone());
                        index += 1;
                        attempt
                    }
                })
                .collect()
        })
        .collect()
}

/// One order of a refused batch, on its own.
async fn commit_alone(context: &BatchContext, entry: &Entry) -> Attempt {
    let Err(error) = commit(context, std::slice::from_ref(&entry)).await else {
        return Attempt::Committed;
    };
    match classify(&error) {
        CommitFailure::Permanent => Attempt::Refused(error.to_string()),
        CommitFailure::Transient => {
            tracing::warn!(%error, order_id = ?entry.id, "order not committed; retrying later");
            Attempt::NotNow
        }
    }
}

/// Commits the readable orders of `entries` in one transaction.
async fn commit(context: &BatchContext, entries: &[&Entry]) -> Result<(), DbErr> {
    let orders: Vec<&NewOrder> = entries
        .iter()
        .filter_map(|entry| entry.order.as_ref().ok())
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    // One database span for the one transaction, linked to every order it carries; and in each
    // order's own trace a step for the commit it waited on, linked back to that span.
    let db_span = tracing::info_span!(
        "INSERT orders",
        otel.kind = "client",
        db.system.name = context.db.get_database_backend().as_str(),
        db.operation.name = "INSERT",
        db.collection.name = "orders",
        db.operation.batch.size = orders.len(),
    );
    let db_context = db_span.context().span().span_context().clone();
    let waits: Vec<tracing::Span> = entries
        .iter()
        .map(|entry| {
            db_span.add_link(entry.span.context().span().span_context().clone());
            let wait = tracing::info_span!(
                parent: &entry.span,
                "orders commit",
                db.operation.batch.size = orders.len()
            );
            wait.add_link(db_context.clone());
            wait
        })
        .collect();
    let started = Instant::now();
    // Run with no current span: the pool spawns long-lived tasks that would adopt it (and with
    // it every span above) as parent and keep it from ever closing. `db_span` times the
    // statement from outside instead.
    let inserted =
        commit_orders(&context.db, orders.iter().copied()).instrument(tracing::Span::none());
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
        .batch_committed(fresh, orders.len() as u64 - fresh, started.elapsed());
    tracing::debug!(orders = orders.len(), inserted = fresh, "batch committed");
    Ok(())
}

/// Carries out each message's plan: dead letters stored first, then every shopper told (the
/// accepted gathered per front inbox), then each message acked or handed back. A dead letter
/// that cannot be stored hands its message back, and nobody is told about it yet.
async fn carry_out(context: &BatchContext, parcels: &[Parcel], plans: Vec<decide::Plan>) {
    let mut settles = Vec::with_capacity(parcels.len());
    let mut rejections = Vec::new();
    for (parcel, plan) in parcels.iter().zip(&plans) {
        let mut settle = plan.settle;
        let mut stored = Vec::new();
        for (entry, verdict) in parcel.entries.iter().zip(&plan.verdicts) {
            if let Verdict::DeadLetter(reason) = verdict {
                let span = entry.span.clone();
                if store_dead_letter(context, parcel, entry, reason)
                    .instrument(span)
                    .await
                {
                    stored.push((entry, reason));
                } else {
                    settle =
                        Settle::RetryAfter(decide::retry_delay(&context.policy, parcel.delivered));
                }
            }
        }
        if settle == Settle::Ack {
            rejections.extend(
                stored
                    .into_iter()
                    .map(|(entry, reason)| (parcel, entry, reason)),
            );
        }
        settles.push(settle);
    }

    confirm_accepted(context, parcels, &plans).await;
    for (parcel, entry, reason) in rejections {
        reject(context, parcel, entry, reason)
            .instrument(entry.span.clone())
            .await;
    }

    for (parcel, settle) in parcels.iter().zip(settles) {
        match settle {
            Settle::Ack => {
                if let Err(error) = parcel.message.ack().await {
                    // Every order in it is committed or dead-lettered; a redelivery finds them
                    // so and answers again.
                    tracing::warn!(%error, "ack failed; the message will be redelivered");
                }
            }
            Settle::RetryAfter(delay) => {
                tracing::debug!(?delay, delivered = parcel.delivered, "message handed back");
                if let Err(error) = parcel.message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(%error, "nak failed; the message returns after ack_wait");
                }
            }
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

/// The consumer span of one order: a child of the front's publish span (its parent is set by
/// the caller), so the order's one trace runs from the browser's POST through this worker.
fn order_span(id: Option<Uuid>, delivered: i64) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "orders process",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = "orders",
        messaging.message.id = id.map(tracing::field::display),
        messaging.message.delivery_count = delivered,
    )
}

/// Stores one order that can never be written in the dead-letter stream, alone, with its
/// reason. Returns whether it is stored (then, and only then, may its message be acked).
async fn store_dead_letter(
    context: &BatchContext,
    parcel: &Parcel,
    entry: &Entry,
    reason: &Reason,
) -> bool {
    let Ok(info) = parcel.message.info() else {
        tracing::error!("delivery without JetStream metadata; cannot dead-letter it");
        return false;
    };
    let sequence = info.stream_sequence;
    let mut headers = HeaderMap::new();
    match entry.position {
        // One order of an envelope: its own trace context, none of the envelope's headers.
        Some(_) => telemetry::nats::inject_current(&mut headers),
        None => carry_over(&parcel.message, &mut headers),
    }
    let letter = DeadLetter {
        reason: reason.to_string(),
        deliveries: u64::try_from(info.delivered).unwrap_or_default(),
        orders_sequence: sequence,
        order_id: entry.id,
        position: entry.position,
    };
    letter.write(&mut headers);
    let stored = async {
        context
            .js
            .publish_with_headers(
                messages::dead_letter_subject(sequence),
                headers,
                entry.payload.clone(),
            )
            .await?
            .await
    }
    .await;
    if let Err(error) = stored {
        tracing::warn!(%error, stream_sequence = sequence, "dead letter not stored; retrying later");
        return false;
    }
    context.stats.dead_lettered();
    tracing::warn!(
        order_id = ?entry.id,
        stream_sequence = sequence,
        position = ?entry.position,
        delivered = parcel.delivered,
        %reason,
        "order dead-lettered"
    );
    true
}

/// The headers of an order sent alone that its dead letter keeps.
fn carry_over(message: &jetstream::Message, headers: &mut HeaderMap) {
    for (name, values) in message.headers.iter().flat_map(|headers| headers.iter()) {
        let name: &str = name.as_ref();
        if name == REPLY_TO_HEADER || name == REPLY_TOKEN_HEADER {
            continue; // nobody will wait on a replayed dead letter
        }
        // Set from what this worker saw, never carried over from the message.
        if DeadLetter::is_own_header(name) {
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
}

/// Tells a waiting shopper that their order was dead-lettered: alone, whatever the reply-to,
/// since a dead letter is rare and the front reads both forms.
async fn reject(context: &BatchContext, parcel: &Parcel, entry: &Entry, reason: &Reason) {
    let (Some(id), Some(target)) = (entry.id, parcel.reply_target(entry)) else {
        return;
    };
    let subject = match target {
        ReplyTarget::Gathered { inbox, token } => format!("{inbox}.{token}"),
        ReplyTarget::Alone(subject) => subject.to_owned(),
    };
    let confirmation = Confirmation {
        id,
        outcome: Outcome::Rejected {
            reason: reason.to_string(),
        },
    };
    reply(context, subject, &confirmation).await;
}

/// Tells the shoppers of committed orders: one message per front inbox for all the orders it
/// waits on (nats-server and the front handle one message instead of hundreds), a message of
/// its own for any other reply-to. Each order still gets its own confirm span in its trace.
async fn confirm_accepted(context: &BatchContext, parcels: &[Parcel], plans: &[decide::Plan]) {
    let mut gathered: HashMap<&str, Vec<AddressedConfirmation>> = HashMap::new();
    let mut spans = Vec::new();
    for (parcel, plan) in parcels.iter().zip(plans) {
        for (entry, verdict) in parcel.entries.iter().zip(&plan.verdicts) {
            let (Verdict::Confirm, Ok(order)) = (verdict, &entry.order) else {
                continue;
            };
            let confirmation = Confirmation {
                id: order.id,
                outcome: Outcome::Accepted,
            };
            match parcel.reply_target(entry) {
                Some(ReplyTarget::Gathered { inbox, token }) => {
                    let span = confirm_span(&entry.span);
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
                    reply(context, subject.to_owned(), &confirmation)
                        .instrument(entry.span.clone())
                        .await;
                }
                None => {}
            }
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

/// Sends one confirmation on `subject`, carrying this order's trace context so the front's
/// wait links to it.
async fn reply(context: &BatchContext, subject: String, confirmation: &Confirmation) {
    let span = confirm_span(&tracing::Span::current());
    let sent = async {
        let mut headers = HeaderMap::new();
        telemetry::nats::inject_current(&mut headers);
        context
            .client
            .publish_with_headers(subject, headers, messages::encode(confirmation))
            .await
    }
    .instrument(span)
    .await;
    if let Err(error) = sent {
        // The shopper's page falls back to "being saved" and learns the state by a status request.
        tracing::warn!(%error, order_id = %confirmation.id, "confirmation not sent");
    }
}
