//! Wire messages between front and worker, and the NATS names they travel on.
//!
//! Order path: the front publishes a [`NewOrder`] on [`order_subject`] with the reply inbox in
//! [`REPLY_TO_HEADER`], or, when several orders reached it while its previous publish awaited
//! its PubAck, an envelope of them ([`ENVELOPE_HEADER`], [`EnvelopeBuilder`], [`open_envelope`]);
//! the worker answers a [`Confirmation`] on that inbox after its commit, gathered per inbox and
//! batch when the front asks for it (see [`REPLY_TOKEN_HEADER`]). An order that can never be
//! written goes to the dead-letter stream alone, described by a [`DeadLetter`].
//! Status path: the front asks [`STATUS_SUBJECT`] with an order id and a worker answers a
//! [`StatusReply`].

use async_nats::HeaderMap;
use bytes::{BufMut as _, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::{CustomerName, PhoneNumber};

/// The header carrying the front's reply inbox: JetStream keeps the message's own reply subject
/// for acks, so the worker cannot answer there.
pub const REPLY_TO_HEADER: &str = "FinalPrice-Reply-To";

/// Why an order was dead-lettered (operators' words: no personal data).
pub const DEAD_LETTER_REASON_HEADER: &str = "FinalPrice-Dead-Letter-Reason";
/// On which delivery it was dead-lettered.
pub const DEAD_LETTER_DELIVERIES_HEADER: &str = "FinalPrice-Dead-Letter-Deliveries";
/// The order's id, when the dead letter had one.
pub const DEAD_LETTER_ORDER_ID_HEADER: &str = "FinalPrice-Order-Id";
/// The sequence in the `ORDERS` stream of the message that carried it.
pub const DEAD_LETTER_SEQUENCE_HEADER: &str = "FinalPrice-Dead-Letter-Sequence";
/// Its place in that message when the message was an envelope (0 for the first order).
pub const DEAD_LETTER_POSITION_HEADER: &str = "FinalPrice-Dead-Letter-Position";

/// What a dead letter's headers say about it: written by the worker that stores it, read by
/// `just dlq` and `just dlq-replay`, both through this type. No personal data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadLetter {
    /// Why it can never be written.
    pub reason: String,
    /// On which delivery it was dead-lettered.
    pub deliveries: u64,
    /// The sequence in `ORDERS` of the message that carried it.
    pub orders_sequence: u64,
    /// The order's id, when it could be read.
    pub order_id: Option<Uuid>,
    /// Its place in its envelope; `None` when the message carried it alone.
    pub position: Option<usize>,
}

impl DeadLetter {
    /// The headers a dead letter carries besides those kept from the order: these, and a
    /// `Nats-Msg-Id` that makes storing it again (a worker's retry, a redelivery within the
    /// duplicate window) store it once.
    pub fn write(&self, headers: &mut HeaderMap) {
        let message_id = match self.position {
            Some(position) => format!("dead-letter-{}-{position}", self.orders_sequence),
            None => format!("dead-letter-{}", self.orders_sequence),
        };
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
        // On one line: a database's message can hold line breaks, which a header value cannot
        // (async-nats panics on one).
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        headers.insert(DEAD_LETTER_REASON_HEADER, reason.as_str());
        headers.insert(
            DEAD_LETTER_DELIVERIES_HEADER,
            self.deliveries.to_string().as_str(),
        );
        headers.insert(
            DEAD_LETTER_SEQUENCE_HEADER,
            self.orders_sequence.to_string().as_str(),
        );
        if let Some(id) = self.order_id {
            headers.insert(DEAD_LETTER_ORDER_ID_HEADER, id.to_string().as_str());
        }
        if let Some(position) = self.position {
            headers.insert(DEAD_LETTER_POSITION_HEADER, position.to_string().as_str());
        }
    }

