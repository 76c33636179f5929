//! The shopper's phone number, normalised to E.164 so that one phone has one spelling.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize, Serializer};

/// Inputs longer than this are refused before any other work; a formatted 15-digit number
/// with generous separators fits comfortably.
const MAX_RAW_BYTES: usize = 64;

/// After separators are removed only digits and one leading `+` may remain. `[0-9]`, not
/// `\d`: the latter would let fullwidth or Arabic-Indic digits through.
static DIGITS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\+?[0-9]*$").expect("digits regex is valid"));

/// E.164: `+`, a country code (never starting with 0), 8–15 digits in total.
static E164: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\+[1-9][0-9]{7,14}$").expect("E.164 regex is valid"));

/// Russian national forms: trunk prefix `8` (or a `7` typed without the `+`) and ten
/// digits, or a bare ten-digit mobile number.
static RU_NATIONAL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:[78]([0-9]{10})|(9[0-9]{9}))$").expect("Russian number regex is valid")
});

/// Country whose national numbering plan is assumed for numbers typed without `+`.
///
/// Serialised and parsed as its ISO 3166-1 alpha-2 code (`"RU"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum Country {
    /// Russia (`RU`, calling code +7).
    #[default]
    #[serde(rename = "RU")]
    Russia,
}

impl Country {
    /// ISO 3166-1 alpha-2 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Russia => "RU",
        }
    }
}

/// A country code that is not a supported [`Country`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported country code, expected one of: RU")]
pub struct UnknownCountry;

impl FromStr for Country {
    type Err = UnknownCountry;

    /// Accepts the ISO 3166-1 alpha-2 code in any ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("RU") {
            Ok(Self::Russia)
        } else {
            Err(UnknownCountry)
        }
    }
}

impl TryFrom<String> for Country {
    type Error = UnknownCountry;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// A phone number in E.164 form (`+` followed by 8–15 digits), e.g. `+79991234567`.
///
/// `Debug` shows only the masked form because this is personal data and must not reach logs.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct PhoneNumber(String);

/// Why a phone number was refused; each variant has its own hint for the shopper (`ui/locales`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Nothing but whitespace was entered.
    #[error("phone number is empty")]
    Empty,
    /// Something other than digits, separators and one leading `+` was entered.
    #[error(
        "phone number contains characters other than digits, spaces, dashes, dots, parentheses and a leading plus"
    )]
    InvalidCharacters,
    /// Only allowed characters, but not an international number nor a national number of the
    /// default country (wrong number of digits, unknown prefix).
    #[error("not a recognised phone number")]
    NotAPhoneNumber,
}

/// Formatting characters shoppers type or paste between digits. Besides the ASCII space and
/// hyphen this covers the no-break spaces and typographic dashes that word processors and
/// web pages substitute, so a pasted number is not refused for an invisible difference.
fn is_separator(c: char) -> bool {
    let space = matches!(c, ' ' | '\u{00A0}' | '\u{202F}');
    let dash = matches!(c, '-' | '\u{2010}'..='\u{2014}' | '\u{2212}');
    space || dash || matches!(c, '.' | '(' | ')')
}

impl PhoneNumber {
    /// Normalises a phone number as typed by the shopper.
    ///
    /// Separators (spaces, dashes, dots, parentheses) are removed. A `+` followed by 8–15
    /// digits is taken as international and kept as is; anything else is read as a national
    /// number of `default_country`.
    ///
    /// # Errors
    ///
    /// Returns a [`PhoneError`] describing why the input is not a phone number.
    pub fn parse(raw: &str, default_country: Country) -> Result<Self, PhoneError> {
        if raw.len() > MAX_RAW_BYTES {
            return Err(PhoneError::NotAPhoneNumber);
        }
        if raw.trim().is_empty() {
            return Err(PhoneError::Empty);
        }

        let compact: String = raw.chars().filter(|&c| !is_separator(c)).collect();
        if !DIGITS.is_match(&compact) {
            return Err(PhoneError::InvalidCharacters);
        }
        if compact.starts_with('+') {
            return Self::parse_e164(&compact);
        }

        match default_country {
            Country::Russia => {
                let caps = RU_NATIONAL
                    .captures(&compact)
                    .ok_or(PhoneError::NotAPhoneNumber)?;
                let subscriber = caps
                    .get(1)
                    .or_else(|| caps.get(2))
                    .ok_or(PhoneError::NotAPhoneNumber)?;
                Ok(Self(format!("+7{}", subscriber.as_str())))
            }
        }
    }

