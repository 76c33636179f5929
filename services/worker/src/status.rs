//! Answers the fronts' "what became of order X?" requests: committed (a row), pending (still
//! in the stream) or unknown.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use async_nats::{Client, Subscriber};
use finalprice_db::entity::orders;
use finalprice_shared::domain::PhoneNumber;
use finalprice_shared::messages::{
    self, OrderState, STATUS_QUEUE_GROUP, STATUS_SUBJECT, StatusReply, StatusRequest, order_subject,
};
use finalprice_shared::nats;
use futures_util::StreamExt;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Status lookups answered at once by one worker; more wait, which pushes back on the fronts.
const MAX_CONCURRENT_LOOKUPS: usize = 64;

/// Longest a status lookup and its answer may take: a front waits `http.status_timeout` (2 s by
/// default), the database lookup may wait its pool's `acquire_timeout` (5 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Why a status could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("database lookup failed")]
    Database(#[from] DbErr),
    #[error("stream lookup failed")]
    Stream(#[from] stream::DirectGetError),
    #[error("stream lookup at its leader failed")]
    Leader(#[from] stream::LastRawMessageError),
    #[error("the stream's leader did not answer in time")]
    NoLeader,
}

/// Joins the status queue group. Subscribing before the pull loop starts means a worker that
/// commits orders can also answer for them.
pub(crate) async fn subscribe(client: &Client) -> Result<Subscriber, async_nats::SubscribeError> {
    client
        .queue_subscribe(STATUS_SUBJECT, STATUS_QUEUE_GROUP.to_owned())
        .await
}

/// Serves status requests until `shutdown` fires.
pub(crate) async fn serve(
    client: Client,
    mut requests: Subscriber,
    db: DatabaseConnection,
    stream: stream::Stream,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_LOOKUPS));
    let tasks = TaskTracker::new();
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break,
            request = requests.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let Ok(StatusRequest { id, at }) = messages::decode(&request.payload) else {
            tracing::debug!("malformed status request ignored");
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, db, stream) = (client.clone(), db.clone(), stream.clone());
        tasks.spawn(async move {
            // Bounded, so a stopping worker never waits on a nats-server that is away (see
            // `HAND_OVER_WITHIN`); the front has long given up on an answer by then anyway.
            let answered = tokio::time::timeout(ANSWER_WITHIN, async {
                match lookup(&db, &stream, id, at).await {
                    Ok(reply) => {
                        if let Err(error) = client.publish(reply_to, messages::encode(&reply)).await
                        {
                            tracing::debug!(%error, order_id = %id, "status reply not sent");
                        }
                    }
                    // No answer: the front treats silence as "cannot tell now", never as
                    // "unknown".
                    Err(error) => tracing::warn!(%error, order_id = %id, "status lookup failed"),
                }
            });
            if answered.await.is_err() {
                tracing::warn!(order_id = %id, "status not answered in time");
            }
            drop(permit);
        });
    }
    nats::unsubscribe(&mut requests).await;
    tasks.close();
    tasks.wait().await;
}

/// The state of one order. The database is asked again after the stream, because a worker
/// commits and then acks: an order can leave the stream between the two looks. `at` is the
/// front's hint of the message that carried the order (see [`StatusRequest::at`]).
pub async fn lookup(
    db: &DatabaseConnection,
    stream: &stream::Stream,
    id: Uuid,
    at: Option<u64>,
) -> Result<StatusReply, LookupError> {
    if let Some(reply) = committed(db, id).await? {
        return Ok(reply);
    }
    if let Some(reply) = queued(stream, id, at).await? {
        return Ok(reply);
    }
    Ok(committed(db, id).await?.unwrap_or(StatusReply {
        id,
        state: OrderState::Unknown,
        phone_masked: None,
    }))
}

/// How long the stream's leader may take to confirm a "not found". It answers at once when there
/// is one; while there is none (an election) every unknown id would otherwise hold one of the
/// lookup permits for the whole JetStream request timeout.
const LEADER_WITHIN: Duration = Duration::from_millis(500);

/// The order while it waits in the stream: in the message at sequence `at` if that message
/// carries it (an envelope, or the order alone), else in the last message on its own subject
/// (an order sent alone, or the first of an envelope, whose subject it names).
///
/// Any replica may answer a direct get, and one that lags behind (a follower still catching
/// up, a mirror) says "not found" for a message the stream holds; so only the leader's "not
/// found" counts. The leader is asked only when a direct get finds nothing: never for a
/// committed order. (On an R1 stream the leader answered the direct get already, but a mirror
/// with `mirror_direct` may answer for any stream, so the second look is not skipped there
/// either.)
async fn queued(
    stream: &stream::Stream,
    id: Uuid,
    at: Option<u64>,
) -> Result<Option<StatusReply>, LookupError> {
    if let Some(sequence) = at
        && let Some(reply) = at_sequence(stream, id, sequence).await
    {
        return Ok(Some(reply));
    }
    let subject = order_subject(id);
    let message = match stream.direct_get_last_for_subject(subject.as_str()).await {
        Ok(message) => message,
        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => {
            let at_leader = stream.get_last_raw_message_by_subject(&subject);
            match tokio::time::timeout(LEADER_WITHIN, at_leader).await {
                Ok(Ok(message)) => message,
                Ok(Err(error))
                    if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    return Ok(None);
                }
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(LookupError::NoLeader),
            }
        }
        Err(error) => return Err(error.into()),
    };
    Ok(StatusReply::pending(
        id,
        &message.subject,
        &message.headers,
        &message.payload,
    ))
}

/// The order in the message at `sequence`, if that message carries it. The hint comes from a
/// URL anyone can write: whatever goes wrong with it (no such message, a sequence the server
/// refuses, no leader to ask) is no answer, and the order's own subject is looked at next.
async fn at_sequence(stream: &stream::Stream, id: Uuid, sequence: u64) -> Option<StatusReply> {
    let message = match stream.direct_get(sequence).await {
        Ok(message) => message,
        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => {
            let at_leader = stream.get_raw_message(sequence);
            match tokio::time::timeout(LEADER_WITHIN, at_leader).await {
                Ok(Ok(message)) => message,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
        Err(error) => {
            tracing::debug!(%error, sequence, "status hint not readable");
            return None;
        }
    };
    StatusReply::pending(id, &message.subject, &message.headers, &message.payload)
}

async fn committed(db: &DatabaseConnection, id: Uuid) -> Result<Option<StatusReply>, DbErr> {
    Ok(orders::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(|row| StatusReply {
            id,
            state: OrderState::Accepted,
            phone_masked: PhoneNumber::parse_e164(&row.phone)
                .ok()
                .map(|phone| phone.masked()),
        }))
}
