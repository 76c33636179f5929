//! `GET /`: the order form with a fresh idempotency key, in the shopper's language.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use uuid::Uuid;

use super::AppState;
use crate::http::{self as resp, Body};
use crate::i18n::Choice;
use crate::pages::{self, Focus, FormPage, Frame};

pub fn form(state: &AppState, choice: Choice) -> Response<Body> {
    let key = Uuid::now_v7().to_string();
    let page = FormPage {
        frame: Frame::new(&state.locales, choice, "/"),
        key: &key,
        name: "",
        phone: "",
        name_error: None,
        phone_error: None,
        notice: None,
        focus: Focus::None,
    };
    let mut response = resp::html(StatusCode::OK, pages::render(&page));
    // Kept (not `no-store`) so that Back after an order shows this very form with its key: a
    // resubmission is then the same order. `no-cache` still gives every new visit a fresh key.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}