    /// The inverse of [`DeadLetter::write`]; what is missing or unreadable is left empty.
    pub fn read(headers: &HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).map(|value| value.as_str().trim());
        let number = |name: &str| header(name).and_then(|value| value.parse::<u64>().ok());
        Self {
            reason: header(DEAD_LETTER_REASON_HEADER)
                .unwrap_or_default()
                .to_owned(),
            deliveries: number(DEAD_LETTER_DELIVERIES_HEADER).unwrap_or_default(),
            orders_sequence: number(DEAD_LETTER_SEQUENCE_HEADER).unwrap_or_default(),
            order_id: header(DEAD_LETTER_ORDER_ID_HEADER).and_then(|id| Uuid::parse_str(id).ok()),
            position: header(DEAD_LETTER_POSITION_HEADER).and_then(|value| value.parse().ok()),
        }
    }

    /// Whether a header of a queued order is one of these, which a dead letter takes from the
    /// worker that stored it and never from the order.
    pub fn is_own_header(name: &str) -> bool {
        [
            DEAD_LETTER_REASON_HEADER,
            DEAD_LETTER_DELIVERIES_HEADER,
            DEAD_LETTER_ORDER_ID_HEADER,
            DEAD_LETTER_SEQUENCE_HEADER,
            DEAD_LETTER_POSITION_HEADER,
        ]
        .iter()
        .any(|ours| ours.eq_ignore_ascii_case(name))
    }
}

/// Workers answer order-status requests here, as one queue group.
pub const STATUS_SUBJECT: &str = "finalprice.status";

/// The queue group every worker joins for status requests, so one of them answers each.
pub const STATUS_QUEUE_GROUP: &str = "finalprice-workers";

/// Every running front and worker answers here (no queue group), so `status` can count them.
pub const PING_SUBJECT: &str = "finalprice.ping";

/// What a running service says about itself when pinged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// `finalprice-front` or `finalprice-worker`.
    pub service: String,
    /// This process's id, fresh at each start.
    pub instance: Uuid,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Whether it reads envelopes (a worker of an earlier release answers without this field).
    /// Fronts send every order alone while any worker that answers cannot read them.
    #[serde(default)]
    pub reads_envelopes: bool,
}

const ORDER_SUBJECT_PREFIX: &str = "orders.";

/// One subject per order, so that "is it still queued?" is a direct get by subject.
pub fn order_subject(id: Uuid) -> String {
    // Written directly, not with `format!`: this runs for every order on the front's hot path.
    let mut subject =
        String::with_capacity(ORDER_SUBJECT_PREFIX.len() + uuid::fmt::Hyphenated::LENGTH);
    subject.push_str(ORDER_SUBJECT_PREFIX);
    subject.push_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()));
    subject
}

/// The order a message on [`order_subject`] is about; `None` for any other subject.
pub fn order_id_from_subject(subject: &str) -> Option<Uuid> {
    Uuid::parse_str(subject.strip_prefix(ORDER_SUBJECT_PREFIX)?).ok()
}

/// Where an order that can never be written is kept: `dlq.orders.<stream sequence>`, so every
/// dead letter has its own subject even when its payload has no readable id.
pub fn dead_letter_subject(stream_sequence: u64) -> String {
    format!("dlq.orders.{stream_sequence}")
}

/// An order as the front hands it to the queue. The domain types re-validate on
/// deserialization, so a worker never commits what the front would have refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// Decided by the shopper's idempotency key: every retry of one submission names it.
    pub id: Uuid,
    pub name: CustomerName,
    pub phone: PhoneNumber,
    /// When the front accepted the submission; kept through redeliveries.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// The same RFC 3339 text as chrono's own `Serialize`, built as one string first. chrono's impl
/// goes through `collect_str`, which hands serde_json each of its ~15 pieces to escape on its
/// own; one string instead took 1.8 % off the front's instructions per order (callgrind).
fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// The worker's answer on the front's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    pub id: Uuid,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The header by which a publisher opts in to gathered confirmations: its value is the
/// decimal token that ends the reply-to (`<inbox>.<token>`). The worker then answers the
/// batch's accepted orders for that inbox together, as one [`AddressedConfirmation`] list on
/// `<inbox>.batch` ([`CONFIRMATIONS_TOKEN`]), one message per inbox instead of one per order.
/// Without it (an older front, a tool) the order gets a single [`Confirmation`] on its
/// reply-to, so fronts and workers of either version work together.
pub const REPLY_TOKEN_HEADER: &str = "FinalPrice-Reply-Token";

