//! `POST /orders` (take an order) and `GET /orders/{id}` (what became of it), for browsers
//! (pages, 303) and JSON clients alike.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use finalprice_shared::messages::{OrderState, StatusReply};
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use uuid::Uuid;

use super::AppState;
use crate::form::{FieldErrors, OrderForm};
use crate::http::{self as resp, Body};
use crate::i18n::Texts;
use crate::i18n::{Choice, Lang};
use crate::lookups::LookupError;
use crate::pages::{self, Focus, FormPage, Frame, Link, MessagePage};
use crate::problem::Problem;
use crate::queue::{StatusError, SubmitError, Submitted};

/// Why a submission got no order: each variant is one answer.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("request body not received in time")]
    Timeout,
    #[error("malformed request body")]
    Malformed,
    #[error("invalid fields")]
    Invalid(FieldErrors),
    #[error("too many orders from this client")]
    RateLimited { retry_after: Duration },
    #[error("busy")]
    Busy,
    /// What the queue said of order `id`: the answer names it.
    #[error("order {id}: {error}")]
    Submit { id: Uuid, error: SubmitError },
}

/// What a JSON client is told about one order, by `POST /orders` and `GET /orders/{id}`.
#[derive(Debug, Serialize)]
struct OrderAnswer {
    /// `null` only for an id that is not a UUID.
    id: Option<Uuid>,
    /// Written in the wire's words: `accepted`, `pending`, `unknown`.
    status: OrderState,
}

