//! The operators' view of the dead-letter stream: list what is there and why, and put orders
//! back into the queue once the cause is fixed (`just dlq`, `just dlq-replay`).

use std::io::Write;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use finalprice_shared::config::NatsConfig;
use finalprice_shared::messages::{self, ENVELOPE_HEADER, order_subject};
use finalprice_shared::nats;
use uuid::Uuid;

/// One dead letter, as operators see it: ids and reasons, no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence in `ORDERS_DLQ`: what `dlq-replay` takes.
    pub sequence: u64,
    pub order_id: Option<Uuid>,
    pub reason: String,
    pub deliveries: u64,
    /// The sequence in `ORDERS` of the message that carried it, and its place in that
    /// message when the message was an envelope.
    pub orders_sequence: u64,
    pub position: Option<usize>,
    pub dead_lettered_at: String,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Sequences(Vec<u64>),
}

/// The dead-letter stream, created from `nats/` if missing.
pub async fn open(config: &NatsConfig) -> anyhow::Result<(jetstream::Context, stream::Stream)> {
    let client = nats::connect(config, "finalprice-admin").await?;
    let js = nats::jetstream(client, config);
    let stream = nats::ensure_dead_letter_stream(&js, config)
        .await
        .context("is nats-server running with JetStream enabled?")?;
    Ok((js, stream))
}

/// Every dead letter, oldest first.
pub async fn list(stream: &mut stream::Stream) -> anyhow::Result<Vec<DeadLetter>> {
    let state = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    // Read at the stream's leader, not by direct get: a replica that lags behind would answer
    // "not found" for a letter that is there, and the list would leave it out.
    for sequence in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(sequence).await {
            Ok(message) => letters.push(describe(sequence, &message.headers, message.time)),
            Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(letters)
}

fn describe(
    sequence: u64,
    headers: &HeaderMap,
    time: async_nats::datetime::DateTime,
) -> DeadLetter {
    let letter = messages::DeadLetter::read(headers);
    DeadLetter {
        sequence,
        order_id: letter.order_id,
        reason: letter.reason,
        deliveries: letter.deliveries,
        orders_sequence: letter.orders_sequence,
        position: letter.position,
        dead_lettered_at: time.to_string(),
    }
}

/// Writes the list as a table for `just dlq`.
pub fn print(letters: &[DeadLetter], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{} dead letter(s) in ORDERS_DLQ", letters.len())?;
    for letter in letters {
        let id = letter
            .order_id
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        // Where it came from: the ORDERS message, and its place there if that was an envelope.
        let from = match letter.position {
            Some(position) => format!("{}#{position}", letter.orders_sequence),
            None => letter.orders_sequence.to_string(),
        };
        writeln!(
            out,
            "seq {:>6}  order {id}  from {from}  at {}  deliveries {}  reason: {}",
            letter.sequence, letter.dead_lettered_at, letter.deliveries, letter.reason
        )?;
    }
    Ok(())
}

/// Publishes the selected dead letters back to `ORDERS` and deletes each from the dead-letter
/// stream once JetStream has acknowledged it. Returns the sequences replayed; a dead letter
/// without an order id cannot be replayed (it never decoded) and is left in place.
pub async fn replay(
    js: &jetstream::Context,
    stream: &mut stream::Stream,
    selection: &Selection,
) -> anyhow::Result<Vec<u64>> {
    let wanted: Vec<DeadLetter> = list(stream)
        .await?
        .into_iter()
        .filter(|letter| match selection {
            Selection::All => true,
            Selection::Sequences(sequences) => sequences.contains(&letter.sequence),
        })
        .collect();
    let mut replayed = Vec::with_capacity(wanted.len());
    for letter in wanted {
        let Some(id) = letter.order_id else {
            tracing::warn!(
                sequence = letter.sequence,
                "no order id: left in the dead-letter stream"
            );
            continue;
        };
        let message = stream.get_raw_message(letter.sequence).await?;
        let mut headers = HeaderMap::new();
        // A fresh message id: the original may still be inside the duplicate window. The order
        // id stays the primary key, so a replay of a committed order is still one row.
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("replay-{}-{}", id, letter.sequence).as_str(),
        );
        if let Some(traceparent) = message.headers.get("traceparent") {
            headers.insert("traceparent", traceparent.as_str());
        }
        // A whole envelope (one that a worker of an earlier release could not read, in a
        // rolling upgrade begun with the fronts) goes back as an envelope; nobody waits on it.
        if let Some(count) = message.headers.get(ENVELOPE_HEADER) {
            headers.insert(ENVELOPE_HEADER, count.as_str());
        }
        js.publish_with_headers(order_subject(id), headers, message.payload.clone())
            .await?
            .await
            .with_context(|| format!("replaying dead letter {}", letter.sequence))?;
        stream.delete_message(letter.sequence).await?;
        replayed.push(letter.sequence);
    }
    Ok(replayed)
}
