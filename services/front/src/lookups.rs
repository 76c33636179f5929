//! What `GET /orders/{id}` may cost the stack. A look is a NATS request to the workers, a
//! database read there, and, when no worker answers, a look into the stream: about 13 times
//! what a page costs, and anyone may send it. So lookups have a per-client rate, a bound of
//! their own on looks at once (503 before any NATS work past it), the answers that cannot
//! change (accepted) kept by the front, and one look per id at a time whose other answers
//! (being saved, unknown) are shared for a second.
//!
//! Only looks fill the cache, not the front's own confirmations: inserting every accepted
//! order cost the order path 8–24 µs of front CPU per order (43 → 51–68 ms per 1,000, and
//! 7,200 → 5,000 orders/s once the cache was full and evicting), for a page whose one look
//! costs the same as before.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use finalprice_shared::config::HttpConfig;
use finalprice_shared::messages::{OrderState, StatusReply};
use http::HeaderMap;
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::limits::ClientLimiter;
use crate::queue::{OrderQueue, StatusError};

/// How long an accepted order's answer is kept. It cannot change; the bound on entries, not
/// this, keeps the memory in check.
const ACCEPTED_FOR: Duration = Duration::from_secs(600);
/// How long any other answer is shared: short enough that a page refreshing every 2 s shows
/// the order accepted at its next refresh, long enough that a flood of askers of one id costs
/// one look a second.
const CHANGING_FOR: Duration = Duration::from_secs(1);
/// Answers kept at most (each an id, a state and a masked phone: about 200 bytes with the
/// cache's own bookkeeping), so about 13 MB at most.
const MAX_ANSWERS: u64 = 65_536;

/// Why a lookup got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// `http.max_lookups_in_flight` looks are under way; nothing was asked.
    #[error("too many lookups at once")]
    Busy,
    #[error(transparent)]
    Status(#[from] StatusError),
}

/// The lookups' limits and the answers the front keeps.
#[derive(Debug)]
pub struct Lookups {
    in_flight: Arc<Semaphore>,
    limiter: Option<Arc<ClientLimiter>>,
    answers: Cache<Uuid, StatusReply>,
}

impl Lookups {
    /// Starts the rate limiter's cleanup task, so it needs a runtime.
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(config.max_lookups_in_flight)),
            limiter: ClientLimiter::for_lookups(config),
            answers: Cache::builder()
                .max_capacity(MAX_ANSWERS)
                .expire_after(ByState)
                .build(),
        }
    }

    /// `Err(wait)` when this client must wait before its next lookup.
    pub fn admit(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        match &self.limiter {
            Some(limiter) => limiter.check(peer, headers),
            None => Ok(()),
        }
    }

    /// Order `id`'s state: kept, or shared with whoever asks for it now, or asked of the
    /// workers (with `at`, the hint of its link) if a look is free. An error is shared by
    /// everyone who waited for that look, and kept by no one.
    pub async fn status(
        &self,
        queue: &OrderQueue,
        id: Uuid,
        at: Option<u64>,
    ) -> Result<StatusReply, Arc<LookupError>> {
        let look = async {
            let _look = Arc::clone(&self.in_flight)
                .try_acquire_owned()
                .map_err(|_| LookupError::Busy)?;
            Ok(queue.status_or_queued(id, at).await?)
        };
        self.answers.try_get_with(id, look).await
    }
}

/// Each answer is kept for as long as it stays true.
struct ByState;

impl ByState {
    fn keep(reply: &StatusReply) -> Duration {
        if reply.state == OrderState::Accepted {
            ACCEPTED_FOR
        } else {
            CHANGING_FOR
        }
    }
}

impl Expiry<Uuid, StatusReply> for ByState {
    fn expire_after_create(&self, _: &Uuid, reply: &StatusReply, _: Instant) -> Option<Duration> {
        Some(Self::keep(reply))
    }

    // An answer replaced is kept as long as the new one stays true.
    fn expire_after_update(
        &self,
        _: &Uuid,
        reply: &StatusReply,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Self::keep(reply))
    }
}