impl OrderAnswer {
    fn new(id: Uuid, status: OrderState) -> Self {
        Self {
            id: Some(id),
            status,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Form,
    Json,
}

pub async fn create(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let json = resp::wants_json(request.headers());
    let json_errors = json_errors(request.headers());
    let browser_lang = Lang::from_accept_language(request.headers());
    let mut form = OrderForm::default();
    let result = create_order(state, peer, request, &mut form).await;
    let choice = Choice::pick(form.lang.as_deref(), browser_lang);
    match result {
        Ok((id, outcome)) => created(id, outcome, json, choice),
        Err(error) => create_failed(state, &error, &form, json_errors, choice),
    }
}

/// Whether a failed `POST /orders` is answered in JSON: asked for, or the order came as JSON
/// (a form page is no use to a client that sends JSON). Successes follow `Accept` alone, as
/// DESIGN.md says.
fn json_errors(headers: &HeaderMap) -> bool {
    resp::wants_json(headers) || encoding(headers) == Some(Encoding::Json)
}

/// `POST /orders` when the front is at its in-flight bound: the form comes back at once with
/// the shopper's input and a 503, without touching NATS. The body is read (bounded as always):
/// a few hundred bytes already in the socket cost less than losing what the shopper typed.
pub async fn busy(state: &AppState, request: Request<Incoming>) -> Response<Body> {
    let json = json_errors(request.headers());
    let browser_lang = Lang::from_accept_language(request.headers());
    let mut form = OrderForm::default();
    if !json
        && encoding(request.headers()) == Some(Encoding::Form)
        && let Ok(body) = read_body(state, request).await
    {
        form = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    }
    let choice = Choice::pick(form.lang.as_deref(), browser_lang);
    create_failed(state, &CreateError::Busy, &form, json, choice)
}

async fn create_order(
    state: &AppState,
    peer: IpAddr,
    request: Request<Incoming>,
    form: &mut OrderForm,
) -> Result<(Uuid, Submitted), CreateError> {
    let encoding = encoding(request.headers()).ok_or(CreateError::UnsupportedMediaType)?;
    let limited = state
        .limiter
        .as_ref()
        .map(|limiter| limiter.check(peer, request.headers()));
    // Boxed so that its state is not reserved through the confirmation wait.
    let body = Box::pin(read_body(state, request)).await?;
    *form = match encoding {
        Encoding::Form => {
            serde_urlencoded::from_bytes(&body).map_err(|_| CreateError::Malformed)?
        }
        Encoding::Json => serde_json::from_slice(&body).map_err(|_| CreateError::Malformed)?,
    };
    // Checked before reading, applied after: the form comes back with the shopper's input.
    if let Some(Err(retry_after)) = limited {
        return Err(CreateError::RateLimited { retry_after });
    }
    let order = form.parse(state.country).map_err(CreateError::Invalid)?;
    let outcome = state
        .queue
        .submit(&order)
        .await
        .map_err(|error| CreateError::Submit {
            id: order.id,
            error,
        })?;
    tracing::debug!(order_id = %order.id, outcome = ?outcome, "order submitted");
    Ok((order.id, outcome))
}

fn encoding(headers: &HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = content_type.split(';').next()?.trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(Encoding::Form)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(Encoding::Json)
    } else {
        None
    }
}

/// The body, bounded in size (413) and in time (408): hyper bounds neither.
async fn read_body(state: &AppState, request: Request<Incoming>) -> Result<Bytes, CreateError> {
    let limit = state.http.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(CreateError::PayloadTooLarge);
    }
    let collect = Limited::new(request.into_body(), limit).collect();
    match tokio::time::timeout(state.http.header_read_timeout, collect).await {
        Err(_) => Err(CreateError::Timeout),
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(CreateError::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(CreateError::Malformed),
    }
}

fn created(id: Uuid, outcome: Submitted, json: bool, choice: Choice) -> Response<Body> {
    // A pending order's link names the message that carries it: an order in another order's
    // envelope is found in the stream only by that (see `StatusRequest::at`).
    let location = match outcome {
        Submitted::Accepted => format!("/orders/{id}{}", choice.query()),
        Submitted::Pending { at } => match choice.query() {
            "" => format!("/orders/{id}?at={at}"),
            lang => format!("/orders/{id}{lang}&at={at}"),
        },
    };
    match (json, outcome) {
        (true, Submitted::Accepted) => resp::json(
            StatusCode::CREATED,
            &OrderAnswer::new(id, OrderState::Accepted),
        ),
        (true, Submitted::Pending { .. }) => resp::with_location(
            resp::json(
                StatusCode::ACCEPTED,
                &OrderAnswer::new(id, OrderState::Pending),
            ),
            &location,
        ),
        // Both outcomes land on the order's page, which tells which (and refreshes if pending).
        (false, _) => resp::see_other(&location),
    }
}

fn create_failed(
    state: &AppState,
    error: &CreateError,
    form: &OrderForm,
    json: bool,
    choice: Choice,
) -> Response<Body> {
    if let CreateError::Submit { id, error } = error {
        match error {
            SubmitError::OutcomeUnknown(_) => {
                tracing::warn!(%error, order_id = %id, "order outcome unknown");
            }
            _ => tracing::warn!(%error, order_id = %id, "order not taken"),
        }
    }
    let t = state.locales.get(choice.lang);
    // The key it came with, unless tampered with.
    let kept_key = form.parsed_key().ok().flatten();
    if let CreateError::Invalid(errors) = error {
        // The one error body DESIGN.md fixes, and the one page with field errors.
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        if json {
            return resp::json(status, &errors.to_json(state.locales.get(Lang::En)));
        }
        let notice = t.form.fix_fields.clone();
        return form_again(state, status, form, errors, notice, choice, kept_key);
    }
    let retry_after = state.retry_after_secs();
    let problem = match *error {
        CreateError::UnsupportedMediaType => Problem::UnsupportedMediaType,
        CreateError::PayloadTooLarge => Problem::PayloadTooLarge,
        CreateError::Timeout => Problem::RequestTimeout,
        // (`Invalid` was answered above.)
        CreateError::Malformed | CreateError::Invalid(_) => Problem::Malformed,
        CreateError::RateLimited { retry_after } => Problem::RateLimited {
            retry_after: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        },
        CreateError::Busy => Problem::Busy { retry_after },
        CreateError::Submit { id, ref error } => match error {
            SubmitError::Unavailable(_) => Problem::QueueUnavailable { id, retry_after },
            SubmitError::OutcomeUnknown(_) => Problem::OutcomeUnknown { id, retry_after },
            SubmitError::Rejected { .. } => Problem::Rejected { id },
        },
    };
    problem.respond(json, |status| {
        let seconds = problem.retry_after().unwrap_or(1);
        let none = &FieldErrors::default();
        // A resubmission of an order that reached the queue, or may have, is the same order:
        // its id is the form's key, the one it came with or the one made for it. A rejected
        // order's id is spent (dead-lettered, and remembered by the stream's duplicate window):
        // pressing "Order" again must be a new order, so a new key.
        let (notice, key) = match problem {
            Problem::RateLimited { .. } => (t.form_rate_limited(seconds), kept_key),
            Problem::Busy { .. } => (t.form_busy(seconds), kept_key),
            Problem::QueueUnavailable { id, .. } | Problem::OutcomeUnknown { id, .. } => {
                (t.form_busy(seconds), Some(id))
            }
            Problem::Rejected { .. } => (t.form.not_saved.clone(), None),
            _ => {
                let page = MessagePage::plain(
                    Frame::new(&state.locales, choice, "/"),
                    &t.page.bad_request_title,
                    &t.page.bad_request_message,
                    &t.page.back,
                );
                return resp::html(status, pages::render(&page));
            }
        };
        form_again(state, status, form, none, notice, choice, key)
    })
}

/// The form again with the shopper's input, and `key` as its key (a fresh one if `None`), so
/// that a resubmission (after a 503, say) is the same order.
fn form_again(
    state: &AppState,
    status: StatusCode,
    form: &OrderForm,
    errors: &FieldErrors,
    notice: String,
    choice: Choice,
    key: Option<Uuid>,
) -> Response<Body> {
    let t = state.locales.get(choice.lang);
    let key = key.unwrap_or_else(Uuid::now_v7).to_string();
    let focus = if errors.name.is_some() {
        Focus::Name
    } else if errors.phone.is_some() {
        Focus::Phone
    } else {
        Focus::None
    };
    let notice = if errors.key && errors.name.is_none() && errors.phone.is_none() {
        t.key_error().to_owned()
    } else {
        notice
    };
    let page = FormPage {
        frame: Frame::new(&state.locales, choice, "/"),
        key: &key,
        name: &form.name,
        phone: &form.phone,
        name_error: errors.name.as_ref().map(|e| t.name_error(e)),
        phone_error: errors.phone.as_ref().map(|e| t.phone_error(e).to_owned()),
        notice: Some(notice),
        focus,
    };
    resp::html(status, pages::render(&page))
}

/// `GET /orders/{id}`: accepted, being saved, or unknown (404); 503 when nobody can tell now
/// or too many lookups are under way, 429 past the client's lookup rate (`lookups`).
pub async fn show(
    state: &AppState,
    peer: IpAddr,
    id: &str,
    request: &Request<Incoming>,
) -> Response<Body> {
    let json = resp::wants_json(request.headers());
    let choice = Choice::of_request(request);
    let path = request.uri().path();
    if let Err(wait) = state.lookups.admit(peer, request.headers()) {
        let problem = Problem::RateLimited {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        };
        return lookup_refused(state, problem, json, choice, path);
    }
    let Ok(id) = Uuid::parse_str(id) else {
        return not_found(state, json, None, choice, path);
    };
    // The message that carries it, as its link says; anything else there is ignored.
    let at = resp::query_value(request.uri().query(), "at")
        .and_then(|at| at.parse::<u64>().ok())
        .filter(|&at| at > 0);
    match state.lookups.status(&state.queue, id, at).await {
        Ok(StatusReply {
            state: OrderState::Unknown,
            ..
        }) => not_found(state, json, Some(id), choice, path),
        Ok(reply) => {
            let accepted = reply.state == OrderState::Accepted;
            if json {
                // Accepted or pending: unknown was answered above.
                return resp::json(StatusCode::OK, &OrderAnswer::new(id, reply.state));
            }
            let t = state.locales.get(choice.lang);
            let number = pages::order_number(&id);
            let mut frame = Frame::new(&state.locales, choice, path);
            let (title, message, (note, action)) = if accepted {
                let done = (None, None);
                (&t.order.accepted_title, &t.order.accepted_message, done)
            } else {
                if let Some(at) = at {
                    // The other language's page must find the order too.
                    frame.switch_href = format!("{}&at={at}", frame.switch_href);
                }
                let refresh = refreshing(&mut frame, request, t, PENDING_REFRESH_SECS, choice, at);
                (&t.order.pending_title, &t.order.pending_message, refresh)
            };
            let page = MessagePage {
                frame,
                title,
                message,
                number: Some(&number),
                phone: reply.phone_masked.as_deref(),
                link: &t.order.another,
                note,
                action,
            };
            resp::html(StatusCode::OK, pages::render(&page))
        }
        Err(error) => {
            let error = match &*error {
                LookupError::Busy => {
                    let problem = Problem::Busy {
                        retry_after: state.retry_after_secs(),
                    };
                    return lookup_refused(state, problem, json, choice, path);
                }
                LookupError::Status(error) => error,
            };
            // Every page refresh asks again; through an outage that would be a warning each.
            if matches!(error, StatusError::Disconnected) {
                tracing::debug!(%error, order_id = %id, "order status unavailable");
            } else {
                tracing::warn!(%error, order_id = %id, "order status unavailable");
            }
            let seconds = state.retry_after_secs();
            let problem = Problem::StatusUnavailable {
                id,
                retry_after: seconds,
            };
            problem.respond(json, |status| {
                let t = state.locales.get(choice.lang);
                let mut frame = Frame::new(&state.locales, choice, path);
                let (note, action) = refreshing(&mut frame, request, t, seconds, choice, at);
                let page = MessagePage {
                    frame,
                    title: &t.order.unknown_title,
                    message: &t.order.unknown_message,
                    number: None,
                    phone: None,
                    link: &t.order.another,
                    note,
                    action,
                };
                resp::html(status, pages::render(&page))
            })
        }
    }
}

/// A page whose answer may still change reloads itself every `seconds`, and offers to stop
/// (`?refresh=off`): a page that reloads forever with no way out fails WCAG 2.2.1, and a screen
/// reader starts over at each reload. Stopped, it offers to check again by hand.
fn refreshing<'t>(
    frame: &mut Frame<'_>,
    request: &Request<Incoming>,
    t: &'t Texts,
    seconds: u64,
    choice: Choice,
    at: Option<u64>,
) -> (Option<String>, Option<Link<'t>>) {
    let stopped = resp::query_value(request.uri().query(), "refresh") == Some("off");
    let mut query = match choice.query() {
        "" => "?refresh=off".to_owned(),
        lang => format!("{lang}&refresh=off"),
    };
    if let Some(at) = at {
        query = format!("{query}&at={at}");
    }
    let href = format!("{}{query}", request.uri().path());
    if stopped {
        (
            None,
            Some(Link {
                href,
                text: &t.order.check_again,
            }),
        )
    } else {
        frame.refresh = Some(seconds);
        let link = Link {
            href,
            text: &t.order.stop_refresh,
        };
        (Some(t.refreshing(seconds)), Some(link))
    }
}

