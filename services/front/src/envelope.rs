//! Envelopes: the orders that reach a front while its previous publishes await their PubAck
//! are gathered into one JetStream message and published together when a publish slot frees
//! up, the way a Kafka producer batches. There is no timer: when the shop is quiet an order
//! finds a free slot and travels alone, in the form every worker reads; under a burst the
//! envelopes fill by themselves, up to a bound on orders and bytes. Each envelope costs
//! nats-server what one order cost before (a stored message, a PubAck, a delivery, an ack and
//! its delete, and at R3 the replication of each), so the per-order cost falls with the burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use finalprice_shared::messages::{
    ENVELOPE_HEADER, EnvelopeBuilder, REPLY_TO_HEADER, REPLY_TOKEN_HEADER, order_subject,
};
use finalprice_shared::presence;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::inbox::Waiter;
use crate::metrics::PublishFailure;
use crate::queue::{Message, Publisher, Unacked};

/// How often the front asks which workers run, to learn whether all of them read envelopes.
const WORKER_CHECK: Duration = Duration::from_secs(5);

/// Looks in a row that must find no worker unable to read envelopes before they resume.
const CLEAN_LOOKS: u32 = 3;

/// How long it waits for the workers' answers to one such question.
const WORKER_ANSWERS_WITHIN: Duration = Duration::from_millis(250);

/// How much an order adds to an envelope besides its own bytes: separator, keys, its token
/// (≤ 20 digits) and its traceparent (55).
const ENTRY_OVERHEAD: usize = 120;

/// The bounds of gathering.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most orders in one envelope (1: every order alone).
    pub max_orders: usize,
    /// The largest envelope payload in bytes.
    pub max_bytes: usize,
    /// Envelopes awaiting their PubAck at once.
    pub in_flight: usize,
}

/// What a JetStream PubAck said about the message that carried an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// The message's sequence in the stream: where a status lookup finds the order while it
    /// waits there.
    pub sequence: u64,
    /// The order travelled alone and the stream already held a message with its key: another
    /// submission of it (a double click), or this request's earlier try whose PubAck was lost.
    /// (An envelope's key is its own, so an envelope stored twice is always this front's.)
    pub duplicate: bool,
}

/// Where an order is between its request and nats-server: the request and the message that
/// carries it race for it, so that a request that stops waiting can say "not taken" only if
/// no message will carry it.
const WAITING: u8 = 0;
/// Put into a message that is being handed to nats-server.
const HANDED_OVER: u8 = 1;
/// Its request stopped waiting first: no message carries it.
const LEFT_OUT: u8 = 2;

/// One order handed to the gatherer by its request.
struct Item {
    id: Uuid,
    /// The encoded [`finalprice_shared::messages::NewOrder`].
    order: Bytes,
    /// The request's waiter: its whole subject (for an order alone) and its token (in an
    /// envelope, whose inbox all its orders share).
    reply_to: String,
    token: u64,
    traceparent: Option<String>,
    /// The end of this order's publish bound, counted from when its request handed it over:
    /// the time it waits here for a slot is part of it.
    deadline: Instant,
    /// [`WAITING`], [`HANDED_OVER`] or [`LEFT_OUT`].
    state: Arc<AtomicU8>,
    done: oneshot::Sender<Result<Acked, Unacked>>,
}

impl Item {
    fn size(&self) -> usize {
        self.order.len() + ENTRY_OVERHEAD
    }

