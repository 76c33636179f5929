//! Reads a service's own memory and CPU from its `/metrics` (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`) during a load run, over a connection of its own: the front's
//! always, a worker's when its metrics address is given.

use std::time::{Duration, Instant};

use bytes::Bytes;
use finalprice_shared::metrics::sample_value;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;

use crate::client::connect;

/// A service's process at one moment of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// Since the run started.
    pub at: Duration,
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
}

/// A keep-alive connection to a service for `GET /metrics`.
#[derive(Debug)]
pub struct Probe {
    authority: String,
    started: Instant,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Probe {
    pub fn new(authority: &str, started: Instant) -> Self {
        Self {
            authority: authority.to_owned(),
            started,
            sender: None,
        }
    }

    /// One sample, or `None` when the service cannot be asked or does not report its process
    /// (then the run is reported without it).
    pub async fn sample(&mut self) -> Option<ProcessSample> {
        // Bounded: a front at its connection cap leaves a new connection waiting in the backlog,
        // and the run must not wait on its own measurement.
        let text = match tokio::time::timeout(Duration::from_secs(2), self.metrics()).await {
            Ok(Ok(text)) => text,
            _ => {
                // Whatever state the connection is in, the next sample starts on a fresh one.
                self.sender = None;
                return None;
            }
        };
        Some(ProcessSample {
            at: self.started.elapsed(),
            resident_bytes: sample_value(&text, "process_resident_memory_bytes")? as u64,
            cpu_seconds: sample_value(&text, "process_cpu_seconds_total")?,
        })
    }

    async fn metrics(&mut self) -> anyhow::Result<String> {
        let sender = match &mut self.sender {
            Some(sender) if !sender.is_closed() => sender,
            slot => slot.insert(connect(&self.authority).await?),
        };
        sender.ready().await?;
        let request = Request::get("/metrics")
            .header(header::HOST, &self.authority)
            .body(Full::default())?;
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status() == 200, "/metrics: {}", response.status());
        let body = response.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Samples every `every` into `into`, until its task is aborted.
pub async fn sample_every(
    mut probe: Probe,
    every: Duration,
    into: std::sync::Arc<std::sync::Mutex<Vec<ProcessSample>>>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(sample) = probe.sample().await {
            into.lock().expect("not poisoned").push(sample);
        }
    }
}
