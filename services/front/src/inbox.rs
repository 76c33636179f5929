//! One reply subscription per process: every request that expects an answer (an order's
//! confirmation, a status reply) registers a token, names `<prefix>.<token>` as its reply
//! subject, and is woken by the dispatcher. Workers answer a batch's orders together on
//! `<prefix>.batch`; the dispatcher hands each waiter its own part. Entries leave the map when
//! answered or when the waiter is dropped (timeout, client gone), so nothing leaks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::{Client, Message, Subscriber};
use finalprice_shared::messages::{self, AddressedConfirmation, CONFIRMATIONS_TOKEN};
use futures_util::StreamExt;
use tokio::sync::oneshot;

/// What a waiter receives.
#[derive(Debug)]
pub enum Reply {
    /// A message of its own: a status reply, or a confirmation sent alone.
    Message(Message),
    /// Its part of the gathered confirmations.
    Confirmation(AddressedConfirmation),
}

/// The process's reply inbox.
#[derive(Debug)]
pub struct Inbox {
    prefix: String,
    next_token: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Inbox {
    /// Subscribes `<fresh inbox>.*` and starts the dispatcher. The subscription is on the wire
    /// before any publish that names it, since one connection keeps its order.
    pub async fn start(client: &Client) -> Result<Arc<Self>, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let subscriber = client.subscribe(format!("{prefix}.*")).await?;
        let inbox = Arc::new(Self {
            prefix,
            next_token: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(dispatch(subscriber, Arc::clone(&inbox)));
        Ok(inbox)
    }

    /// The subject every reply subject of this inbox starts with (`<prefix>.<token>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new waiter; its reply subject is ready to be published.
    pub fn register(self: &Arc<Self>) -> Waiter {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(token, sender);
        // Written directly, not with `format!`: one per order on the front's hot path.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(token);
        let mut subject = String::with_capacity(self.prefix.len() + 1 + digits.len());
        subject.push_str(&self.prefix);
        subject.push('.');
        subject.push_str(digits);
        Waiter {
            subject,
            token,
            receiver,
            inbox: Arc::clone(self),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        // The map holds no invariant a panicking holder could break half-way.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Routes each reply to its waiter. Never blocks: a slow dispatcher would make the client drop
/// replies (slow consumer).
async fn dispatch(mut subscriber: Subscriber, inbox: Arc<Inbox>) {
    while let Some(message) = subscriber.next().await {
        let token = message.subject.rsplit_once('.').map(|(_, token)| token);
        if token == Some(CONFIRMATIONS_TOKEN) {
            hand_out(&inbox, &message);
            continue;
        }
        let sender = token
            .and_then(|token| token.parse::<u64>().ok())
            .and_then(|token| inbox.lock().remove(&token));
        match sender {
            // The waiter may have given up in between; then nobody needs this reply.
            Some(sender) => drop(sender.send(Reply::Message(message))),
            None => tracing::debug!("reply for a request that stopped waiting"),
        }
    }
    tracing::debug!("inbox subscription closed");
}

/// Gives each waiter of a gathered message its confirmation; one lock for the whole message.
fn hand_out(inbox: &Inbox, message: &Message) {
    let confirmations: Vec<AddressedConfirmation> = match messages::decode(&message.payload) {
        Ok(confirmations) => confirmations,
        Err(error) => {
            // Its waiters fall back to "being saved" and a status request: nothing is claimed.
            tracing::warn!(%error, "malformed gathered confirmations");
            return;
        }
    };
    let senders: Vec<_> = {
        let mut waiting = inbox.lock();
        confirmations
            .into_iter()
            .map(|confirmation| (waiting.remove(&confirmation.token), confirmation))
            .collect()
    };
    for (sender, confirmation) in senders {
        match sender {
            Some(sender) => drop(sender.send(Reply::Confirmation(confirmation))),
            None => tracing::debug!("confirmation for a request that stopped waiting"),
        }
    }
}

/// One pending request's end of the inbox.
#[derive(Debug)]
pub struct Waiter {
    subject: String,
    token: u64,
    receiver: oneshot::Receiver<Reply>,
    inbox: Arc<Inbox>,
}

impl Waiter {
    /// The reply subject to publish with.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The number that ends [`Waiter::subject`], by which gathered confirmations name it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The reply, once it arrives; `None` only if the dispatcher is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Reply> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.inbox.lock().remove(&self.token);
    }
}

#[cfg(test)]
mod tests {
    use finalprice_shared::messages::{Confirmation, Outcome};
    use tokio::sync::oneshot::error::TryRecvError;
    use uuid::Uuid;

    use super::*;

    fn inbox() -> Arc<Inbox> {
        Arc::new(Inbox {
            prefix: "_INBOX.test".into(),
            next_token: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn message(payload: bytes::Bytes) -> Message {
        Message {
            subject: "_INBOX.test.batch".to_owned().into(),
            reply: None,
            payload,
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    fn accepted(token: u64) -> AddressedConfirmation {
        AddressedConfirmation {
            token,
            confirmation: Confirmation {
                id: Uuid::now_v7(),
                outcome: Outcome::Accepted,
            },
            traceparent: None,
        }
    }

    #[test]
    fn each_waiter_gets_its_own_entry_and_no_one_elses() {
        let inbox = inbox();
        let (mut first, mut second) = (inbox.register(), inbox.register());
        assert_eq!(first.subject(), format!("_INBOX.test.{}", first.token()));
        assert_eq!(second.subject(), format!("_INBOX.test.{}", second.token()));
        let mine = accepted(first.token());
        let stray = accepted(999);
        hand_out(&inbox, &message(messages::encode(&[&mine, &stray])));

        match first.receiver.try_recv() {
            Ok(Reply::Confirmation(got)) => assert_eq!(got, mine),
            other => panic!("expected its confirmation, got {other:?}"),
        }
        assert!(matches!(
            second.receiver.try_recv(),
            Err(TryRecvError::Empty)
        ));
        assert_eq!(inbox.lock().len(), 1, "only the unanswered waiter is left");
    }

    #[test]
    fn a_malformed_gathered_message_wakes_nobody() {
        let inbox = inbox();
        let mut waiter = inbox.register();
        hand_out(&inbox, &message(bytes::Bytes::from_static(b"{not json")));
        assert!(matches!(
            waiter.receiver.try_recv(),
            Err(TryRecvError::Empty)
        ));
        assert_eq!(inbox.lock().len(), 1);
    }

    #[test]
    fn a_waiter_that_gave_up_leaves_the_map_and_its_late_answer_is_dropped() {
        let inbox = inbox();
        let waiter = inbox.register();
        let token = waiter.token();
        drop(waiter);
        assert!(inbox.lock().is_empty());
        hand_out(&inbox, &message(messages::encode(&[accepted(token)])));
        assert!(inbox.lock().is_empty());
    }
}
