//! The shopper's language: which one a request gets (a `lang` the shopper picked, else the
//! browser's `Accept-Language`, else Russian) and every text of each, from `ui/locales`.

use finalprice_shared::domain::{NameError, PhoneError};
use http::header::{self, HeaderMap};
use serde::Deserialize;

use crate::http::query_value;

/// A language the pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    En,
}

impl Lang {
    /// The language of a shopper whose browser prefers none we have.
    pub const DEFAULT: Self = Self::Ru;

    pub fn code(self) -> &'static str {
        match self {
            Self::Ru => "ru",
            Self::En => "en",
        }
    }

    /// A language tag's language: `en`, `en-GB` and `EN` are English.
    pub fn from_tag(tag: &str) -> Option<Self> {
        let primary = tag.split('-').next()?.trim();
        if primary.eq_ignore_ascii_case("ru") {
            Some(Self::Ru)
        } else if primary.eq_ignore_ascii_case("en") {
            Some(Self::En)
        } else {
            None
        }
    }

    /// The one the switch link offers.
    pub fn other(self) -> Self {
        match self {
            Self::Ru => Self::En,
            Self::En => Self::Ru,
        }
    }

    /// The language the browser weighs highest among ours (RFC 9110 §12.5.4): a language's
    /// weight is its best entry's (`en-US` and `en` both name English), else that of `*` (any
    /// language not named); on a tie the one listed first wins, and Russian when the browser
    /// names none of ours or refuses them all (`q=0`). A malformed entry is skipped, never an
    /// error: the header is only a hint.
    pub fn from_accept_language(headers: &HeaderMap) -> Self {
        // (weight in thousandths, position of the entry) for Russian, English, and `*`.
        let mut named: [Option<(u16, usize)>; 2] = [None, None];
        let mut wildcard: Option<(u16, usize)> = None;
        let entries = headers
            .get_all(header::ACCEPT_LANGUAGE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','));
        for (position, entry) in entries.enumerate() {
            let mut parts = entry.split(';');
            let tag = parts.next().unwrap_or_default().trim();
            let weight = parts
                .find_map(|param| {
                    let (key, value) = param.split_once('=')?;
                    key.trim().eq_ignore_ascii_case("q").then_some(value)
                })
                .map_or(Some(1000), parse_weight);
            let Some(weight) = weight else { continue };
            let slot = if tag == "*" {
                &mut wildcard
            } else if let Some(lang) = Self::from_tag(tag) {
                &mut named[lang as usize]
            } else {
                continue;
            };
            if slot.is_none_or(|(best, _)| weight > best) {
                *slot = Some((weight, position));
            }
        }
        let mut chosen = (Self::DEFAULT, 0, usize::MAX);
        for lang in [Self::Ru, Self::En] {
            let Some((weight, position)) = named[lang as usize].or(wildcard) else {
                continue;
            };
            if weight > chosen.1 || (weight == chosen.1 && weight > 0 && position < chosen.2) {
                chosen = (lang, weight, position);
            }
        }
        chosen.0
    }

    /// CLDR plural category of `n` for this language.
    fn plural(self, n: u64) -> Plural {
        match self {
            Self::En if n == 1 => Plural::One,
            Self::En => Plural::Many,
            Self::Ru => match (n % 10, n % 100) {
                (1, 11) => Plural::Many,
                (1, _) => Plural::One,
                (2..=4, 12..=14) => Plural::Many,
                (2..=4, _) => Plural::Few,
                _ => Plural::Many,
            },
        }
    }
}

