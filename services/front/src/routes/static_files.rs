//! `/static/…`: the files of `ui/static`, compiled in and served under names that carry a hash
//! of their content, so a browser keeps each for a year yet never shows a stale one after a
//! release. Only names in this list exist, so no path (encoded or not) reaches anything else.

use std::sync::LazyLock;

use http::Response;
use http::header::{self, HeaderValue};
use sha2::{Digest, Sha256};

use crate::http::Body;
use crate::problem::Problem;

/// One file of `ui/static`.
struct Asset {
    /// `style.css`: still served, but revalidated, for anyone who asks by the plain name.
    plain: &'static str,
    /// `style.0123456789abcdef.css`: what the pages link to.
    hashed: String,
    /// `/static/` and the hashed name.
    href: String,
    content_type: &'static str,
    body: &'static [u8],
}

impl Asset {
    fn new(plain: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        let digest = Sha256::digest(body);
        let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let hashed = match plain.rsplit_once('.') {
            Some((stem, extension)) => format!("{stem}.{hash}.{extension}"),
            None => format!("{plain}.{hash}"),
        };
        Self {
            plain,
            href: format!("/static/{hashed}"),
            hashed,
            content_type,
            body,
        }
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        Asset::new(
            "style.css",
            "text/css; charset=utf-8",
            include_bytes!("../../../../ui/static/style.css"),
        ),
        Asset::new(
            "favicon.svg",
            "image/svg+xml",
            include_bytes!("../../../../ui/static/favicon.svg"),
        ),
    ]
});

/// The stylesheet's URL path, content hash included.
pub fn style_href() -> &'static str {
    &ASSETS[0].href
}

/// The icon's URL path, content hash included.
pub fn favicon_href() -> &'static str {
    &ASSETS[1].href
}

/// The file `name`; a 404 (a problem document for a JSON client) when there is none.
pub fn serve(name: &str, json: bool) -> Response<Body> {
    let Some((asset, immutable)) = ASSETS.iter().find_map(|asset| {
        if asset.hashed == name {
            Some((asset, true))
        } else if asset.plain == name {
            Some((asset, false))
        } else {
            None
        }
    }) else {
        return Problem::NotFound.response(json);
    };
    let mut response = Response::new(Body::from(asset.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "public, no-cache"
        }),
    );
    response
}
