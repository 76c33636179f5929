//! One batch of deliveries → one transaction → one outcome per order, then the confirmations
//! and the acks, in that order: nothing is confirmed before its commit, nothing is acked before
//! its confirmation is on the wire.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, HeaderMap};
use finalprice_db::entity::orders;
use finalprice_shared::messages::{self, Confirmation, NewOrder, Outcome, REPLY_TO_HEADER};
use finalprice_shared::telemetry;
use opentelemetry::trace::TraceContextExt;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, sea_query::OnConflict};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::stats::WorkerStats;

/// What one batch needs besides its messages.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub client: Client,
    pub db: DatabaseConnection,
    pub stats: Arc<WorkerStats>,
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
}

/// Why an order can never be written. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("malformed or invalid order: {0}")]
    Malformed(String),
}

/// A delivery whose payload decoded into a valid order.
#[derive(Debug)]
struct Accepted {
    order: NewOrder,
    message: jetstream::Message,
}

/// Inserts the orders in one statement (so one transaction); an order already present is
/// skipped. Returns the ids this call inserted; the others were committed before.
pub async fn commit_orders(
    db: &DatabaseConnection,
    orders: &[NewOrder],
) -> Result<HashSet<Uuid>, DbErr> {
    // A redelivery can meet its original in the same batch; one row per id per statement.
    let mut seen = HashSet::with_capacity(orders.len());
    let rows: Vec<orders::ActiveModel> = orders
        .iter()
        .filter(|order| seen.insert(order.id))
        .map(orders::ActiveModel::from)
        .collect();
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let inserted = orders::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::column(orders::Column::Id)
                .do_nothing()
                .to_owned(),
        )
        .exec_with_returning_keys(db)
        .await?;
    Ok(inserted.into_iter().collect())
}

/// Handles one batch end to end. Never fails: every message leaves with a confirmation and an
/// ack, a term, or a nak that brings it back later.
pub async fn handle_batch(context: &BatchContext, messages: Vec<jetstream::Message>) {
    let span = tracing::info_span!(
        "worker.batch",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.batch.message_count = messages.len(),
    );
    for message in &messages {
        if let Some(headers) = message.headers.as_ref() {
            let parent = telemetry::nats::extract(headers);
            let span_context = parent.span().span_context().clone();
            if span_context.is_valid() {
                span.add_link(span_context);
            }
        }
    }
    handle_batch_inner(context, messages).instrument(span).await;
}

async fn handle_batch_inner(context: &BatchContext, messages: Vec<jetstream::Message>) {
    let mut accepted = Vec::with_capacity(messages.len());
    for message in messages {
        match messages::decode::<NewOrder>(&message.payload) {
            Ok(order) => accepted.push(Accepted { order, message }),
            Err(error) => {
                reject(
                    context,
                    &message,
                    RejectReason::Malformed(error.to_string()),
                )
                .await
            }
        }
    }
    if accepted.is_empty() {
        return;
    }

    let orders: Vec<NewOrder> = accepted.iter().map(|a| a.order.clone()).collect();
    let commit = commit_orders(&context.db, &orders)
        .instrument(tracing::info_span!(
            "db.insert orders",
            otel.kind = "client",
            db.operation.name = "INSERT",
            db.collection.name = "orders",
            db.operation.batch.size = orders.len(),
        ))
        .await;
    match commit {
        Ok(inserted) => {
            let fresh = inserted.len() as u64;
            context
                .stats
                .batch_committed(fresh, accepted.len() as u64 - fresh);
            tracing::debug!(orders = accepted.len(), inserted = fresh, "batch committed");
            for Accepted { order, message } in &accepted {
                let confirmation = Confirmation {
                    id: order.id,
                    outcome: Outcome::Accepted,
                };
                reply(context, message, &confirmation).await;
            }
            for Accepted { message, .. } in &accepted {
                if let Err(error) = message.ack().await {
                    // The row is committed; a redelivery will find it and confirm again.
                    tracing::warn!(%error, "ack failed; the order will be redelivered");
                }
            }
        }
        Err(error) => {
            context.stats.batch_failed();
            tracing::warn!(error = %error, orders = accepted.len(), "batch not committed; handing it back for a retry");
            for Accepted { message, .. } in &accepted {
                let delay = retry_delay(context, message);
                if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(%error, "nak failed; the order returns after ack_wait");
                }
            }
        }
    }
}

/// The redelivery delay: `retry_delay` doubled per earlier delivery, at most `retry_max_delay`.
fn retry_delay(context: &BatchContext, message: &jetstream::Message) -> Duration {
    let delivered = message
        .info()
        .map(|info| info.delivered)
        .unwrap_or(1)
        .max(1);
    let doublings = u32::try_from(delivered - 1).unwrap_or(u32::MAX).min(16);
    context
        .retry_delay
        .saturating_mul(1 << doublings)
        .min(context.retry_max_delay)
}

/// Tells a waiting shopper the order was not saved, and removes it from the queue.
async fn reject(context: &BatchContext, message: &jetstream::Message, reason: RejectReason) {
    context.stats.rejected(1);
    let id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|id| Uuid::parse_str(id.as_str()).ok());
    let stream_sequence = message.info().map(|info| info.stream_sequence).ok();
    tracing::warn!(order_id = ?id, stream_sequence, %reason, "order rejected");
    if let Some(id) = id {
        let confirmation = Confirmation {
            id,
            outcome: Outcome::Rejected {
                reason: reason.to_string(),
            },
        };
        reply(context, message, &confirmation).await;
    }
    if let Err(error) = message.ack_with(AckKind::Term).await {
        tracing::warn!(%error, "term failed; the order will be redelivered and rejected again");
    }
}

/// Sends a confirmation to the inbox the front named, with the trace context of this batch.
async fn reply(context: &BatchContext, message: &jetstream::Message, confirmation: &Confirmation) {
    let Some(inbox) = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(REPLY_TO_HEADER))
    else {
        // Replayed from the dead-letter stream, or published by a tool: nobody is waiting.
        return;
    };
    let mut headers = HeaderMap::new();
    telemetry::nats::inject_current(&mut headers);
    if let Err(error) = context
        .client
        .publish_with_headers(
            inbox.as_str().to_owned(),
            headers,
            messages::encode(confirmation),
        )
        .await
    {
        // The shopper's page falls back to "being saved" and learns the state by a status request.
        tracing::warn!(%error, order_id = %confirmation.id, "confirmation not sent");
    }
}
