//! The front's routes: one function picks the handler by method and path; every response
//! leaves with the security headers.

mod health;
mod home;
mod orders;
pub(crate) mod static_files;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use finalprice_shared::config::HttpConfig;
use finalprice_shared::domain::Country;
use http::header;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::http::{self as resp, Body};
use crate::i18n::{Choice, Locales};
use crate::limits::ClientLimiter;
use crate::lookups::Lookups;
use crate::metrics::{FrontMetrics, Route};
use crate::pages::{self, Frame, MessagePage};
use crate::problem::Problem;
use crate::queue::OrderQueue;

/// What every request handler may use; shared by all connections.
#[derive(Debug)]
pub struct AppState {
    pub queue: OrderQueue,
    pub http: HttpConfig,
    pub country: Country,
    /// Requests being handled; a request finding none left gets a 503 at once.
    pub in_flight: Arc<Semaphore>,
    /// Per-client order rate; `None` when off.
    pub limiter: Option<Arc<ClientLimiter>>,
    /// `GET /orders/{id}`'s own limits, and the answers kept.
    pub lookups: Lookups,
    pub metrics: Arc<FrontMetrics>,
    /// Every text of every language, from `ui/locales`.
    pub locales: Locales,
}

impl AppState {
    /// `Retry-After` for 503s, in whole seconds.
    pub fn retry_after_secs(&self) -> u64 {
        self.http.retry_after.as_secs().max(1)
    }

    /// Whether `/metrics` is served on this port: not when it has an admin listener of its own,
    /// so shoppers (and whatever is published through the edge) never see it.
    pub fn serves_metrics(&self) -> bool {
        self.http.admin_addr.is_none()
    }
}

/// Routes one request from `peer`. Infallible: every failure is a response.
pub async fn handle(
    state: Arc<AppState>,
    peer: IpAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let _in_flight = state.metrics.start_request();
    let route_label = classify(
        request.method(),
        request.uri().path(),
        state.serves_metrics(),
    );
    // The server span of the order's trace; attributes per OpenTelemetry's HTTP conventions,
    // ids only (the path holds at most an order id).
    macro_rules! request_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "http request",
                otel.name = %format_args!("{} {}", request.method(), route_label.template()),
                otel.kind = "server",
                http.request.method = %request.method(),
                http.route = route_label.template(),
                url.path = %request.uri().path(),
                http.response.status_code = tracing::field::Empty,
            )
        };
    }
    // Probes and scrapes come every few seconds from every prober: at info they would bury the
    // shoppers' traces in Jaeger. At debug, `log.trace_filter` leaves them out by default.
    let span = if route_label.is_probe() {
        request_span!(tracing::Level::DEBUG)
    } else {
        request_span!(tracing::Level::INFO)
    };
    let mut response = route(&state, peer, request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    resp::add_security_headers(response.headers_mut());
    state
        .metrics
        .request_done(route_label, response.status().as_u16(), started.elapsed());
    response
}

/// The route a request is for, as a bounded metric label; `/metrics` moved to the admin
/// listener is an unknown path here, as it is answered.
fn classify(method: &Method, path: &str, serves_metrics: bool) -> Route {
    match path {
        "/" => Route::Form,
        "/orders" if method == Method::POST => Route::CreateOrder,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" if serves_metrics => Route::Metrics,
        _ if path.starts_with("/orders/") => Route::ShowOrder,
        _ if path.starts_with("/static/") => Route::Static,
        _ => Route::Unknown,
    }
}

/// Every handler but `create` is boxed: a request's future reserves room for the largest
/// handler it may run, and only an order's wait for its confirmation is long and numerous
/// (10,000 waiting shoppers × each KB saved = 10 MB).
async fn route(state: &Arc<AppState>, peer: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let json = resp::wants_json(request.headers());

    // Probes stay answerable when the front is saturated.
    match (read, path.as_str()) {
        (true, "/healthz") => return health::alive(),
        (true, "/readyz") => return Box::pin(health::ready(state)).await,
        (true, "/metrics") if state.serves_metrics() => {
            return finalprice_shared::metrics::response(
                state.metrics.registry(),
                request.headers().get(header::ACCEPT),
            );
        }
        _ => {}
    }
    let Ok(_permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        if method == Method::POST && path == "/orders" {
            return Box::pin(orders::busy(state, request)).await;
        }
        return busy(state, &request);
    };

    match (read, method == Method::POST, path.as_str()) {
        (true, _, "/") => home::form(state, Choice::of_request(&request)),
        (_, true, "/orders") => orders::create(state, peer, request).await,
        (true, _, path) if path.starts_with("/orders/") => {
            Box::pin(orders::show(
                state,
                peer,
                &path["/orders/".len()..],
                &request,
            ))
            .await
        }
        (true, _, path) if path.starts_with("/static/") => {
            static_files::serve(&path["/static/".len()..], json)
        }
        (_, _, "/" | "/healthz" | "/readyz") => not_allowed("GET, HEAD", json),
        (_, _, "/metrics") if state.serves_metrics() => not_allowed("GET, HEAD", json),
        (_, _, "/orders") => not_allowed("POST", json),
        (_, _, path) if path.starts_with("/orders/") || path.starts_with("/static/") => {
            not_allowed("GET, HEAD", json)
        }
        _ => Problem::NotFound.respond(json, |status| {
            let choice = Choice::of_request(&request);
            let t = state.locales.get(choice.lang);
            let frame = Frame::new(&state.locales, choice, "/");
            let page = MessagePage::plain(
                frame,
                &t.page.not_found_title,
                &t.page.not_found_message,
                &t.page.back,
            );
            resp::html(status, pages::render(&page))
        }),
    }
}

fn busy(state: &AppState, request: &Request<Incoming>) -> Response<Body> {
    let seconds = state.retry_after_secs();
    let problem = Problem::Busy {
        retry_after: seconds,
    };
    problem.respond(resp::wants_json(request.headers()), |status| {
        let choice = Choice::of_request(request);
        let t = state.locales.get(choice.lang);
        let message = t.busy_message(seconds);
        let frame = Frame::new(&state.locales, choice, "/");
        let page = MessagePage::plain(frame, &t.page.busy_title, &message, &t.page.back);
        resp::html(status, pages::render(&page))
    })
}

fn not_allowed(allow: &'static str, json: bool) -> Response<Body> {
    Problem::MethodNotAllowed { allow }.response(json)
}
