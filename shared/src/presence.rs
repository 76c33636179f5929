//! Who is alive: every front and worker answers pings on [`PING_SUBJECT`] with its
//! [`Presence`], which `finalprice-worker status` collects.

use std::time::Duration;

use async_nats::{Client, Subscriber};
use chrono::Utc;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::messages::{self, PING_SUBJECT, Presence};
use crate::nats;

/// This process's presence, made once at start.
pub fn this_process(service: &str) -> Presence {
    Presence {
        service: service.to_owned(),
        instance: Uuid::now_v7(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: Utc::now(),
        reads_envelopes: true,
    }
}

/// Subscribes to pings; do it before announcing readiness, so a `status` right after start
/// already sees this process.
pub async fn subscribe(client: &Client) -> Result<Subscriber, async_nats::SubscribeError> {
    client.subscribe(PING_SUBJECT).await
}

/// Answers pings until `shutdown`.
pub async fn answer_pings(
    client: Client,
    mut pings: Subscriber,
    presence: Presence,
    shutdown: CancellationToken,
) {
    let answer = messages::encode(&presence);
    loop {
        let ping = tokio::select! {
            () = shutdown.cancelled() => break,
            ping = pings.next() => match ping {
                Some(ping) => ping,
                None => break,
            },
        };
        if let Some(reply) = ping.reply {
            let sent = client.publish(reply, answer.clone());
            match tokio::time::timeout(nats::HAND_OVER_WITHIN, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "ping answer not sent"),
                Err(_) => tracing::debug!("ping answer not handed over in time"),
            }
        }
    }
    nats::unsubscribe(&mut pings).await;
}

/// Pings every front and worker and collects the answers that arrive within `window`.
pub async fn collect(
    client: &Client,
    window: Duration,
) -> Result<Vec<Presence>, async_nats::Error> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(PING_SUBJECT, inbox, bytes::Bytes::new())
        .await?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        if let Ok(presence) = messages::decode::<Presence>(&answer.payload) {
            found.push(presence);
        }
    }
    found.sort_by(|a, b| (&a.service, a.started_at).cmp(&(&b.service, b.started_at)));
    Ok(found)
}
