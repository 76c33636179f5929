//! The front's Prometheus metrics, served at `/metrics`: requests by route and status, latency,
//! the wait for confirmations, requests in flight, publish failures, connections open and idle,
//! the process's memory and CPU, and its version.

use std::time::Duration;

use finalprice_shared::metrics::{ProcessCollector, duration_buckets, register_build_info};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which route answered, as a bounded label (never the raw path).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
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
}

/// How a wait for a worker's confirmation ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WaitOutcome {
    Accepted,
    Pending,
    Rejected,
}

/// Why a publish got no PubAck.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
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
        let publish_failures = Family::default();
        let publish_retries = Family::default();
        let envelope_orders = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        let envelopes_on = Gauge::default();
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
            "http_request_seconds",
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
        }
    }
}

impl FrontMetrics {
    /// Shows the in-flight bound beside the requests in flight (set once, at start).
    pub fn set_max_in_flight(&self, bound: usize) {
        self.max_in_flight
            .set(i64::try_from(bound).unwrap_or(i64::MAX));
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
