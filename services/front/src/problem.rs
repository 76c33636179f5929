//! Every error a client gets, named in one place: its status, its `Retry-After`, and for JSON
//! clients an RFC 9457 problem document (`application/problem+json`) whose `type` is stable, so
//! a client branches on it, never on the wording. Only the 422 `{"errors": …}` and the order
//! answers (201, 202, and `GET /orders/{id}`'s) keep their own bodies, as DESIGN.md fixes them.
//!
//! Bodies are written from these fixed texts and the order's id only: never an error's own
//! text (a library's Display may change with each release, and may name hosts or data), never
//! what the shopper typed.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;
use uuid::Uuid;

use crate::http::{self as resp, Body};

/// Where every problem type's URI starts. An identifier, compared as a string; nothing is
/// served there. Absolute, so it reads the same whichever host or proxy a client came through.
pub const TYPE_BASE: &str = "https://finalprice.dev/problems/";

/// The media type of a problem document (RFC 9457 §3).
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One kind of failed request. The seconds are the `Retry-After` of those that pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No such route or file (404).
    NotFound,
    /// The route exists; these methods are what it takes (405, `Allow`).
    MethodNotAllowed { allow: &'static str },
    /// Neither a form nor JSON (415).
    UnsupportedMediaType,
    /// Over `http.max_body_bytes` (413).
    PayloadTooLarge,
    /// The body did not arrive within `http.header_read_timeout` (408).
    RequestTimeout,
    /// A body that does not decode as its content type says (400).
    Malformed,
    /// Over this client's order rate (429).
    RateLimited { retry_after: u64 },
    /// The front is at its in-flight bound; the order never reached the queue (503).
    Busy { retry_after: u64 },
    /// No PubAck, and the order cannot be in the queue: not taken (503).
    QueueUnavailable { id: Uuid, retry_after: u64 },
    /// No PubAck, but the order may be in the queue all the same (503): only a retry with its
    /// id as `key` (the same order) or `GET /orders/{id}` can tell.
    OutcomeUnknown { id: Uuid, retry_after: u64 },
    /// A worker will never write this order; its id is spent (500).
    Rejected { id: Uuid },
    /// Nobody can tell what became of the order just now (503, `GET /orders/{id}`).
    StatusUnavailable { id: Uuid, retry_after: u64 },
}

/// The document itself (RFC 9457 §3.1), with `id` as an extension member.
#[derive(Debug, Serialize)]
struct Document {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
}

