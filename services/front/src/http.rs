//! Small response helpers shared by the routes: bodies, content negotiation, common headers.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Every response body of the front is built in memory: pages are a few KB.
pub type Body = Full<Bytes>;

/// An HTML page.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    with_type(status, "text/html; charset=utf-8", page.into())
}

/// A JSON document. Generic, so that a typed answer on the hot path is written straight into
/// the body without first being built as a `serde_json::Value` (a map and a string per field).
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", body.into()),
        // Only a map with non-string keys fails to serialize; the front sends none.
        Err(error) => {
            tracing::error!(%error, "a JSON answer failed to serialize");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Plain text, for probes and plain errors.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

/// Plain text made at run time.
pub fn text_owned(status: StatusCode, body: String) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body.into())
}

/// POST → 303 → GET: a reload of the result page never resubmits the order.
pub fn see_other(location: &str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Adds `Location` (a 202's link to the order's state).
pub fn with_location(mut response: Response<Body>, location: &str) -> Response<Body> {
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Adds `Retry-After` (whole seconds) to a 503.
pub fn retry_after(mut response: Response<Body>, seconds: u64) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// The raw value of `key` in a URI query (first occurrence). Not percent-decoded: the front's
/// own parameters (`lang`, `refresh`) take only ASCII letters, and an encoded value simply
/// matches none of them.
pub fn query_value<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        pair.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// Whether the client asked for JSON rather than a page: `application/json`, or the problem
/// documents errors come in (`application/problem+json`).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| {
            accept.contains("application/json") || accept.contains("application/problem+json")
        })
}

/// Headers every response carries: no inline script may run, no framing, no sniffing.
pub fn add_security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}