    /// Takes the order into the message being made, unless its request stopped waiting.
    fn hand_over(&self) -> bool {
        self.state
            .compare_exchange(WAITING, HANDED_OVER, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn handed_over(&self) -> bool {
        self.state.load(Ordering::Acquire) == HANDED_OVER
    }
}

/// The front's gatherer: requests hand it their order and wait for the PubAck of the message
/// that carried it.
#[derive(Debug, Clone)]
pub struct Envelopes {
    items: mpsc::UnboundedSender<Item>,
    publisher: Arc<Publisher>,
    /// The publish bound of each order.
    bound: Duration,
    /// Whether envelopes may be sent: false while a worker that cannot read them answers.
    allowed: Arc<AtomicBool>,
}

impl Envelopes {
    /// Starts the gathering task. `inbox` is the prefix of this front's reply inbox, which an
    /// envelope names once for all its orders.
    pub fn start(publisher: Arc<Publisher>, inbox: &str, limits: Limits) -> Self {
        // Unbounded, yet bounded: every item is a request holding one of `http.max_in_flight`.
        let (items, queue) = mpsc::unbounded_channel();
        // Off until the first look at the workers (at start) has found none that cannot read
        // envelopes: a front that starts beside old workers sends nothing they cannot read.
        let allowed = Arc::new(AtomicBool::new(false));
        let bound = publisher.bound();
        let handle = Arc::clone(&publisher);
        tokio::spawn(gather(
            queue,
            publisher,
            Arc::from(inbox),
            limits,
            Arc::clone(&allowed),
        ));
        Self {
            items,
            publisher: handle,
            bound,
            allowed,
        }
    }

    /// Until `shutdown`, asks every few seconds which workers run, and sends orders alone
    /// while any of them is of a release that cannot read envelopes (a rolling upgrade that
    /// began with the fronts). Envelopes start once the first look finds no such worker, and
    /// come back only after [`CLEAN_LOOKS`] looks in a row without one: a busy old worker can
    /// miss one look's window.
    pub async fn watch_workers(&self, client: Client, shutdown: CancellationToken) {
        let mut clean = CLEAN_LOOKS;
        loop {
            // Bounded as a whole: with nats-server away the ping would wait for it.
            let asked = presence::collect(&client, WORKER_ANSWERS_WITHIN);
            if let Ok(Ok(alive)) = tokio::time::timeout(WORKER_CHECK, asked).await {
                let old = alive.iter().find(|process| {
                    process.service == "finalprice-worker" && !process.reads_envelopes
                });
                if let Some(old) = old {
                    clean = 0;
                    self.publisher.metrics().envelopes_on(false);
                    if self.allowed.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            version = %old.version,
                            "a worker that cannot read envelopes answers; orders travel alone until it is gone"
                        );
                    }
                } else {
                    clean += 1;
                    if clean >= CLEAN_LOOKS && !self.allowed.swap(true, Ordering::Relaxed) {
                        self.publisher.metrics().envelopes_on(true);
                        tracing::info!(
                            "no worker that cannot read envelopes answers; gathering orders"
                        );
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(WORKER_CHECK) => {}
            }
        }
    }

    /// Hands `order` (encoded) over and waits for the PubAck of the message that carries it.
    pub async fn publish(
        &self,
        id: Uuid,
        order: Bytes,
        waiter: &Waiter,
        traceparent: Option<String>,
    ) -> Result<Acked, Unacked> {
        let (done, acked) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        let item = Item {
            id,
            order,
            reply_to: waiter.subject().to_owned(),
            token: waiter.token(),
            traceparent,
            deadline: Instant::now() + self.bound,
            state: Arc::clone(&state),
            done,
        };
        let deadline = item.deadline;
        // The gatherer stops only with the runtime.
        let stopped = |failure| Unacked {
            failure,
            maybe_stored: false,
        };
        self.items
            .send(item)
            .map_err(|_| stopped(PublishFailure::Disconnected))?;
        // Each order keeps its own bound, whatever the envelope it went into still tries.
        match tokio::time::timeout_at(deadline, acked).await {
            Ok(Ok(acked)) => acked,
            // Left out by the gatherer (its bound ran out before a slot freed).
            Ok(Err(_)) => Err(stopped(PublishFailure::Disconnected)),
            Err(_) => {
                let failure = self.publisher.failure_now();
                self.publisher.gave_up(failure, 1);
                // Either no message will ever carry it, or one is on its way and may be stored.
                let left_out = state
                    .compare_exchange(WAITING, LEFT_OUT, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                Err(Unacked {
                    failure,
                    maybe_stored: !left_out,
                })
            }
        }
    }
}

/// Takes the next order, waits for a publish slot, then takes every order that arrived
/// meanwhile (up to the bounds) and publishes them together in the background.
async fn gather(
    mut queue: mpsc::UnboundedReceiver<Item>,
    publisher: Arc<Publisher>,
    inbox: Arc<str>,
    limits: Limits,
    allowed: Arc<AtomicBool>,
) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    let mut next: Option<Item> = None;
    loop {
        let first = match next.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        if limits.max_orders == 1 || !allowed.load(Ordering::Relaxed) {
            // Every order alone, as before envelopes: each publishes at once, with no slot to
            // wait for (a slot would only bound the front's publishes, not fill envelopes).
            if !first.done.is_closed() {
                tokio::spawn(send(
                    Arc::clone(&publisher),
                    Arc::clone(&inbox),
                    vec![first],
                    None,
                ));
            }
            continue;
        }
        // The wait that fills envelopes: orders queue up while every slot's PubAck is pending.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let max_orders = limits.max_orders;
        let mut items = Vec::new();
        let mut bytes = 0;
        let now = Instant::now();
        for item in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            // A request that stopped waiting (its client left) is not published, as before.
            if item.done.is_closed() {
                continue;
            }
            // Its bound ran out while every slot was taken (an election outlasting it): its
            // request has answered by now as a publish of its own would have (no PubAck).
            if item.deadline <= now {
                continue;
            }
            if !items.is_empty() && bytes + item.size() > limits.max_bytes {
                next = Some(item);
                break;
            }
            bytes += item.size();
            items.push(item);
            if items.len() >= max_orders {
                break;
            }
        }
        if items.is_empty() {
            continue;
        }
        tokio::spawn(send(
            Arc::clone(&publisher),
            Arc::clone(&inbox),
            items,
            Some(slot),
        ));
    }
}

/// Publishes `items` (alone if one, else as an envelope) and tells each its outcome.
async fn send(
    publisher: Arc<Publisher>,
    inbox: Arc<str>,
    items: Vec<Item>,
    slot: Option<OwnedSemaphorePermit>,
) {
    // Tried for as long as any of its orders still waits: an order near its bound must not cut
    // short the newer ones beside it (each request gives up at its own bound, see `publish`).
    let deadline = items
        .iter()
        .map(|item| item.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let make = || message(&inbox, &items);
    let acked = publisher.publish(items.len(), deadline, make).await;
    let alone = items.iter().filter(|item| item.handed_over()).count() == 1;
    let acked = acked.map(|ack| Acked {
        sequence: ack.sequence,
        duplicate: alone && ack.duplicate,
    });
    drop(slot);
    if let Err(unacked) = acked {
        // Those whose requests gave up at their own bound counted themselves.
        let waiting = items.iter().filter(|item| !item.done.is_closed()).count();
        publisher.gave_up(unacked.failure, waiting);
    }
    for item in items {
        // The request may have stopped waiting; its order is stored all the same.
        let _ = item.done.send(acked);
    }
}

/// The message for the orders of `items` whose requests still wait: alone if one, else an
/// envelope; `None` if none does.
fn message(inbox: &str, items: &[Item]) -> Option<Message> {
    let carried: Vec<&Item> = items.iter().filter(|item| item.hand_over()).collect();
    match carried.as_slice() {
        [] => None,
        [item] => Some(single(item)),
        several => Some(envelope(inbox, several)),
    }
}

/// An order alone: the message every front sent before envelopes, so any worker reads it,
/// and the stream's duplicate window keys it by the order's own id.
fn single(item: &Item) -> Message {
    let mut headers = HeaderMap::new();
    let mut id = Uuid::encode_buffer();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        &*item.id.hyphenated().encode_lower(&mut id),
    );
    headers.insert(REPLY_TO_HEADER, item.reply_to.as_str());
    // Lets the worker answer this order together with the batch's others for this front.
    headers.insert(REPLY_TOKEN_HEADER, itoa::Buffer::new().format(item.token));
    if let Some(traceparent) = &item.traceparent {
        headers.insert("traceparent", traceparent.as_str());
    }
    (order_subject(item.id), headers, item.order.clone())
}

/// Several orders as one message: a key of its own (the same on every try), the inbox once,
/// each order with its waiter's token and trace context. Its subject names its first order,
/// so that order is still found by subject like an order alone.
fn envelope(inbox: &str, items: &[&Item]) -> Message {
    let bytes: usize = items.iter().map(|item| item.size()).sum();
    let mut builder = EnvelopeBuilder::with_capacity(bytes);
    for item in items {
        builder.push(&item.order, item.token, item.traceparent.as_deref());
    }
    let mut headers = HeaderMap::new();
    let mut key = Uuid::encode_buffer();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        &*Uuid::now_v7().hyphenated().encode_lower(&mut key),
    );
    headers.insert(REPLY_TO_HEADER, inbox);
    headers.insert(ENVELOPE_HEADER, itoa::Buffer::new().format(items.len()));
    (order_subject(items[0].id), headers, builder.finish())
}

