//! sea-orm entities of FinalPrice's tables.

pub mod orders;