    /// Accepts only a number already in E.164 form, with no separators; used for values
    /// that this type produced earlier (storage, messages).
    ///
    /// # Errors
    ///
    /// [`PhoneError::Empty`] for an empty string, [`PhoneError::NotAPhoneNumber`] otherwise.
    pub fn parse_e164(s: &str) -> Result<Self, PhoneError> {
        if s.is_empty() {
            Err(PhoneError::Empty)
        } else if E164.is_match(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PhoneError::NotAPhoneNumber)
        }
    }

    /// The E.164 form, e.g. `+79991234567`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number with all but the first two characters and the last two digits replaced by
    /// `*`, same length, e.g. `+7********67`; safe to show back to the shopper or to log.
    pub fn masked(&self) -> String {
        let len = self.0.chars().count();
        self.0
            .chars()
            .enumerate()
            .map(|(i, c)| if i < 2 || i + 2 >= len { c } else { '*' })
            .collect()
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;

    /// Strict: only E.164 is accepted (see [`PhoneNumber::parse_e164`]).
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse_e164(&value)
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use serde::de::IntoDeserializer;
    use serde::de::value::{Error as DeError, StrDeserializer, StringDeserializer};

    fn parse_ru(raw: &str) -> Result<PhoneNumber, PhoneError> {
        PhoneNumber::parse(raw, Country::Russia)
    }

    #[test]
    fn valid_numbers_are_normalised() {
        let cases = [
            (
                "+7 (999) 123-45-67",
                "+79991234567",
                "international with formatting",
            ),
            ("8 999 123 45 67", "+79991234567", "trunk prefix 8"),
            (
                "8(999)123-45-67",
                "+79991234567",
                "trunk prefix 8, no spaces",
            ),
            ("79991234567", "+79991234567", "7 without plus"),
            ("9991234567", "+79991234567", "bare mobile"),
            ("  +79991234567  ", "+79991234567", "surrounding spaces"),
            (
                "8 495 123-45-67",
                "+74951234567",
                "Moscow landline with trunk prefix",
            ),
            (
                "+7\u{00A0}999\u{00A0}123\u{2013}45\u{2013}67",
                "+79991234567",
                "pasted NBSP and en dash",
            ),
            ("+44 20 7946 0958", "+442079460958", "UK"),
            ("+1.415.555.0100", "+14155550100", "US with dots"),
            ("+12345678", "+12345678", "shortest E.164"),
            ("+123456789012345", "+123456789012345", "longest E.164"),
        ];
        for (raw, expected, why) in cases {
            let phone =
                parse_ru(raw).unwrap_or_else(|e| panic!("{why}: {raw:?} rejected with {e:?}"));
            assert_eq!(phone.as_ref(), expected, "{why}");
        }
    }

    #[test]
    fn invalid_numbers_are_rejected() {
        let cases = [
            ("", PhoneError::Empty, "empty"),
            ("   ", PhoneError::Empty, "spaces only"),
            ("+7 999 123 45 6a", PhoneError::InvalidCharacters, "letter"),
            (
                "++79991234567",
                PhoneError::InvalidCharacters,
                "double plus",
            ),
            (
                "7+9991234567",
                PhoneError::InvalidCharacters,
                "plus not at start",
            ),
            ("+7 999 123/45/67", PhoneError::InvalidCharacters, "slash"),
            ("+7999123\u{0}4567", PhoneError::InvalidCharacters, "NUL"),
            ("+7999\t1234567", PhoneError::InvalidCharacters, "tab"),
            (
                "+7999\u{200B}1234567",
                PhoneError::InvalidCharacters,
                "zero-width space",
            ),
            (
                "+７９９９１２３４５６７",
                PhoneError::InvalidCharacters,
                "fullwidth digits",
            ),
            ("12345", PhoneError::NotAPhoneNumber, "too few digits"),
            ("+12345", PhoneError::NotAPhoneNumber, "E.164 too short"),
            (
                "+1234567",
                PhoneError::NotAPhoneNumber,
                "seven digits after plus",
            ),
            (
                "+1234567890123456",
                PhoneError::NotAPhoneNumber,
                "E.164 too long",
            ),
            (
                "+0123456789",
                PhoneError::NotAPhoneNumber,
                "country code starting with 0",
            ),
            ("+", PhoneError::NotAPhoneNumber, "plus only"),
            ("()", PhoneError::NotAPhoneNumber, "separators only"),
            (
                "8 999 123 45 6",
                PhoneError::NotAPhoneNumber,
                "10 digits with trunk prefix",
            ),
            ("8 999 123 45 678", PhoneError::NotAPhoneNumber, "12 digits"),
            (
                "4951234567",
                PhoneError::NotAPhoneNumber,
                "10 digits not starting with 9",
            ),
            (
                "69991234567",
                PhoneError::NotAPhoneNumber,
                "11 digits, unknown prefix",
            ),
        ];
        for (raw, expected, why) in cases {
            assert_eq!(parse_ru(raw), Err(expected), "{why}: {raw:?}");
        }
        let huge = "1".repeat(65);
        assert_eq!(
            parse_ru(&huge),
            Err(PhoneError::NotAPhoneNumber),
            "over the byte guard"
        );
    }

    #[test]
    fn strict_parse_accepts_only_e164() {
        assert_eq!(
            PhoneNumber::parse_e164("+79991234567").unwrap().as_str(),
            "+79991234567"
        );
        let cases = [
            ("", PhoneError::Empty, "empty"),
            ("89991234567", PhoneError::NotAPhoneNumber, "national"),
            ("+7 999 123-45-67", PhoneError::NotAPhoneNumber, "formatted"),
            (
                " +79991234567",
                PhoneError::NotAPhoneNumber,
                "leading space",
            ),
        ];
        for (raw, expected, why) in cases {
            assert_eq!(
                PhoneNumber::parse_e164(raw),
                Err(expected),
                "{why}: {raw:?}"
            );
            assert_eq!(
                PhoneNumber::try_from(raw.to_owned()),
                Err(expected),
                "{why}: {raw:?}"
            );
        }
    }

    #[test]
    fn masking_and_debug_hide_the_middle() {
        let phone = parse_ru("8 999 123 45 67").unwrap();
        assert_eq!(phone.masked(), "+7********67");
        assert_eq!(format!("{phone:?}"), "PhoneNumber(+7********67)");
        assert!(!format!("{phone:#?}").contains("999"));
    }

    #[test]
    fn country_parses_from_iso_code() {
        assert_eq!(Country::default(), Country::Russia);
        assert_eq!("RU".parse::<Country>(), Ok(Country::Russia));
        assert_eq!("ru".parse::<Country>(), Ok(Country::Russia));
        assert_eq!("RUS".parse::<Country>(), Err(UnknownCountry));
        assert_eq!(Country::Russia.code(), "RU");

        let de: StrDeserializer<DeError> = "RU".into_deserializer();
        assert_eq!(Country::deserialize(de), Ok(Country::Russia));
        let de: StrDeserializer<DeError> = "XX".into_deserializer();
        assert!(Country::deserialize(de).is_err());
    }

    #[test]
    fn deserialising_is_strict() {
        let ok: StringDeserializer<DeError> = "+79991234567".to_owned().into_deserializer();
        assert_eq!(
            PhoneNumber::deserialize(ok).unwrap().as_str(),
            "+79991234567"
        );

        let national: StringDeserializer<DeError> = "89991234567".to_owned().into_deserializer();
        assert!(PhoneNumber::deserialize(national).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in any::<String>()) {
            let _ = parse_ru(&raw);
            let _ = PhoneNumber::parse_e164(&raw);
        }

        #[test]
        fn parsed_numbers_are_stable(raw in prop_oneof![
            // Mostly-valid formatted numbers, so that the property is exercised on successes.
            "(\\+7|8|7|\\+44|\\+1|)[ (]?[0-9]{3}[) ]?[0-9]{3}[ .-]?[0-9]{2}[ .-]?[0-9]{1,3}",
            "\\+?[0-9 ()\\-.+a]{0,24}",
        ]) {
            if let Ok(phone) = parse_ru(&raw) {
                prop_assert_eq!(parse_ru(phone.as_ref()), Ok(phone.clone()));
                prop_assert_eq!(PhoneNumber::parse_e164(phone.as_ref()), Ok(phone.clone()));
                prop_assert_eq!(PhoneNumber::try_from(phone.as_ref().to_owned()), Ok(phone));
            }
        }

        #[test]
        fn national_numbers_normalise(subscriber in "9[0-9]{9}", prefix in "(|7|8|\\+7)") {
            let phone = parse_ru(&format!("{prefix}{subscriber}")).unwrap();
            prop_assert_eq!(phone.as_str(), format!("+7{subscriber}"));
        }

        #[test]
        fn masked_keeps_length_and_ends(raw in "\\+[1-9][0-9]{7,14}") {
            let phone = PhoneNumber::parse_e164(&raw).unwrap();
            let masked = phone.masked();
            prop_assert_eq!(masked.len(), raw.len());
            prop_assert_eq!(&masked[..2], &raw[..2]);
            prop_assert_eq!(&masked[masked.len() - 2..], &raw[raw.len() - 2..]);
            prop_assert!(masked[2..masked.len() - 2].chars().all(|c| c == '*'));
        }
    }
}