/// The last segment of the subject that carries gathered confirmations.
pub const CONFIRMATIONS_TOKEN: &str = "batch";

/// Where the answer for one order goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTarget<'a> {
    /// Gathered with the other answers for `inbox` under this `token`.
    Gathered { inbox: &'a str, token: u64 },
    /// Answered alone on the subject itself.
    Alone(&'a str),
}

impl<'a> ReplyTarget<'a> {
    /// Reads the reply-to header and the reply-token header, if any: gathered only when the
    /// token is a number and the reply-to is `<inbox>.<that token>`.
    pub fn of(reply_to: &'a str, token: Option<&str>) -> Self {
        let gathered = token.and_then(|token| {
            let inbox = reply_to.strip_suffix(token)?.strip_suffix('.')?;
            if !token.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let token = token.parse().ok()?;
            (!inbox.is_empty()).then_some(Self::Gathered { inbox, token })
        });
        gathered.unwrap_or(Self::Alone(reply_to))
    }
}

/// The subject of the gathered confirmations for `inbox`.
pub fn confirmations_subject(inbox: &str) -> String {
    format!("{inbox}.{CONFIRMATIONS_TOKEN}")
}

/// One order's answer within a gathered message: for the waiter registered as `token`, with the
/// trace context of the worker's span that sent it, as a W3C `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressedConfirmation {
    pub token: u64,
    pub confirmation: Confirmation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What became of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// The order is a committed row (now, or already before this delivery).
    Accepted,
    /// The order will never be written; `reason` is for operators and holds no personal data.
    Rejected { reason: String },
}

/// A status request: which order, and where to look for it in the stream if it is not yet
/// committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    pub id: Uuid,
    /// The stream sequence of the message that carried the order (its PubAck's), which the
    /// front puts in the link it answers with; the only way to find an order that travels in
    /// another order's envelope. Workers of earlier releases ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// The state of one order as the workers know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub id: Uuid,
    pub state: OrderState,
    /// The phone with all but a few digits hidden; never the full number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_masked: Option<String>,
}

impl StatusReply {
    /// Order `id` still waits in the stream in the message with this `subject`, `headers` and
    /// `payload` (the order alone or an envelope); `None` when that message does not carry it.
    /// An order alone is recognised by its subject (`orders.<id>`) even when it cannot be read.
    pub fn pending(id: Uuid, subject: &str, headers: &HeaderMap, payload: &[u8]) -> Option<Self> {
        let phone = if is_envelope(headers) {
            let envelope = open_envelope(payload).ok()?;
            let entry = envelope.iter().find(|entry| entry.order_id() == Some(id))?;
            entry.order().ok().map(|order| order.phone.masked())
        } else {
            if order_id_from_subject(subject) != Some(id) {
                return None;
            }
            decode::<NewOrder>(payload)
                .ok()
                .filter(|order| order.id == id)
                .map(|order| order.phone.masked())
        };
        Some(Self {
            id,
            state: OrderState::Pending,
            phone_masked: phone,
        })
    }
}

/// The header that marks a message as an envelope of several orders; its value is how many.
/// A message without it carries one [`NewOrder`], as every front before envelopes sent, and
/// as a front still sends an order that travels alone.
pub const ENVELOPE_HEADER: &str = "FinalPrice-Envelope";

/// The most orders a worker reads from one envelope; a front never gathers more (see
/// `nats.envelope_max_orders`), and one statement of that many rows stays within SQLite's limit
/// on bound values.
pub const MAX_ENVELOPE_ORDERS: usize = 1024;

