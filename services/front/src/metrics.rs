//! The front's Prometheus metrics, served at `/metrics`: requests by route and status, latency,
//! the wait for confirmations, requests in flight, publish failures, connections open and idle,
//! the process's memory and CPU, and its version.

use std::time::Duration;

use finalprice_shared::metrics::label_values;
use finalprice_shared::metrics::{ProcessCollector, duration_buckets, register_build_info};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which route answered, as a bounded label (never the raw path).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Route {
    Form,
    CreateOrder,
    ShowOrder,
    Healthz,
    Readyz,
    Metrics,
    Static,
    Unknown,
}

impl Route {
    /// The route template, for span names (`http.route`).
    pub fn template(self) -> &'static str {
        match self {
            Route::Form => "/",
            Route::CreateOrder => "/orders",
            Route::ShowOrder => "/orders/{id}",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Static => "/static/{file}",
            Route::Unknown => "unknown",
        }
    }

    /// A liveness or readiness probe, or a metrics scrape: machines asking, not shoppers.
    pub fn is_probe(self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz | Route::Metrics)
    }
}

label_values!(Route {
    Form => "form",
    CreateOrder => "create_order",
    ShowOrder => "show_order",
    Healthz => "healthz",
    Readyz => "readyz",
    Metrics => "metrics",
    Static => "static",
    Unknown => "unknown",
});

/// How a wait for a worker's confirmation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum WaitOutcome {
    Accepted,
    Pending,
    Rejected,
}

label_values!(WaitOutcome {
    Accepted => "accepted",
    Pending => "pending",
    Rejected => "rejected",
});

/// Why a publish got no PubAck.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum PublishFailure {
    /// Not connected to nats-server within the publish timeout: nothing was handed to the
    /// client, so nothing goes out after the reconnect.
    Disconnected,
    StreamNotFound,
    /// JetStream answered "temporarily unavailable": a cluster without a leader.
    Unavailable,
    NoAck,
    BrokenPipe,
    TooManyInFlight,
    TooLarge,
    Expectation,
    /// The server refused; with `discard: new`, a full stream.
    Refused,
}

label_values!(PublishFailure {
    Disconnected => "disconnected",
    StreamNotFound => "stream_not_found",
    Unavailable => "unavailable",
    NoAck => "no_ack",
    BrokenPipe => "broken_pipe",
    TooManyInFlight => "too_many_in_flight",
    TooLarge => "too_large",
    Expectation => "expectation",
    Refused => "refused",
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    outcome: WaitOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: PublishFailure,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    /// The nats-server's name.
    replica: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaRoleLabels {
    replica: String,
    role: ReplicaRole,
}

/// A nats-server's part in the order stream's replication group.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum ReplicaRole {
    Leader,
    Follower,
}

label_values!(ReplicaRole {
    Leader => "leader",
    Follower => "follower",
});

fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// The front's metrics and the registry that serves them.
#[derive(Debug)]
pub struct FrontMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    max_in_flight: Gauge,
    connections: Gauge,
    idle_connections: Gauge,
    confirmation_wait_seconds: Family<WaitLabels, Histogram>,
    publish_failures: Family<FailureLabels, Counter>,
    publish_retries: Family<FailureLabels, Counter>,
    envelope_orders: Histogram,
    envelopes_on: Gauge,
    stream: StreamGauges,
}

/// The order stream as the front last saw it: every front reports it, so it is there while no
/// worker is (a work-queue stream's messages are the orders not yet committed).
#[derive(Debug, Default)]
struct StreamGauges {
    messages: Gauge,
    bytes: Gauge,
    max_messages: Gauge,
    max_bytes: Gauge,
    replica_current: Family<ReplicaRoleLabels, Gauge>,
    replica_lag: Family<ReplicaLabels, Gauge>,
}

