//! The shopper's pages, rendered from `ui/templates` with automatic HTML escaping, in the
//! request's language.

use askama::Template;

use crate::i18n::{Choice, Locales, Texts};
use crate::routes::static_files;

/// What every page shares: its language, the switch to the other one, the stylesheet.
#[derive(Debug)]
pub struct Frame<'a> {
    pub t: &'a Texts,
    /// The other language's texts: its name labels the switch link.
    pub other: &'a Texts,
    /// This page in the other language.
    pub switch_href: String,
    /// The form, in this page's language.
    pub home_href: String,
    pub style_href: &'static str,
    pub favicon_href: &'static str,
    /// Reload after this many seconds, while the answer may still change (no JavaScript).
    pub refresh: Option<u64>,
}

impl<'a> Frame<'a> {
    /// The frame of the page at `path` (no query) in `choice`'s language.
    pub fn new(locales: &'a Locales, choice: Choice, path: &str) -> Self {
        let other = choice.lang.other();
        Self {
            t: locales.get(choice.lang),
            other: locales.get(other),
            switch_href: format!("{path}?lang={}", other.code()),
            home_href: format!("/{}", choice.query()),
            style_href: static_files::style_href(),
            favicon_href: static_files::favicon_href(),
            refresh: None,
        }
    }
}

/// Which field gets the focus when the form comes back: the first one to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    None,
    Name,
    Phone,
}

/// The order form, fresh or returned with the shopper's input and what to fix.
#[derive(Template)]
#[template(path = "form.html")]
pub struct FormPage<'a> {
    pub frame: Frame<'a>,
    /// The idempotency key: the same for every resubmission of this form.
    pub key: &'a str,
    pub name: &'a str,
    pub phone: &'a str,
    pub name_error: Option<String>,
    pub phone_error: Option<String>,
    /// Why the form came back when it was not (only) the fields' fault: busy, not saved.
    pub notice: Option<String>,
    pub focus: Focus,
}

/// Everything but what the shopper typed: a page may end up in a log.
impl std::fmt::Debug for FormPage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormPage")
            .field("key", &self.key)
            .field("name_error", &self.name_error)
            .field("phone_error", &self.phone_error)
            .field("notice", &self.notice)
            .field("focus", &self.focus)
            .finish_non_exhaustive()
    }
}

/// A page with a heading and a message: an order's state, or why there is nothing to show.
#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage<'a> {
    pub frame: Frame<'a>,
    pub title: &'a str,
    pub message: &'a str,
    /// The short order number, when the page is about an order.
    pub number: Option<&'a str>,
    /// The masked phone the order was placed with.
    pub phone: Option<&'a str>,
    /// The link back to the form: "place another order" or "back to the form".
    pub link: &'a str,
    /// "This page refreshes by itself…", while it does.
    pub note: Option<String>,
    /// Stop the self-refresh, or check again by hand once it is stopped.
    pub action: Option<Link<'a>>,
}

impl<'a> MessagePage<'a> {
    /// A page that says one thing and leads back to the form: not found, busy, bad request.
    pub fn plain(frame: Frame<'a>, title: &'a str, message: &'a str, link: &'a str) -> Self {
        Self {
            frame,
            title,
            message,
            number: None,
            phone: None,
            link,
            note: None,
            action: None,
        }
    }
}

/// A link with its text.
#[derive(Debug)]
pub struct Link<'a> {
    pub href: String,
    pub text: &'a str,
}

/// Renders a page; a template error (a bug, not input) becomes a plain apology.
pub fn render(page: &impl Template) -> String {
    page.render().unwrap_or_else(|error| {
        tracing::error!(%error, "template failed to render");
        "<!doctype html><title>FinalPrice</title><p>Внутренняя ошибка. Попробуйте ещё раз. / Internal error. Please try again.</p>"
            .to_owned()
    })
}

/// Short, readable order number for the shopper: the id's random tail.
pub fn order_number(id: &uuid::Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 8..].to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::Lang;

    #[test]
    fn a_form_pages_debug_output_shows_nothing_the_shopper_typed() {
        let locales = Locales::load().expect("locales");
        let choice = Choice {
            lang: Lang::Ru,
            pinned: false,
        };
        let page = FormPage {
            frame: Frame::new(&locales, choice, "/"),
            key: "k",
            name: "Анна",
            phone: "89991234567",
            name_error: None,
            phone_error: Some("phone error".into()),
            notice: None,
            focus: Focus::Phone,
        };
        let shown = format!("{page:?}");
        assert!(
            !shown.contains("Анна") && !shown.contains("9991234567"),
            "{shown}"
        );
        assert!(shown.contains("phone error"), "{shown}");
    }
}