/// Whether a message with these headers is an envelope.
pub fn is_envelope(headers: &HeaderMap) -> bool {
    headers.get(ENVELOPE_HEADER).is_some()
}

/// Writes an envelope, `{"orders":[{"token":…,"traceparent":…,"order":{…}},…]}`, from orders
/// each request has already encoded: the front's gathering task only copies bytes.
#[derive(Debug)]
pub struct EnvelopeBuilder {
    buffer: BytesMut,
    orders: usize,
}

impl Default for EnvelopeBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl EnvelopeBuilder {
    const OPEN: &'static [u8] = b"{\"orders\":[";
    const CLOSE: &'static [u8] = b"]}";

    /// An empty envelope with room for about `bytes` of orders.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buffer = BytesMut::with_capacity(bytes + Self::OPEN.len() + Self::CLOSE.len());
        buffer.put_slice(Self::OPEN);
        Self { buffer, orders: 0 }
    }

    /// How large the envelope would be with one more entry of `order_bytes` (an upper bound,
    /// for the front's size limit).
    pub fn size_with(&self, order_bytes: usize) -> usize {
        // Separator, keys and punctuation (~40), a token (≤ 20 digits), a traceparent (55).
        self.buffer.len() + order_bytes + 120 + Self::CLOSE.len()
    }

    /// How many orders it holds.
    pub fn len(&self) -> usize {
        self.orders
    }

    pub fn is_empty(&self) -> bool {
        self.orders == 0
    }

    /// Adds one order: `order` is its [`encode`]d [`NewOrder`], `token` the waiter to answer
    /// (see [`REPLY_TOKEN_HEADER`]), `traceparent` its trace context.
    pub fn push(&mut self, order: &[u8], token: u64, traceparent: Option<&str>) {
        if self.orders > 0 {
            self.buffer.put_u8(b',');
        }
        self.buffer.put_slice(b"{\"token\":");
        self.buffer
            .put_slice(itoa::Buffer::new().format(token).as_bytes());
        // A traceparent is hex digits and dashes; anything else is left out rather than escaped.
        if let Some(traceparent) = traceparent.filter(|traceparent| {
            traceparent
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-')
        }) {
            self.buffer.put_slice(b",\"traceparent\":\"");
            self.buffer.put_slice(traceparent.as_bytes());
            self.buffer.put_u8(b'"');
        }
        self.buffer.put_slice(b",\"order\":");
        self.buffer.put_slice(order);
        self.buffer.put_u8(b'}');
        self.orders += 1;
    }

    /// The envelope's payload.
    pub fn finish(mut self) -> Bytes {
        self.buffer.put_slice(Self::CLOSE);
        self.buffer.freeze()
    }
}

/// An envelope as a worker reads it: each entry on its own, so one unreadable order does not
/// make its neighbours unreadable.
#[derive(Debug, Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow)]
    orders: Vec<WireEntry<'a>>,
}

#[derive(Debug, Deserialize)]
struct WireEntry<'a> {
    #[serde(default)]
    token: Option<u64>,
    #[serde(default, borrow)]
    traceparent: Option<&'a str>,
    #[serde(borrow)]
    order: &'a RawValue,
}

/// Only the id of an order that does not decode, to name it in its dead letter and answer
/// its shopper.
#[derive(Deserialize)]
struct IdOnly {
    id: Uuid,
}

/// One order of an opened envelope.
#[derive(Debug)]
pub struct EnvelopeEntry<'a> {
    entry: WireEntry<'a>,
}

impl<'a> EnvelopeEntry<'a> {
    /// The order, validated as a worker must (see [`NewOrder`]).
    pub fn order(&self) -> Result<NewOrder, DecodeError> {
        decode(self.entry.order.get().as_bytes())
    }

    /// The order's id, even when the rest of it does not decode.
    pub fn order_id(&self) -> Option<Uuid> {
        serde_json::from_str::<IdOnly>(self.entry.order.get())
            .ok()
            .map(|order| order.id)
    }

