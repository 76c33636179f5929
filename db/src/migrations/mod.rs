//! The ordered list of schema migrations; each is written once, with sea-query, for both
//! PostgreSQL and SQLite.

mod m20261121_000001_create_orders;

use sea_orm_migration::{MigrationTrait, MigratorTrait};

/// Applies FinalPrice's migrations (`Migrator::up(&db, None)`); safe to run again.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261121_000001_create_orders::Migration)]
    }
}
