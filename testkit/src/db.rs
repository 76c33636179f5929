//! A fresh, migrated database for one test: a new PostgreSQL database (dropped afterwards) or
//! a SQLite file in a temporary directory.

use anyhow::Context as _;
use finalprice_db::Migrator;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use tempfile::TempDir;
use uuid::Uuid;

const DEFAULT_ADMIN_URL: &str = "postgres://finalprice:finalprice@127.0.0.1:5432/postgres";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    backend: Backend,
    url: String,
    /// The PostgreSQL database to drop, with the admin URL to drop it from.
    postgres: Option<(String, String)>,
    _dir: Option<TempDir>,
}

impl TestDb {
    /// A new database on `backend`, migrated.
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        let db = Self::empty(backend).await?;
        let connection = db.connect().await?;
        Migrator::up(&connection, None)
            .await
            .context("migrating the test database")?;
        connection.close().await?;
        Ok(db)
    }

    /// A new database on `backend` without any table, for testing migrations.
    pub async fn empty(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Postgres => Self::postgres().await,
            Backend::Sqlite => Self::sqlite(),
        }
    }

    async fn postgres() -> anyhow::Result<Self> {
        let admin_url =
            std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.into());
        let admin = Database::connect(&admin_url).await.with_context(|| {
            format!(
                "PostgreSQL is not reachable at {admin_url}: run `just test` (it starts it) \
                 or set TEST_POSTGRES_URL"
            )
        })?;
        let name = format!("fp_test_{}", Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .context("creating the test database")?;
        admin.close().await?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .context("TEST_POSTGRES_URL must end in /<database>")?;
        Ok(Self {
            backend: Backend::Postgres,
            url: format!("{base}/{name}"),
            postgres: Some((admin_url, name)),
            _dir: None,
        })
    }

    fn sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-sqlite-").tempdir()?;
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("orders.db").display()
        );
        Ok(Self {
            backend: Backend::Sqlite,
            url,
            postgres: None,
            _dir: Some(dir),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A fresh connection, for assertions.
    pub async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        Database::connect(&self.url)
            .await
            .with_context(|| format!("connecting to the test database {}", self.url))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime; the clean-up gets a runtime of its own.
        // A leftover test database is harmless (its name says what it was), so failure is ignored.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}