/// A `q` value in thousandths (`0`..=`1000`); `None` when it is not one.
fn parse_weight(q: &str) -> Option<u16> {
    let q = q.trim();
    let (whole, fraction) = q.split_once('.').unwrap_or((q, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Plural {
    One,
    Few,
    Many,
}

/// The language of one response, and whether links must carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub lang: Lang,
    /// The shopper picked a language their browser would not have: links within the site and
    /// the redirect after an order carry `?lang=`, or the next page would switch back.
    pub pinned: bool,
}

impl Choice {
    /// `picked` is a `lang` from the query or the form; anything but a known code is ignored.
    pub fn resolve(picked: Option<&str>, headers: &HeaderMap) -> Self {
        Self::pick(picked, Lang::from_accept_language(headers))
    }

    /// As [`Choice::resolve`], with the browser's language already known.
    pub fn pick(picked: Option<&str>, negotiated: Lang) -> Self {
        match picked.and_then(Lang::from_tag) {
            Some(lang) if lang != negotiated => Self { lang, pinned: true },
            _ => Self {
                lang: negotiated,
                pinned: false,
            },
        }
    }

    /// For a request: its query's `lang`, else `Accept-Language`.
    pub fn of_request<B>(request: &http::Request<B>) -> Self {
        Self::resolve(
            query_value(request.uri().query(), "lang"),
            request.headers(),
        )
    }

    /// What a link within the site appends to keep this language: `""` or `?lang=…`.
    pub fn query(self) -> &'static str {
        match (self.pinned, self.lang) {
            (false, _) => "",
            (true, Lang::Ru) => "?lang=ru",
            (true, Lang::En) => "?lang=en",
        }
    }
}

/// Every text of one language, as `ui/locales/<code>.toml` has them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Texts {
    pub language: LanguageTexts,
    pub form: FormTexts,
    pub order: OrderTexts,
    pub page: PageTexts,
    seconds: PluralTexts,
    errors: ErrorTexts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageTexts {
    pub code: String,
    pub name: String,
    pub switch_label: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormTexts {
    pub title: String,
    pub name_label: String,
    pub phone_label: String,
    pub phone_hint: String,
    pub submit: String,
    pub fix_fields: String,
    busy: String,
    rate_limited: String,
    pub not_saved: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderTexts {
    pub number: String,
    pub phone: String,
    pub another: String,
    pub accepted_title: String,
    pub accepted_message: String,
    pub pending_title: String,
    pub pending_message: String,
    pub unknown_title: String,
    pub unknown_message: String,
    refreshing: String,
    pub stop_refresh: String,
    pub check_again: String,
    pub not_found_title: String,
    pub not_found_message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageTexts {
    pub back: String,
    pub busy_title: String,
    busy_message: String,
    pub not_found_title: String,
    pub not_found_message: String,
    pub bad_request_title: String,
    pub bad_request_message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluralTexts {
    one: String,
    few: String,
    many: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorTexts {
    name_empty: String,
    name_too_long: String,
    name_invalid_characters: String,
    name_no_letter: String,
    phone_empty: String,
    phone_invalid_characters: String,
    phone_not_a_phone_number: String,
    key_invalid: String,
}

impl Texts {
    fn lang(&self) -> Lang {
        Lang::from_tag(&self.language.code).unwrap_or(Lang::DEFAULT)
    }

    /// "5 секунд", "1 second".
    pub fn seconds(&self, n: u64) -> String {
        let form = match self.lang().plural(n) {
            Plural::One => &self.seconds.one,
            Plural::Few => &self.seconds.few,
            Plural::Many => &self.seconds.many,
        };
        form.replace("{n}", &n.to_string())
    }

    fn with_seconds(&self, text: &str, n: u64) -> String {
        text.replace("{seconds}", &self.seconds(n))
    }

    /// The form's notice on a 503: try again in `n` seconds.
    pub fn form_busy(&self, n: u64) -> String {
        self.with_seconds(&self.form.busy, n)
    }

    /// The form's notice on a 429.
    pub fn form_rate_limited(&self, n: u64) -> String {
        self.with_seconds(&self.form.rate_limited, n)
    }

    pub fn busy_message(&self, n: u64) -> String {
        self.with_seconds(&self.page.busy_message, n)
    }

    /// "This page refreshes by itself in N seconds".
    pub fn refreshing(&self, n: u64) -> String {
        self.with_seconds(&self.order.refreshing, n)
    }

    pub fn name_error(&self, error: &NameError) -> String {
        let errors = &self.errors;
        match error {
            NameError::Empty => errors.name_empty.clone(),
            NameError::TooLong { max } => errors.name_too_long.replace("{max}", &max.to_string()),
            NameError::InvalidCharacters => errors.name_invalid_characters.clone(),
            NameError::NoLetter => errors.name_no_letter.clone(),
        }
    }

    pub fn phone_error(&self, error: &PhoneError) -> &str {
        let errors = &self.errors;
        match error {
            PhoneError::Empty => &errors.phone_empty,
            PhoneError::InvalidCharacters => &errors.phone_invalid_characters,
            PhoneError::NotAPhoneNumber => &errors.phone_not_a_phone_number,
        }
    }

    pub fn key_error(&self) -> &str {
        &self.errors.key_invalid
    }
}

/// Why the compiled-in texts could not be used (a build that shipped a broken locale file).
#[derive(Debug, thiserror::Error)]
pub enum LocaleError {
    #[error("ui/locales/{file}: {source}")]
    Parse {
        file: &'static str,
        source: toml::de::Error,
    },
    #[error("ui/locales/{file} says it is language {found:?}")]
    WrongCode { file: &'static str, found: String },
}

const LOCALE_FILES: [(Lang, &str, &str); 2] = [
    (
        Lang::Ru,
        "ru.toml",
        include_str!("../../../ui/locales/ru.toml"),
    ),
    (
        Lang::En,
        "en.toml",
        include_str!("../../../ui/locales/en.toml"),
    ),
];

/// The texts of every language, parsed once at start.
#[derive(Debug)]
pub struct Locales {
    ru: Texts,
    en: Texts,
}

impl Locales {
    pub fn load() -> Result<Self, LocaleError> {
        let [ru, en] = LOCALE_FILES.map(|(lang, file, source)| {
            let texts: Texts =
                toml::from_str(source).map_err(|source| LocaleError::Parse { file, source })?;
            if Lang::from_tag(&texts.language.code) != Some(lang) {
                return Err(LocaleError::WrongCode {
                    file,
                    found: texts.language.code,
                });
            }
            Ok(texts)
        });
        Ok(Self { ru: ru?, en: en? })
    }

    pub fn get(&self, lang: Lang) -> &Texts {
        match lang {
            Lang::Ru => &self.ru,
            Lang::En => &self.en,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use http::HeaderValue;

    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn accept_language_picks_the_highest_weighted_language_we_have() {
        let cases = [
            ("", Lang::Ru),
            ("de-DE, fr;q=0.9", Lang::Ru),
            ("en-US,en;q=0.9", Lang::En),
            ("EN-gb", Lang::En),
            ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", Lang::Ru),
            ("de, en;q=0.5, ru;q=0.4", Lang::En),
            ("ru;q=0.3, en;q=0.7", Lang::En),
            ("en;q=0.5, ru;q=0.5", Lang::En),
            ("en;q=0", Lang::Ru),
            ("en;q=2, ru;q=0.5", Lang::Ru),
            ("en;q=abc, ru;q=0.001", Lang::Ru),
            ("en;q=0.9999", Lang::Ru),
            ("en;q=1.000", Lang::En),
            ("*, en;q=0.1", Lang::Ru),
            ("fr, *;q=0.5, en;q=0.8", Lang::En),
            ("ru;q=0.1, *", Lang::En),
            ("ru;q=0, *", Lang::En),
            ("*", Lang::Ru),
            ("en;Q=0, ru;q=0.2", Lang::Ru),
            ("en-US;q=0, en;q=0.9, ru;q=0.5", Lang::En),
            ("en ; q = 0.8 , ru;q=0.7", Lang::En),
            (";;;,,,=;q=", Lang::Ru),
        ];
        for (header, expected) in cases {
            assert_eq!(
                Lang::from_accept_language(&accept(header)),
                expected,
                "{header:?}"
            );
        }
        assert_eq!(Lang::from_accept_language(&HeaderMap::new()), Lang::Ru);
    }

    #[test]
    fn a_picked_language_is_pinned_only_when_the_browser_would_choose_another() {
        let english_browser = accept("en-US");
        assert_eq!(
            Choice::resolve(Some("ru"), &english_browser),
            Choice {
                lang: Lang::Ru,
                pinned: true
            }
        );
        assert_eq!(
            Choice::resolve(Some("ru"), &english_browser).query(),
            "?lang=ru"
        );
        let same = Choice::resolve(Some("en"), &english_browser);
        assert_eq!((same.lang, same.query()), (Lang::En, ""));
        let nonsense = Choice::resolve(Some("xx"), &HeaderMap::new());
        assert_eq!((nonsense.lang, nonsense.query()), (Lang::Ru, ""));
        let picked = Choice::resolve(query_value(Some("a=1&lang=en"), "lang"), &HeaderMap::new());
        assert_eq!((picked.lang, picked.query()), (Lang::En, "?lang=en"));
        assert_eq!(
            query_value(Some("lang=%65n"), "lang").and_then(Lang::from_tag),
            None
        );
    }

    #[test]
    fn both_locale_files_load_and_say_which_language_they_are() {
        let locales = Locales::load().expect("the compiled-in locales load");
        assert_eq!(locales.get(Lang::Ru).language.code, "ru");
        assert_eq!(locales.get(Lang::En).language.code, "en");
    }

    /// The `{placeholder}`s of every text, by key: a translation that drops `{seconds}` would
    /// tell the shopper "try again in" and nothing.
    fn placeholders(source: &str) -> BTreeSet<(String, String)> {
        fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<(String, String)>) {
            match value {
                toml::Value::Table(table) => {
                    for (key, value) in table {
                        walk(&format!("{prefix}.{key}"), value, out);
                    }
                }
                toml::Value::String(text) => {
                    out.insert((prefix.to_owned(), String::new()));
                    for piece in text.split('{').skip(1) {
                        if let Some((name, _)) = piece.split_once('}') {
                            out.insert((prefix.to_owned(), name.to_owned()));
                        }
                    }
                }
                other => panic!("{prefix}: not text: {other:?}"),
            }
        }
        let value: toml::Value = toml::from_str(source).expect("TOML");
        let mut out = BTreeSet::new();
        walk("", &value, &mut out);
        out
    }

    #[test]
    fn every_text_has_the_same_placeholders_in_both_languages() {
        let [(_, _, ru), (_, _, en)] = LOCALE_FILES;
        assert_eq!(placeholders(ru), placeholders(en));
    }

    #[test]
    fn seconds_take_the_plural_form_of_each_language() {
        let locales = Locales::load().expect("locales");
        let ru = locales.get(Lang::Ru);
        let en = locales.get(Lang::En);
        let cases = [
            (1, "1 секунду", "1 second"),
            (2, "2 секунды", "2 seconds"),
            (5, "5 секунд", "5 seconds"),
            (11, "11 секунд", "11 seconds"),
            (12, "12 секунд", "12 seconds"),
            (21, "21 секунду", "21 seconds"),
            (22, "22 секунды", "22 seconds"),
            (111, "111 секунд", "111 seconds"),
        ];
        for (n, russian, english) in cases {
            assert_eq!(ru.seconds(n), russian);
            assert_eq!(en.seconds(n), english);
        }
        assert!(ru.form_busy(3).contains("через 3 секунды"));
        assert!(en.form_busy(3).contains("in 3 seconds"));
    }

    #[test]
    fn error_texts_name_the_limit() {
        let locales = Locales::load().expect("locales");
        let too_long = NameError::TooLong { max: 100 };
        assert!(locales.get(Lang::Ru).name_error(&too_long).contains("100"));
        assert!(locales.get(Lang::En).name_error(&too_long).contains("100"));
    }
}
