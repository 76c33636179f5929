//! FinalPrice's schema: the `orders` table as one migration for PostgreSQL and SQLite, its
//! sea-orm entity, and the connection pool the worker and the tools use.
//!
//! # Layout
//! - [`migrations`]: the migrator; `finalprice-worker migrate` runs it.
//! - [`entity`]: the `orders` entity, built from a validated [`NewOrder`] only.
//! - [`connect`]: a pool configured for the backend at hand.
//! - [`has_orders_table`]: whether a database holds this schema at all.
//! - [`pool_state`]: the pool's connections against its size, for the worker's metrics.
//!
//! [`NewOrder`]: finalprice_shared::messages::NewOrder

pub mod entity;
pub mod migrations;

use finalprice_shared::config::DbConfig;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr, EntityName as _};
use sea_orm_migration::SchemaManager;
use secrecy::ExposeSecret as _;

pub use migrations::Migrator;

/// The connection pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// Connections open, in use or idle.
    pub open: u32,
    /// Open connections no batch holds.
    pub idle: u32,
    /// The most it opens (`db.max_connections`).
    pub max: u32,
}

/// How many connections `db`'s pool holds now, and how many it may (`None` for a backend
/// without a pool, such as a mock connection).
pub fn pool_state(db: &DatabaseConnection) -> Option<PoolState> {
    // The pool getters panic on the other backend: the backend is asked first.
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => Some(state_of(db.get_postgres_connection_pool())),
        sea_orm::DbBackend::Sqlite => Some(state_of(db.get_sqlite_connection_pool())),
        _ => None,
    }
}

fn state_of<Db: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<Db>) -> PoolState {
    PoolState {
        open: pool.size(),
        idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
        max: pool.options().get_max_connections(),
    }
}

/// The settings of a PostgreSQL URL (`db.url`) that name files for TLS: each must be readable
/// when the pool opens, or the driver says only "No such file or directory" without the path.
const TLS_FILE_PARAMETERS: [&str; 3] = ["sslrootcert", "sslcert", "sslkey"];

/// Checks the TLS files a PostgreSQL `url` names, naming the one that cannot be read.
fn check_tls_files(url: &str) -> Result<(), DbErr> {
    let Ok(parsed) = url::Url::parse(url) else {
        // The driver refuses it with its own words.
        return Ok(());
    };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Ok(());
    }
    for (name, value) in parsed.query_pairs() {
        if TLS_FILE_PARAMETERS.contains(&name.as_ref())
            && let Err(error) = std::fs::File::open(value.as_ref())
        {
            return Err(DbErr::Custom(format!(
                "{name}={value} in db.url (DATABASE_URL): {error}"
            )));
        }
    }
    Ok(())
}

/// What to check when the driver's error is a refused TLS handshake: rustls' words for a
/// certificate it does not trust, or that does not name the host.
fn tls_hint(error: &str) -> Option<&'static str> {
    if error.contains("NotValidForName") || error.contains("not valid for name") {
        Some("the server's certificate does not name the host of db.url (DATABASE_URL)")
    } else if error.contains("invalid peer certificate") {
        Some(
            "the server's certificate is not signed by the CA of sslrootcert (or the system's \
             roots) in db.url (DATABASE_URL)",
        )
    } else {
        None
    }
}

/// Opens a pool sized and tuned for the configured backend.
pub async fn connect(config: &DbConfig) -> Result<DatabaseConnection, DbErr> {
    let busy_timeout = config.acquire_timeout;
    // Read from `db.password_file` when the configuration loaded.
    let password = config.password.clone();
    check_tls_files(&config.url)?;
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .max_connections(config.max_connections)
        .min_connections(1)
        .connect_timeout(config.connect_timeout)
        .acquire_timeout(config.acquire_timeout)
        // A broken connection (database restarted) is found before a batch runs on it.
        .test_before_acquire(true)
        // Statements carry personal data in their parameters; sqlx logs statements.
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |sqlite| {
            sqlite
                // WAL lets readers (status requests) run beside the one writer.
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                .busy_timeout(busy_timeout)
        })
        .map_sqlx_postgres_opts(move |postgres| {
            let postgres = postgres.application_name("finalprice");
            match &password {
                Some(password) => postgres.password(password.expose_secret()),
                None => postgres,
            }
        });
    Database::connect(options).await.map_err(|error| {
        // The driver quotes a URL it cannot parse whole, password and all, and this error is
        // logged: the password is taken out of it.
        let text = error.to_string();
        if text.contains(&config.url) {
            let shown = finalprice_shared::config::redact_url_password(&config.url);
            DbErr::Custom(text.replace(&config.url, &shown))
        } else if let Some(hint) = tls_hint(&text) {
            DbErr::Custom(format!("{hint}: {text}"))
        } else {
            error
        }
    })
}

/// Whether `db` has the `orders` table: how a tool that reads orders tells a database that is
/// not FinalPrice's (or was never migrated) from one with no orders yet.
pub async fn has_orders_table(db: &DatabaseConnection) -> Result<bool, DbErr> {
    SchemaManager::new(db)
        .has_table(entity::orders::Entity.table_name())
        .await
}
