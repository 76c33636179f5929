//! The shopper's name as typed into the order form, normalised and validated.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize, Serializer};

/// Longest accepted name, in characters (Unicode scalar values) after normalisation.
const MAX_CHARS: usize = 100;

/// Inputs longer than this are refused before normalisation so that a huge body cannot make
/// us allocate or scan much. Four bytes per character leaves headroom for padding whitespace.
const MAX_RAW_BYTES: usize = 1000;

/// Letters of any script, each optionally followed by combining marks (so decomposed "й" =
/// "и" + U+0306 works, but a mark cannot stand alone or stack on punctuation), plus the
/// separators real names use. Everything else — digits, markup, control, format (bidi,
/// zero-width) and emoji characters — falls outside the class.
static ALLOWED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:\p{L}\p{M}*|[ '’.\-])+$").expect("name character regex is valid")
});

static LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{L}").expect("letter regex is valid"));

/// A shopper's name: trimmed, inner whitespace collapsed to single spaces, 1–100 characters
/// of letters, spaces, hyphens, apostrophes and dots, with at least one letter.
///
/// `Debug` is redacted because this is personal data and must not reach logs.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct CustomerName(String);

/// Why a name was refused; each variant has its own hint for the shopper (`ui/locales`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but whitespace was entered.
    #[error("name is empty")]
    Empty,
    /// The name is longer than `max` characters.
    #[error("name is longer than {max} characters")]
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// The name contains something other than letters, spaces, hyphens, apostrophes or dots.
    #[error("name contains characters other than letters, spaces, hyphens, apostrophes and dots")]
    InvalidCharacters,
    /// The name consists of punctuation only.
    #[error("name contains no letters")]
    NoLetter,
}

