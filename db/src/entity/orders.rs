//! The `orders` entity. Rows are built only from a [`NewOrder`], whose fields were parsed by the
//! domain types, so no unchecked string reaches the table.

use std::fmt;

use finalprice_shared::messages::NewOrder;
use sea_orm::Set;
use sea_orm::entity::prelude::*;

/// One committed order.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    /// E.164.
    pub phone: String,
    pub created_at: ChronoDateTimeUtc,
}

/// Ids only: a derived `Debug` would print name and phone into whatever logs it.
impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("orders::Model")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl From<&NewOrder> for ActiveModel {
    fn from(order: &NewOrder) -> Self {
        ActiveModel {
            id: Set(order.id),
            name: Set(order.name.as_ref().to_owned()),
            phone: Set(order.phone.as_ref().to_owned()),
            created_at: Set(order.created_at),
        }
    }
}
