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
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use crate::form::{FieldErrors, OrderForm};
use crate::http::{self as resp, Body};
use crate::pages::{self, FormPage, OrderPage};
use crate::queue::{SubmitError, Submitted};

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
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Form,
    Json,
}

pub async fn create(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let json = resp::wants_json(request.headers());
    let mut form = OrderForm::default();
    match create_order(state, peer, request, &mut form).await {
        Ok((id, outcome)) => created(id, outcome, json),
        Err(error) => create_failed(state, &error, &form, json),
    }
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
    let body = read_body(state, request).await?;
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
    let outcome = state.queue.submit(&order).await?;
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

fn created(id: Uuid, outcome: Submitted, json: bool) -> Response<Body> {
    match (json, outcome) {
        (true, Submitted::Accepted) => resp::json(
            StatusCode::CREATED,
            &json!({ "id": id, "status": "accepted" }),
        ),
        (true, Submitted::Pending) => resp::json(
            StatusCode::ACCEPTED,
            &json!({ "id": id, "status": "pending" }),
        ),
        // Both outcomes land on the order's page, which tells which (and refreshes if pending).
        (false, _) => resp::see_other(&format!("/orders/{id}")),
    }
}

fn create_failed(
    state: &AppState,
    error: &CreateError,
    form: &OrderForm,
    json: bool,
) -> Response<Body> {
    let status = match error {
        CreateError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        CreateError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        CreateError::Timeout => StatusCode::REQUEST_TIMEOUT,
        CreateError::Malformed => StatusCode::BAD_REQUEST,
        CreateError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CreateError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        CreateError::Submit(SubmitError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        CreateError::Submit(SubmitError::Rejected { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let CreateError::Submit(error) = error {
        tracing::warn!(%error, "order not taken");
    }
    let response = if json {
        let body = match error {
            CreateError::Invalid(errors) => errors.to_json(),
            CreateError::Submit(SubmitError::Rejected { .. }) => json!({ "status": "rejected" }),
            other => json!({ "error": other.to_string() }),
        };
        resp::json(status, &body)
    } else {
        match error {
            CreateError::UnsupportedMediaType
            | CreateError::PayloadTooLarge
            | CreateError::Timeout
            | CreateError::Malformed => resp::text(status, "Не удалось прочитать форму.\n"),
            CreateError::Invalid(errors) => form_again(status, form, errors, None),
            CreateError::RateLimited { .. } => form_again(
                status,
                form,
                &FieldErrors::default(),
                Some(
                    "Слишком много заказов с вашего адреса. Подождите немного и нажмите «Заказать» ещё раз — введённые данные сохранены.",
                ),
            ),
            CreateError::Submit(SubmitError::Unavailable(_)) => form_again(
                status,
                form,
                &FieldErrors::default(),
                Some(
                    "Сейчас слишком много заказов. Нажмите «Заказать» ещё раз через несколько секунд — введённые данные сохранены.",
                ),
            ),
            CreateError::Submit(SubmitError::Rejected { .. }) => form_again(
                status,
                form,
                &FieldErrors::default(),
                Some("Заказ не сохранён. Проверьте данные и попробуйте ещё раз."),
            ),
        }
    };
    match error {
        CreateError::RateLimited { retry_after } => {
            resp::retry_after(response, retry_after.as_secs_f64().ceil().max(1.0) as u64)
        }
        _ if status == StatusCode::SERVICE_UNAVAILABLE => {
            resp::retry_after(response, state.retry_after_secs())
        }
        _ => response,
    }
}

/// The form again with the shopper's input. The key is kept, so a resubmission after a 503 is
/// the same order; a tampered key is replaced.
fn form_again(
    status: StatusCode,
    form: &OrderForm,
    errors: &FieldErrors,
    notice: Option<&'static str>,
) -> Response<Body> {
    let key = match form.parsed_key() {
        Ok(Some(key)) => key,
        Ok(None) | Err(_) => Uuid::now_v7(),
    }
    .to_string();
    let page = FormPage {
        key: &key,
        name: &form.name,
        phone: &form.phone,
        name_error: errors.name.as_ref().map(|e| e.message_ru()),
        phone_error: errors.phone.as_ref().map(|e| e.message_ru()),
        notice: notice.or(errors
            .key
            .then_some("Форма устарела. Отправьте её ещё раз.")),
    };
    resp::html(status, pages::render(&page))
}

/// `GET /orders/{id}`: accepted, being saved, or unknown (404); 503 when nobody can tell now.
pub async fn show(state: &AppState, id: &str, headers: &HeaderMap) -> Response<Body> {
    let json = resp::wants_json(headers);
    let Ok(id) = Uuid::parse_str(id) else {
        return not_found(json, None);
    };
    match state.queue.status_or_queued(id).await {
        Ok(StatusReply {
            state: OrderState::Unknown,
            ..
        }) => not_found(json, Some(id)),
        Ok(reply) => {
            let accepted = reply.state == OrderState::Accepted;
            if json {
                let status = if accepted { "accepted" } else { "pending" };
                return resp::json(StatusCode::OK, &json!({ "id": id, "status": status }));
            }
            let number = pages::order_number(&id);
            let page = if accepted {
                OrderPage {
                    heading: "Ваш заказ принят",
                    message: "Спасибо! Мы сохранили заказ и скоро свяжемся с вами.",
                    number: Some(&number),
                    phone: reply.phone_masked.as_deref(),
                    refresh: false,
                }
            } else {
                OrderPage {
                    heading: "Заказ сохраняется",
                    message: "Мы получили заказ и записываем его. Страница обновится сама.",
                    number: Some(&number),
                    phone: reply.phone_masked.as_deref(),
                    refresh: true,
                }
            };
            resp::html(StatusCode::OK, pages::render(&page))
        }
        Err(error) => {
            tracing::warn!(%error, order_id = %id, "order status unavailable");
            let response = if json {
                resp::json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "id": id, "error": "status unavailable" }),
                )
            } else {
                let page = OrderPage {
                    heading: "Состояние заказа пока неизвестно",
                    message: "Не удалось узнать состояние заказа. Страница обновится сама.",
                    number: None,
                    phone: None,
                    refresh: true,
                };
                resp::html(StatusCode::SERVICE_UNAVAILABLE, pages::render(&page))
            };
            resp::retry_after(response, state.retry_after_secs())
        }
    }
}

fn not_found(json: bool, id: Option<Uuid>) -> Response<Body> {
    if json {
        return resp::json(
            StatusCode::NOT_FOUND,
            &json!({ "id": id, "status": "unknown" }),
        );
    }
    let page = OrderPage {
        heading: "Заказ не найден",
        message: "Такого заказа нет. Проверьте ссылку или оформите заказ заново.",
        number: None,
        phone: None,
        refresh: false,
    };
    resp::html(StatusCode::NOT_FOUND, pages::render(&page))
}
