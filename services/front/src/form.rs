//! The order form as it arrives (plain strings), converted once into a validated [`NewOrder`]
//! or into the list of fields to fix.

use chrono::Utc;
use finalprice_shared::domain::{Country, CustomerName, NameError, PhoneError, PhoneNumber};
use finalprice_shared::messages::NewOrder;
use serde::Deserialize;
use uuid::Uuid;

use crate::i18n::Texts;

/// The raw form fields; missing ones are empty, so they get a field error, not a 400.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct OrderForm {
    pub name: String,
    pub phone: String,
    /// The idempotency key rendered into the form; optional for API clients.
    pub key: Option<String>,
    /// The language the form was shown in, so the answer comes in it too.
    pub lang: Option<String>,
}

/// Lengths only: the fields are personal data.
impl std::fmt::Debug for OrderForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderForm")
            .field("name_len", &self.name.len())
            .field("phone_len", &self.phone.len())
            .field("key", &self.key)
            .field("lang", &self.lang)
            .finish()
    }
}

/// What is wrong with each field of a submitted form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldErrors {
    pub name: Option<NameError>,
    pub phone: Option<PhoneError>,
    /// The key is not a UUID: the form was tampered with or is from another system.
    pub key: bool,
}

impl FieldErrors {
    /// `{"field": "message"}` for JSON clients, in `t`'s language (English for the API).
    pub fn to_json(&self, t: &Texts) -> serde_json::Value {
        let mut errors = serde_json::Map::new();
        if let Some(error) = &self.name {
            errors.insert("name".into(), t.name_error(error).into());
        }
        if let Some(error) = &self.phone {
            errors.insert("phone".into(), t.phone_error(error).into());
        }
        if self.key {
            errors.insert("key".into(), "must be a UUID".into());
        }
        serde_json::json!({ "errors": errors })
    }
}

impl OrderForm {
    /// The idempotency key as given, if it is a UUID.
    pub fn parsed_key(&self) -> Result<Option<Uuid>, uuid::Error> {
        match self.key.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(key) => Uuid::parse_str(key).map(Some),
        }
    }

    /// Validates every field (all errors at once, so the shopper fixes them in one go). The
    /// order id is the idempotency key when there is one: every resubmission names one order.
    pub fn parse(&self, country: Country) -> Result<NewOrder, FieldErrors> {
        let name = CustomerName::parse(&self.name);
        let phone = PhoneNumber::parse(&self.phone, country);
        let key = self.parsed_key();
        match (name, phone, key) {
            (Ok(name), Ok(phone), Ok(key)) => Ok(NewOrder {
                id: key.unwrap_or_else(Uuid::now_v7),
                name,
                phone,
                created_at: Utc::now(),
            }),
            (name, phone, key) => Err(FieldErrors {
                name: name.err(),
                phone: phone.err(),
                key: key.is_err(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str, phone: &str, key: Option<&str>) -> OrderForm {
        OrderForm {
            name: name.into(),
            phone: phone.into(),
            key: key.map(Into::into),
            lang: None,
        }
    }

    #[test]
    fn a_valid_form_becomes_an_order_named_by_its_key() {
        let key = Uuid::now_v7();
        let order = form(
            " Анна  Петрова ",
            "8 (999) 123-45-67",
            Some(&key.to_string()),
        )
        .parse(Country::Russia)
        .expect("valid");
        assert_eq!(order.id, key);
        assert_eq!(order.name.as_ref(), "Анна Петрова");
        assert_eq!(order.phone.as_ref(), "+79991234567");
    }

    #[test]
    fn without_a_key_each_order_gets_a_fresh_id() {
        let a = form("Анна", "89991234567", None)
            .parse(Country::Russia)
            .expect("valid");
        let b = form("Анна", "89991234567", Some(""))
            .parse(Country::Russia)
            .expect("valid");
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let errors = form("", "12", Some("not-a-uuid"))
            .parse(Country::Russia)
            .expect_err("invalid");
        assert!(errors.name.is_some() && errors.phone.is_some() && errors.key);
        let locales = crate::i18n::Locales::load().expect("locales");
        let json = errors.to_json(locales.get(crate::i18n::Lang::En));
        for field in ["name", "phone", "key"] {
            assert!(
                json["errors"][field].is_string(),
                "{field} missing in {json}"
            );
        }
    }

    proptest::proptest! {
        /// The fuzz target of the front's input handling: any body, as a form or as JSON,
        /// decodes or is refused without a panic, and an order it yields round-trips.
        /// Random bytes almost never make a valid order, so the round trip is shown by the
        /// next property. `PROPTEST_CASES=10000000` for a long run.
        #[test]
        fn any_body_is_decoded_or_refused_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            name in "\\PC{0,40}",
            phone in "[0-9 ()+.-]{0,20}",
        ) {
            let mut forms: Vec<OrderForm> = Vec::new();
            if let Ok(form) = serde_urlencoded::from_bytes::<OrderForm>(&body) {
                forms.push(form);
            }
            if let Ok(form) = serde_json::from_slice::<OrderForm>(&body) {
                forms.push(form);
            }
            forms.push(form(&name, &phone, None));
            for form in forms {
                if let Ok(order) = form.parse(Country::Russia) {
                    assert_round_trips(&order)?;
                }
            }
        }

        /// Names and phones as shoppers type them (Cyrillic or Latin letters with spaces and
        /// hyphens; a Russian mobile number with or without +7/8, spaces, brackets and
        /// dashes): every one is accepted, and what is accepted parses again to itself.
        #[test]
        fn what_a_shopper_types_is_accepted_and_round_trips(
            name in "[А-ЯЁа-яёA-Za-z]{1,20}([ -][А-ЯЁа-яёA-Za-z]{1,20}){0,2}",
            prefix in "(\\+7|8|7|)",
            phone in "[ (]?9[0-9]{2}[) -]?[0-9]{3}[ -]?[0-9]{2}[ -]?[0-9]{2}",
        ) {
            let typed = format!("{prefix}{phone}");
            let order = form(&name, &typed, None).parse(Country::Russia);
            proptest::prop_assert!(order.is_ok(), "{name:?} / {typed:?} refused: {order:?}");
            assert_round_trips(&order.expect("checked"))?;
        }
    }

    /// An accepted order's values, submitted again with its id as the key, give the same order.
    fn assert_round_trips(order: &NewOrder) -> Result<(), proptest::test_runner::TestCaseError> {
        let again = OrderForm {
            name: order.name.as_ref().to_owned(),
            phone: order.phone.as_ref().to_owned(),
            key: Some(order.id.to_string()),
            lang: None,
        }
        .parse(Country::Russia)
        .expect("an accepted order parses again");
        proptest::prop_assert_eq!(&again.name, &order.name);
        proptest::prop_assert_eq!(&again.phone, &order.phone);
        proptest::prop_assert_eq!(again.id, order.id);
        Ok(())
    }

    #[test]
    fn debug_shows_no_personal_data() {
        let shown = format!("{:?}", form("Анна", "89991234567", None));
        assert!(
            !shown.contains("Анна") && !shown.contains("9991234567"),
            "{shown}"
        );
    }
}