#[cfg(test)]
mod tests {
    use finalprice_shared::domain::{Country, CustomerName, PhoneNumber};
    use finalprice_shared::messages::{self, NewOrder, open_envelope};

    use super::*;

    fn item(token: u64) -> (Item, oneshot::Receiver<Result<Acked, Unacked>>) {
        let order = NewOrder {
            id: Uuid::now_v7(),
            name: CustomerName::parse("Анна").expect("valid"),
            phone: PhoneNumber::parse("8 999 123-45-67", Country::Russia).expect("valid"),
            created_at: chrono::Utc::now(),
        };
        let (done, receiver) = oneshot::channel();
        let item = Item {
            id: order.id,
            order: messages::encode(&order),
            reply_to: format!("_INBOX.front.{token}"),
            token,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            deadline: Instant::now(),
            state: Arc::new(AtomicU8::new(WAITING)),
            done,
        };
        (item, receiver)
    }

    #[test]
    fn an_envelope_carries_each_order_with_its_token_and_trace() {
        let items: Vec<Item> = (1..=3).map(|token| item(token).0).collect();
        let carried: Vec<&Item> = items.iter().collect();
        let (subject, headers, payload) = envelope("_INBOX.front", &carried);
        assert_eq!(subject, order_subject(items[0].id));
        assert_eq!(
            headers.get(REPLY_TO_HEADER).map(|v| v.as_str()),
            Some("_INBOX.front")
        );
        assert_eq!(headers.get(ENVELOPE_HEADER).map(|v| v.as_str()), Some("3"));
        assert!(payload.len() <= items.iter().map(Item::size).sum::<usize>() + 12);
        let opened = open_envelope(&payload).expect("opens");
        assert_eq!(opened.len(), 3);
        for (entry, item) in opened.iter().zip(&items) {
            assert_eq!(entry.order().expect("decodes").id, item.id);
            assert_eq!(entry.order_id(), Some(item.id));
            assert_eq!(entry.token(), Some(item.token));
            assert_eq!(entry.traceparent(), item.traceparent.as_deref());
        }
    }

    #[test]
    fn an_order_alone_is_the_message_workers_of_every_release_read() {
        let (item, _) = item(7);
        let (subject, headers, payload) = single(&item);
        assert_eq!(subject, order_subject(item.id));
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned()),
            Some(item.id.to_string())
        );
        assert!(headers.get(ENVELOPE_HEADER).is_none());
        assert_eq!(
            headers.get(REPLY_TOKEN_HEADER).map(|v| v.as_str()),
            Some("7")
        );
        let order: NewOrder = messages::decode(&payload).expect("an order");
        assert_eq!(order.id, item.id);
    }
}
