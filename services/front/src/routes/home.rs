//! `GET /`: the order form with a fresh idempotency key.

use http::{Response, StatusCode};
use uuid::Uuid;

use crate::http::{self as resp, Body};
use crate::pages::{self, FormPage};

pub fn form() -> Response<Body> {
    let key = Uuid::now_v7().to_string();
    let page = FormPage {
        key: &key,
        name: "",
        phone: "",
        name_error: None,
        phone_error: None,
        notice: None,
    };
    resp::html(StatusCode::OK, pages::render(&page))
}