impl CustomerName {
    /// Normalises and validates a name as typed by the shopper.
    ///
    /// Leading and trailing whitespace is removed and inner runs of whitespace (any Unicode
    /// whitespace, including tabs and non-breaking spaces) become one ASCII space.
    ///
    /// # Errors
    ///
    /// Returns a [`NameError`] describing the first rule the input breaks.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        if raw.len() > MAX_RAW_BYTES {
            return Err(NameError::TooLong { max: MAX_CHARS });
        }

        let mut name = String::with_capacity(raw.len());
        for word in raw.split_whitespace() {
            if !name.is_empty() {
                name.push(' ');
            }
            name.push_str(word);
        }

        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.chars().count() > MAX_CHARS {
            return Err(NameError::TooLong { max: MAX_CHARS });
        }
        if !ALLOWED.is_match(&name) {
            return Err(NameError::InvalidCharacters);
        }
        if !LETTER.is_match(&name) {
            return Err(NameError::NoLetter);
        }
        Ok(Self(name))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerName {
    type Error = NameError;

    /// Same rules as [`CustomerName::parse`]; used when deserialising so that stored or
    /// received values are re-validated.
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl AsRef<str> for CustomerName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for CustomerName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Debug for CustomerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CustomerName(<redacted, {} chars>)",
            self.0.chars().count()
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as DeError, StringDeserializer};

    #[test]
    fn valid_names_are_normalised() {
        let cases = [
            ("  Анна   Мария ", "Анна Мария", "trim and collapse spaces"),
            (
                "Анна\tМария\n",
                "Анна Мария",
                "tabs and newlines are whitespace",
            ),
            ("Анна\u{00A0}Мария", "Анна Мария", "no-break space"),
            ("O'Brien", "O'Brien", "ASCII apostrophe"),
            ("O’Brien", "O’Brien", "typographic apostrophe"),
            ("Jean-Luc", "Jean-Luc", "hyphen"),
            ("J. R. R.", "J. R. R.", "initials with dots"),
            ("李小龙", "李小龙", "CJK"),
            ("Zoë", "Zoë", "precomposed diaeresis"),
            ("Zoe\u{0308}", "Zoe\u{0308}", "combining diaeresis"),
            ("Ñandú", "Ñandú", "Spanish"),
            ("Йордан", "Йордан", "precomposed Й"),
            ("И\u{0306}ордан", "И\u{0306}ордан", "decomposed Й"),
            ("a", "a", "single letter"),
            ("-Anna-", "-Anna-", "punctuation around a letter"),
        ];
        for (raw, expected, why) in cases {
            let name = CustomerName::parse(raw)
                .unwrap_or_else(|e| panic!("{why}: {raw:?} rejected with {e:?}"));
            assert_eq!(name.as_ref(), expected, "{why}");
        }
    }

    #[test]
    fn length_limit_counts_characters_not_bytes() {
        let hundred_cyrillic = "я".repeat(100);
        assert_eq!(
            CustomerName::parse(&hundred_cyrillic).unwrap().as_str(),
            hundred_cyrillic
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        let too_long = NameError::TooLong { max: 100 };
        let cases = [
            ("", NameError::Empty, "empty"),
            ("   ", NameError::Empty, "spaces only"),
            ("\t\n\u{00A0}", NameError::Empty, "other whitespace only"),
            ("Robert'); DROP TABLE", NameError::InvalidCharacters, "SQL"),
            ("<script>", NameError::InvalidCharacters, "markup"),
            ("\"Anna\"", NameError::InvalidCharacters, "double quotes"),
            ("a\u{0}b", NameError::InvalidCharacters, "NUL"),
            ("Anna\u{7}", NameError::InvalidCharacters, "control char"),
            (
                "Anna\u{202E}",
                NameError::InvalidCharacters,
                "bidi override",
            ),
            (
                "An\u{200B}na",
                NameError::InvalidCharacters,
                "zero-width space",
            ),
            (
                "An\u{200D}na",
                NameError::InvalidCharacters,
                "zero-width joiner",
            ),
            ("\u{FEFF}Anna", NameError::InvalidCharacters, "BOM"),
            ("Anna 😀", NameError::InvalidCharacters, "emoji"),
            ("Anna2", NameError::InvalidCharacters, "digit"),
            ("Anna_Maria", NameError::InvalidCharacters, "underscore"),
            (
                "\u{0306}Anna",
                NameError::InvalidCharacters,
                "leading combining mark",
            ),
            (
                "Anna '\u{0306}",
                NameError::InvalidCharacters,
                "mark on punctuation",
            ),
            ("-", NameError::NoLetter, "hyphen only"),
            (".", NameError::NoLetter, "dot only"),
            ("' - . ’", NameError::NoLetter, "punctuation only"),
        ];
        for (raw, expected, why) in cases {
            assert_eq!(CustomerName::parse(raw), Err(expected), "{why}: {raw:?}");
        }

        let long_cases = [
            ("a".repeat(101), "101 letters"),
            ("я".repeat(101), "101 Cyrillic letters"),
            (
                format!("Anna{}", " ".repeat(997)),
                "over the raw byte guard",
            ),
            (
                "<".repeat(5000),
                "huge input is refused before the character check",
            ),
        ];
        for (raw, why) in long_cases {
            assert_eq!(CustomerName::parse(&raw), Err(too_long), "{why}");
        }
    }

    #[test]
    fn the_message_names_the_limit() {
        let err = NameError::TooLong { max: MAX_CHARS };
        assert!(err.to_string().contains(&MAX_CHARS.to_string()));
    }

    #[test]
    fn debug_is_redacted() {
        let name = CustomerName::parse("Анна Мария").unwrap();
        let debug = format!("{name:?}");
        assert_eq!(debug, "CustomerName(<redacted, 10 chars>)");
        assert!(!format!("{name:#?}").contains("Анна"));
    }

    #[test]
    fn deserialising_revalidates() {
        let ok: StringDeserializer<DeError> = "  Анна  ".to_owned().into_deserializer();
        assert_eq!(CustomerName::deserialize(ok).unwrap().as_str(), "Анна");

        let bad: StringDeserializer<DeError> = "<script>".to_owned().into_deserializer();
        assert!(CustomerName::deserialize(bad).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in any::<String>()) {
            let _ = CustomerName::parse(&raw);
        }

        #[test]
        fn parse_never_panics_on_unicode(raw in "\\PC{0,300}") {
            let _ = CustomerName::parse(&raw);
        }

        #[test]
        fn parsed_names_are_stable(raw in prop_oneof![
            // Mostly-valid names, so that the property is exercised on successes.
            "[ \\ta-zA-Zа-яА-ЯёЁ'’.\\-]{0,110}",
            "[ \\ta-zA-Zа-яА-ЯёЁ'’.\\-\u{0306}0<]{0,120}",
        ]) {
            if let Ok(name) = CustomerName::parse(&raw) {
                prop_assert_eq!(CustomerName::parse(name.as_ref()), Ok(name.clone()));
                prop_assert_eq!(CustomerName::try_from(name.as_ref().to_owned()), Ok(name.clone()));
                let s = name.as_str();
                prop_assert!(!s.starts_with(' ') && !s.ends_with(' ') && !s.contains("  "));
                prop_assert!((1..=MAX_CHARS).contains(&s.chars().count()));
            }
        }
    }
}
