//! `/static/…`: the files of `ui/static`, compiled in. Only names in this list exist, so no
//! path (encoded or not) reaches anything else.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::http::{self as resp, Body};

const STYLE_CSS: &str = include_str!("../../../../ui/static/style.css");

pub fn serve(name: &str) -> Response<Body> {
    match name {
        "style.css" => {
            let mut response = Response::new(Body::from(STYLE_CSS));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            );
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            response
        }
        _ => resp::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
