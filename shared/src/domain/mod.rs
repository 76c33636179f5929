//! Order-form domain types that can only be constructed from validated, normalised input.

mod name;
mod phone;

pub use name::{CustomerName, NameError};
pub use phone::{Country, PhoneError, PhoneNumber, UnknownCountry};