impl Problem {
    /// The last segment of its `type` URI.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "payload-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::Malformed => "malformed-body",
            Self::RateLimited { .. } => "rate-limited",
            Self::Busy { .. } => "busy",
            Self::QueueUnavailable { .. } => "queue-unavailable",
            Self::OutcomeUnknown { .. } => "outcome-unknown",
            Self::Rejected { .. } => "rejected",
            Self::StatusUnavailable { .. } => "status-unavailable",
        }
    }

    /// Its `type`: [`TYPE_BASE`] and its slug.
    pub fn type_uri(&self) -> String {
        format!("{TYPE_BASE}{}", self.slug())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy { .. }
            | Self::QueueUnavailable { .. }
            | Self::OutcomeUnknown { .. }
            | Self::StatusUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Rejected { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for `Retry-After`: on every problem that passes by itself.
    pub fn retry_after(&self) -> Option<u64> {
        match *self {
            Self::RateLimited { retry_after }
            | Self::Busy { retry_after }
            | Self::QueueUnavailable { retry_after, .. }
            | Self::OutcomeUnknown { retry_after, .. }
            | Self::StatusUnavailable { retry_after, .. } => Some(retry_after.max(1)),
            _ => None,
        }
    }

    /// The order it concerns, if any.
    pub fn id(&self) -> Option<Uuid> {
        match *self {
            Self::QueueUnavailable { id, .. }
            | Self::OutcomeUnknown { id, .. }
            | Self::Rejected { id }
            | Self::StatusUnavailable { id, .. } => Some(id),
            _ => None,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::MethodNotAllowed { .. } => "Method not allowed",
            Self::UnsupportedMediaType => "Unsupported content type",
            Self::PayloadTooLarge => "Request body too large",
            Self::RequestTimeout => "Request body not received in time",
            Self::Malformed => "Malformed request body",
            Self::RateLimited { .. } => "Too many orders from this client",
            Self::Busy { .. } => "The shop is busy",
            Self::QueueUnavailable { .. } => "The order was not taken",
            Self::OutcomeUnknown { .. } => "The order's outcome is unknown",
            Self::Rejected { .. } => "The order was not saved",
            Self::StatusUnavailable { .. } => "The order's state cannot be told now",
        }
    }

    fn detail(&self) -> Option<String> {
        let retry = |seconds: u64| format!("Try again in {seconds} s (Retry-After)");
        let detail = match *self {
            Self::NotFound => return None,
            Self::MethodNotAllowed { allow } => format!("This route takes {allow}."),
            Self::UnsupportedMediaType => {
                "Send application/x-www-form-urlencoded or application/json.".to_owned()
            }
            Self::PayloadTooLarge | Self::RequestTimeout | Self::Malformed => return None,
            Self::RateLimited { retry_after } | Self::Busy { retry_after } => {
                format!("{}; nothing was queued.", retry(retry_after))
            }
            Self::QueueUnavailable { id, retry_after } => format!(
                "The order queue is unavailable and the order is not in it. {}, with \"key\" \
                 set to \"{id}\" to keep it the same order.",
                retry(retry_after)
            ),
            Self::OutcomeUnknown { id, retry_after } => format!(
                "The order queue did not confirm the order in time: it may or may not have been \
                 taken. {} with \"key\" set to \"{id}\": it stays one order either way. Or ask \
                 GET /orders/{id}.",
                retry(retry_after)
            ),
            Self::Rejected { .. } => "A worker could not save this order, and never will; its \
                 id is spent. Send the order again without \"key\" (or with a new one)."
                .to_owned(),
            Self::StatusUnavailable { retry_after, .. } => {
                format!("{}.", retry(retry_after))
            }
        };
        Some(detail)
    }

    /// The answer: for a JSON client the problem document, otherwise plain text (a route that
    /// has a page for it uses [`Self::respond`]). `Retry-After` and `Allow` either way.
    pub fn response(&self, json: bool) -> Response<Body> {
        self.respond(json, |status| {
            resp::text_owned(status, format!("{}\n", self.title()))
        })
    }

    /// As [`Self::response`], with `page` (given the status) for a client that is not JSON.
    pub fn respond(
        &self,
        json: bool,
        page: impl FnOnce(StatusCode) -> Response<Body>,
    ) -> Response<Body> {
        let mut response = if json {
            self.document()
        } else {
            page(self.status())
        };
        if let Some(seconds) = self.retry_after() {
            response = resp::retry_after(response, seconds);
        }
        if let Self::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }

    fn document(&self) -> Response<Body> {
        let document = Document {
            kind: self.type_uri(),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            id: self.id(),
        };
        // Strings and a number only: serializing cannot fail, but a problem must not panic.
        let body = serde_json::to_vec(&document)
            .unwrap_or_else(|_| format!(r#"{{"status":{}}}"#, self.status().as_u16()).into_bytes());
        let mut response = Response::new(Body::new(Bytes::from(body)));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn document(problem: Problem) -> (Response<Body>, serde_json::Value) {
        let response = problem.response(true);
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("in memory").to_bytes();
        let value = serde_json::from_slice(&bytes).expect("a JSON document");
        (Response::from_parts(parts, Body::default()), value)
    }

    #[tokio::test]
    async fn an_unknown_outcome_names_the_order_and_when_to_retry_with_it() {
        let id = Uuid::now_v7();
        let (response, body) = document(Problem::OutcomeUnknown { id, retry_after: 2 }).await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            body["type"],
            "https://finalprice.dev/problems/outcome-unknown"
        );
        assert_eq!(body["status"], 503);
        assert_eq!(body["id"], id.to_string());
        let detail = body["detail"].as_str().expect("a detail");
        assert!(
            detail.contains(&format!("\"key\" set to \"{id}\"")),
            "{detail}"
        );
        assert!(detail.contains(&format!("GET /orders/{id}")), "{detail}");
    }

    #[tokio::test]
    async fn every_problem_has_its_own_type_and_a_retry_after_where_it_passes() {
        let id = Uuid::now_v7();
        let all = [
            Problem::NotFound,
            Problem::MethodNotAllowed { allow: "POST" },
            Problem::UnsupportedMediaType,
            Problem::PayloadTooLarge,
            Problem::RequestTimeout,
            Problem::Malformed,
            Problem::RateLimited { retry_after: 1 },
            Problem::Busy { retry_after: 1 },
            Problem::QueueUnavailable { id, retry_after: 1 },
            Problem::OutcomeUnknown { id, retry_after: 1 },
            Problem::Rejected { id },
            Problem::StatusUnavailable { id, retry_after: 1 },
        ];
        let mut types = std::collections::HashSet::new();
        for problem in all {
            let (response, body) = document(problem).await;
            assert!(types.insert(body["type"].to_string()), "{problem:?}");
            assert_eq!(body["status"], response.status().as_u16(), "{problem:?}");
            assert!(body["title"].is_string(), "{problem:?}");
            let passes = matches!(response.status().as_u16(), 429 | 503);
            assert_eq!(
                response.headers().contains_key(header::RETRY_AFTER),
                passes,
                "{problem:?}"
            );
        }
        let (response, _) = document(Problem::MethodNotAllowed { allow: "POST" }).await;
        assert_eq!(response.headers()[header::ALLOW], "POST");
    }

    #[test]
    fn a_client_that_is_not_json_gets_plain_text() {
        let response = Problem::NotFound.response(false);
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