/// How often the "being saved" page reloads itself: the reply timeout is seconds, so the
/// answer is usually there on the first reload.
const PENDING_REFRESH_SECS: u64 = 2;

/// A lookup refused before any look (`problem`: over the client's rate, or at the bound of
/// looks at once): the "busy, try again in N seconds" page, or the problem document.
fn lookup_refused(
    state: &AppState,
    problem: Problem,
    json: bool,
    choice: Choice,
    path: &str,
) -> Response<Body> {
    problem.respond(json, |status| {
        let t = state.locales.get(choice.lang);
        let message = t.busy_message(problem.retry_after().unwrap_or(1));
        let frame = Frame::new(&state.locales, choice, path);
        let page = MessagePage::plain(frame, &t.page.busy_title, &message, &t.page.back);
        resp::html(status, pages::render(&page))
    })
}

fn not_found(
    state: &AppState,
    json: bool,
    id: Option<Uuid>,
    choice: Choice,
    path: &str,
) -> Response<Body> {
    if json {
        return resp::json(
            StatusCode::NOT_FOUND,
            &OrderAnswer {
                id,
                status: OrderState::Unknown,
            },
        );
    }
    let t = state.locales.get(choice.lang);
    let page = MessagePage::plain(
        Frame::new(&state.locales, choice, path),
        &t.order.not_found_title,
        &t.order.not_found_message,
        &t.order.another,
    );
    resp::html(StatusCode::NOT_FOUND, pages::render(&page))
}