impl Default for FrontMetrics {
    fn default() -> Self {
        let requests = Family::default();
        let request_seconds =
            Family::<RouteLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        let in_flight = Gauge::default();
        let max_in_flight = Gauge::default();
        let connections = Gauge::default();
        let idle_connections = Gauge::default();
        let confirmation_wait_seconds =
            Family::<WaitLabels, Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        let publish_failures = Family::<FailureLabels, Counter>::default();
        let publish_retries = Family::<FailureLabels, Counter>::default();
        for &outcome in WaitOutcome::ALL {
            drop(confirmation_wait_seconds.get_or_create(&WaitLabels { outcome }));
        }
        for &kind in PublishFailure::ALL {
            drop(publish_failures.get_or_create(&FailureLabels { kind }));
            drop(publish_retries.get_or_create(&FailureLabels { kind }));
        }
        let envelope_orders = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        let envelopes_on = Gauge::default();
        let stream = StreamGauges::default();
        let mut root = Registry::default();
        ProcessCollector::register(&mut root);
        register_build_info(&mut root, env!("CARGO_PKG_VERSION"));
        let registry = root.sub_registry_with_prefix("finalprice_front");
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer, by route",
            request_seconds.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "http_max_in_flight",
            "The in-flight bound (http.max_in_flight): a request past it is answered 503 at once; \
             an alert compares http_requests_in_flight with it",
            max_in_flight.clone(),
        );
        registry.register(
            "connections",
            "Client connections open",
            connections.clone(),
        );
        registry.register(
            "idle_connections",
            "Client connections between requests, parked without HTTP state",
            idle_connections.clone(),
        );
        registry.register(
            "confirmation_wait_seconds",
            "From PubAck to the worker's answer (or giving up), by outcome",
            confirmation_wait_seconds.clone(),
        );
        registry.register(
            "publish_failures",
            "Orders that got no PubAck, by reason",
            publish_failures.clone(),
        );
        registry.register(
            "publish_retries",
            "Publishes tried again within the publish bound (a stream leader election, a lost \
             connection), by what the try before got",
            publish_retries.clone(),
        );
        registry.register(
            "envelope_orders",
            "Orders per message published to the order stream (1: an order alone; more: an \
             envelope gathered while earlier publishes awaited their PubAck)",
            envelope_orders.clone(),
        );
        registry.register(
            "envelopes_on",
            "1 while this front gathers orders into envelopes; 0 while it sends each alone (at \
             start until it has looked at the workers, and while one that cannot read \
             envelopes answers)",
            envelopes_on.clone(),
        );
        registry.register(
            "stream_messages",
            "Messages in the order stream: orders published and not yet committed by a worker",
            stream.messages.clone(),
        );
        registry.register(
            "stream_bytes",
            "Bytes in the order stream",
            stream.bytes.clone(),
        );
        registry.register(
            "stream_max_messages",
            "The order stream's bound on messages (nats.stream_max_messages; -1: none); past it \
             publishes are refused",
            stream.max_messages.clone(),
        );
        registry.register(
            "stream_max_bytes",
            "The order stream's bound on bytes (-1: none)",
            stream.max_bytes.clone(),
        );
        registry.register(
            "stream_replica_current",
            "Each nats-server holding the order stream: 1 when up to date with the leader (the \
             leader itself included), 0 when behind or offline",
            stream.replica_current.clone(),
        );
        registry.register(
            "stream_replica_lag",
            "Operations each follower of the order stream is behind its leader",
            stream.replica_lag.clone(),
        );
        Self {
            registry: root,
            requests,
            request_seconds,
            in_flight,
            max_in_flight,
            connections,
            idle_connections,
            confirmation_wait_seconds,
            publish_failures,
            publish_retries,
            envelope_orders,
            envelopes_on,
            stream,
        }
    }
}

impl FrontMetrics {
    /// Shows the in-flight bound beside the requests in flight (set once, at start).
    pub fn set_max_in_flight(&self, bound: usize) {
        self.max_in_flight
            .set(i64::try_from(bound).unwrap_or(i64::MAX));
    }

    /// Shows the order stream as `info` describes it.
    pub fn stream_seen(&self, info: &async_nats::jetstream::stream::Info) {
        let stream = &self.stream;
        stream.messages.set(saturating_i64(info.state.messages));
        stream.bytes.set(saturating_i64(info.state.bytes));
        stream.max_messages.set(info.config.max_messages);
        stream.max_bytes.set(info.config.max_bytes);
        // A server that left the group must not stay on the dashboard as it was last seen, nor
        // a former leader as leader.
        stream.replica_current.clear();
        stream.replica_lag.clear();
        let Some(cluster) = &info.cluster else {
            return;
        };
        if let Some(leader) = &cluster.leader {
            stream
                .replica_current
                .get_or_create(&ReplicaRoleLabels {
                    replica: leader.clone(),
                    role: ReplicaRole::Leader,
                })
                .set(1);
        }
        for peer in &cluster.replicas {
            let current = peer.current && !peer.offline;
            stream
                .replica_current
                .get_or_create(&ReplicaRoleLabels {
                    replica: peer.name.clone(),
                    role: ReplicaRole::Follower,
                })
                .set(i64::from(current));
            stream
                .replica_lag
                .get_or_create(&ReplicaLabels {
                    replica: peer.name.clone(),
                })
                .set(saturating_i64(peer.lag.unwrap_or(0)));
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Marks a request as being handled until the guard drops.
    pub fn start_request(&self) -> Counted<'_> {
        Counted::new(&self.in_flight)
    }

    /// Counts a client connection as open until the guard drops.
    pub fn connection_opened(&self) -> Counted<'_> {
        Counted::new(&self.connections)
    }

    /// Counts a connection as parked between requests until the guard drops.
    pub fn connection_parked(&self) -> Counted<'_> {
        Counted::new(&self.idle_connections)
    }

    pub fn request_done(&self, route: Route, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    pub fn confirmation_waited(&self, outcome: WaitOutcome, took: Duration) {
        self.confirmation_wait_seconds
            .get_or_create(&WaitLabels { outcome })
            .observe(took.as_secs_f64());
    }

    pub fn publish_retried(&self, kind: PublishFailure) {
        self.publish_retries
            .get_or_create(&FailureLabels { kind })
            .inc();
    }

    /// Whether this front gathers orders into envelopes now.
    pub fn envelopes_on(&self, on: bool) {
        self.envelopes_on.set(i64::from(on));
    }

    /// A message carrying `orders` orders is being published.
    pub fn published(&self, orders: usize) {
        self.envelope_orders.observe(orders as f64);
    }

    pub fn publish_failed(&self, kind: PublishFailure) {
        self.publish_failures
            .get_or_create(&FailureLabels { kind })
            .inc();
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One unit of a gauge, given back when the guard drops (request answered, connection closed).
#[derive(Debug)]
pub struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
