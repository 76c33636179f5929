//! The shopper's pages, rendered from `ui/templates` with automatic HTML escaping.

use askama::Template;

/// The order form, fresh or returned with the shopper's input and what to fix.
#[derive(Debug, Template)]
#[template(path = "form.html")]
pub struct FormPage<'a> {
    /// The idempotency key: the same for every resubmission of this form.
    pub key: &'a str,
    pub name: &'a str,
    pub phone: &'a str,
    pub name_error: Option<&'static str>,
    pub phone_error: Option<&'static str>,
    /// Why the form came back when it was not the fields' fault (busy, not saved).
    pub notice: Option<&'static str>,
}

/// One order's state.
#[derive(Debug, Template)]
#[template(path = "order.html")]
pub struct OrderPage<'a> {
    pub heading: &'static str,
    pub message: &'static str,
    pub number: Option<&'a str>,
    pub phone: Option<&'a str>,
    /// Reload by itself while the answer may still change (no JavaScript needed).
    pub refresh: bool,
}

/// Renders a page; a template error (a bug, not input) becomes a plain apology.
pub fn render(page: &impl Template) -> String {
    page.render().unwrap_or_else(|error| {
        tracing::error!(%error, "template failed to render");
        "<!doctype html><title>FinalPrice</title><p>Внутренняя ошибка. Попробуйте ещё раз.</p>"
            .to_owned()
    })
}

/// Short, readable order number for the shopper: the id's random tail.
pub fn order_number(id: &uuid::Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 8..].to_uppercase()
}
