//! Probes: `/healthz` says the process serves; `/readyz` that it can take orders now.

use async_nats::connection::State;
use http::{Response, StatusCode};

use super::AppState;
use crate::http::{self as resp, Body};

pub fn alive() -> Response<Body> {
    resp::text(StatusCode::OK, "ok\n")
}

/// Ready when connected to NATS and the order stream answers.
pub async fn ready(state: &AppState) -> Response<Body> {
    if state.queue.client().connection_state() != State::Connected {
        return resp::text(StatusCode::SERVICE_UNAVAILABLE, "nats: not connected\n");
    }
    if !state.queue.stream_reachable().await {
        return resp::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "nats: order stream unreachable\n",
        );
    }
    resp::text(StatusCode::OK, "ready\n")
}
