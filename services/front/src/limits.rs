//! Per-client rate limiting: a token bucket per client address (GCRA, by `governor`), for
//! order submissions (off unless `http.rate_limit_per_second` is set) and for order lookups
//! (`http.lookup_rate_per_second`, on by default).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use finalprice_shared::config::HttpConfig;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderMap;
use http::header::HeaderName;

/// How often idle clients are forgotten, so the table holds only recent addresses.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(30);

/// The per-client buckets.
#[derive(Debug)]
pub struct ClientLimiter {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    /// Set behind a trusted proxy: the header naming the client.
    client_ip_header: Option<HeaderName>,
}

impl ClientLimiter {
    /// The orders' limiter; `None` when it is off.
    pub fn start(config: &HttpConfig) -> Option<Arc<Self>> {
        Self::with_rate(
            config,
            config.rate_limit_per_second,
            config.rate_limit_burst,
        )
    }

    /// The lookups' limiter; `None` when it is off.
    pub fn for_lookups(config: &HttpConfig) -> Option<Arc<Self>> {
        Self::with_rate(
            config,
            config.lookup_rate_per_second,
            config.lookup_rate_burst,
        )
    }

    /// `None` when `per_second` is 0. Starts the task that forgets idle clients.
    fn with_rate(config: &HttpConfig, per_second: u32, burst: u32) -> Option<Arc<Self>> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        let limiter = Arc::new(Self {
            buckets: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            client_ip_header: HeaderName::from_bytes(config.client_ip_header.as_bytes()).ok(),
        });
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.buckets.retain_recent();
                limiter.buckets.shrink_to_fit();
            }
        });
        Some(limiter)
    }

    /// `Err(wait)` when this client must wait before its next request.
    pub fn check(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Duration> {
        let client = self.client(peer, headers);
        self.buckets
            .check_key(&client)
            // The limiter's own clock: making a new one (`DefaultClock::default()`) reads the
            // CPU's counters again and was 45% of the front's CPU under a flood of refusals.
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }

    fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.client_ip_header
            .as_ref()
            // The last line and its last address are what our proxy added (some proxies append
            // a line of their own instead of extending the client's); anything before came
            // from the client, who could otherwise pick a fresh bucket for every order.
            .and_then(|name| headers.get_all(name).iter().next_back())
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.rsplit(',').next())
            .and_then(|nearest| nearest.trim().parse().ok())
            .unwrap_or(peer)
    }
}