    /// The order's own bytes: a dead letter's payload, replayable as an order alone.
    pub fn order_bytes(&self) -> &'a [u8] {
        self.entry.order.get().as_bytes()
    }

    /// The waiter to answer within the envelope's inbox.
    pub fn token(&self) -> Option<u64> {
        self.entry.token
    }

    /// The trace context of the order's publish.
    pub fn traceparent(&self) -> Option<&'a str> {
        self.entry.traceparent
    }
}

/// The entries of an envelope, in the order they were gathered.
pub fn open_envelope(payload: &[u8]) -> Result<Vec<EnvelopeEntry<'_>>, DecodeError> {
    let envelope: WireEnvelope<'_> = decode(payload)?;
    Ok(envelope
        .orders
        .into_iter()
        .map(|entry| EnvelopeEntry { entry })
        .collect())
}

/// Where an order is on its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderState {
    /// Committed in the database.
    Accepted,
    /// In the queue, not yet committed.
    Pending,
    /// Neither committed nor queued.
    Unknown,
}

/// A message that could not be decoded; says what, never the payload. serde's own text for a
/// value of the wrong type or content quotes the value (`invalid type: integer `79991234567``),
/// and this text goes to logs, to dead-letter headers and back to the front, so for those only
/// the position is given; a syntax error's text quotes nothing and is kept.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {}", describe(.0))]
pub struct DecodeError(#[from] serde_json::Error);

fn describe(error: &serde_json::Error) -> String {
    match error.classify() {
        serde_json::error::Category::Data => format!(
            "a field is missing, unknown or of the wrong type or value at line {} column {}",
            error.line(),
            error.column()
        ),
        serde_json::error::Category::Io
        | serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof => error.to_string(),
    }
}

/// JSON on the wire: small, debuggable with `nats sub`, and fast enough at our rates.
pub fn encode<T: Serialize>(message: &T) -> Bytes {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no I/O); were
    // it ever to, the empty payload fails to decode on the other side, visibly.
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

/// The inverse of [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    Ok(serde_json::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Country;

    #[test]
    fn a_decode_error_never_quotes_the_payload() {
        let id = Uuid::now_v7();
        for payload in [
            format!(r#"{{"id":"{id}","name":"Анна","phone":79991234567}}"#),
            format!(r#"{{"id":"{id}","name":"Анна","phone":"+79991234567","created_at":"Анна"}}"#),
            r#"{"id":"79991234567"}"#.to_owned(),
            r#"["Анна","+79991234567"]"#.to_owned(),
        ] {
            let error = decode::<NewOrder>(payload.as_bytes()).expect_err("not an order");
            let text = error.to_string();
            assert!(
                !text.contains("9991234567") && !text.contains("Анна"),
                "{text}"
            );
            assert!(text.contains("line 1 column"), "{text}");
        }
        let syntax = decode::<NewOrder>(b"{\"id\": ").expect_err("cut short");
        assert!(syntax.to_string().contains("EOF"), "{syntax}");
    }

    fn order() -> NewOrder {
        NewOrder {
            id: Uuid::now_v7(),
            name: CustomerName::parse("Анна").expect("valid"),
            phone: PhoneNumber::parse("8 999 123-45-67", Country::Russia).expect("valid"),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn an_order_subject_is_the_prefix_and_the_hyphenated_lowercase_id() {
        let id = Uuid::parse_str("0199A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B").expect("a UUID");
        assert_eq!(
            order_subject(id),
            "orders.0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(order_id_from_subject(&order_subject(id)), Some(id));
        for other in [
            "orders.",
            "orders.not-a-uuid",
            "dlq.orders.7",
            "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        ] {
            assert_eq!(order_id_from_subject(other), None, "{other}");
        }
    }

    #[test]
    fn an_orders_time_is_written_as_chrono_writes_it() {
        // Workers of the previous release read this text; it must not change with how it is built.
        let second = DateTime::parse_from_rfc3339("2026-11-27T00:00:07Z")
            .expect("a time")
            .with_timezone(&Utc);
        for nanos in [0, 120_000_000, 123_456_000, 123_456_789] {
            let at = second + chrono::Duration::nanoseconds(nanos);
            let encoded = encode(&NewOrder {
                created_at: at,
                ..order()
            });
            let wire: serde_json::Value = serde_json::from_slice(&encoded).expect("JSON");
            assert_eq!(
                wire["created_at"],
                serde_json::to_value(at).expect("chrono serializes"),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn an_order_round_trips() {
        let order = order();
        assert_eq!(decode::<NewOrder>(&encode(&order)).expect("decodes"), order);
    }

    #[test]
    fn a_worker_refuses_an_order_the_front_would_have_refused() {
        let id = Uuid::now_v7();
        let bad = format!(
            r#"{{"id":"{id}","name":"<script>","phone":"+79991234567","created_at":"2026-11-27T00:00:00Z"}}"#
        );
        assert!(decode::<NewOrder>(bad.as_bytes()).is_err());
        let bad_phone = format!(
            r#"{{"id":"{id}","name":"Анна","phone":"89991234567","created_at":"2026-11-27T00:00:00Z"}}"#
        );
        assert!(
            decode::<NewOrder>(bad_phone.as_bytes()).is_err(),
            "the wire carries E.164 only"
        );
    }

    #[test]
    fn confirmations_read_as_flat_json() {
        let id = Uuid::now_v7();
        let accepted = Confirmation {
            id,
            outcome: Outcome::Accepted,
        };
        assert_eq!(
            String::from_utf8(encode(&accepted).to_vec()).expect("utf-8"),
            format!(r#"{{"id":"{id}","status":"accepted"}}"#)
        );
        let rejected = Confirmation {
            id,
            outcome: Outcome::Rejected {
                reason: "malformed".into(),
            },
        };
        assert_eq!(
            decode::<Confirmation>(&encode(&rejected)).expect("decodes"),
            rejected
        );
    }

    #[test]
    fn only_a_reply_to_that_ends_in_its_announced_token_is_gathered() {
        assert_eq!(
            ReplyTarget::of("_INBOX.abc.17", Some("17")),
            ReplyTarget::Gathered {
                inbox: "_INBOX.abc",
                token: 17
            }
        );
        for (reply_to, token) in [
            // No opt-in: a tool's inbox that happens to end in digits is answered where it says.
            ("_INBOX.abc.17", None),
            ("_INBOX.abc.17", Some("7")),
            ("_INBOX.abc.17", Some("217")),
            ("_INBOX.abc17", Some("17")),
            (".17", Some("17")),
            ("17", Some("17")),
            ("_INBOX.abc.1x", Some("1x")),
            ("_INBOX.abc.+17", Some("+17")),
            ("_INBOX.abc.", Some("")),
            (
                "_INBOX.abc.99999999999999999999999",
                Some("99999999999999999999999"),
            ),
        ] {
            assert_eq!(
                ReplyTarget::of(reply_to, token),
                ReplyTarget::Alone(reply_to),
                "{reply_to} {token:?}"
            );
        }
        assert_eq!(confirmations_subject("_INBOX.abc"), "_INBOX.abc.batch");
    }

    #[test]
    fn gathered_confirmations_round_trip() {
        let gathered = vec![
            AddressedConfirmation {
                token: 1,
                confirmation: Confirmation {
                    id: Uuid::now_v7(),
                    outcome: Outcome::Accepted,
                },
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            },
            AddressedConfirmation {
                token: 2,
                confirmation: Confirmation {
                    id: Uuid::now_v7(),
                    outcome: Outcome::Accepted,
                },
                traceparent: None,
            },
        ];
        let decoded: Vec<AddressedConfirmation> = decode(&encode(&gathered)).expect("decodes");
        assert_eq!(decoded, gathered);
    }

    #[test]
    fn debug_output_of_an_order_hides_personal_data() {
        let shown = format!("{:?}", order());
        assert!(!shown.contains("Анна"), "{shown}");
        assert!(!shown.contains("9991234567"), "{shown}");
    }
}
