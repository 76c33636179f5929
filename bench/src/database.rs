//! The database `finalprice-load` checks a run against (`DATABASE_URL`): opened, and its
//! `orders` table looked for, before the load starts, so a wrong URL is found at once rather
//! than after the run; then every answered order is looked up.

use std::collections::HashSet;
use std::ops::Range;
use std::time::Duration;

use anyhow::Context as _;
use finalprice_db::entity::orders;
use finalprice_shared::config::redact_url_password;
use sea_orm::{
    ColumnTrait, ConnectOptions, Database, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QuerySelect,
};
use uuid::Uuid;

use crate::report::Outcome;

/// How long opening the database may take: an unreachable host fails the run at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the database `DATABASE_URL` names cannot be checked; each names it, password hidden.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// `reason` is the driver's error as text, since some (a URL that cannot be parsed) quote
    /// the whole URL: the password is taken out of it.
    #[error("cannot open the database {database} (DATABASE_URL): {reason}")]
    Open { database: String, reason: String },
    #[error("cannot look for the `orders` table in {database} (DATABASE_URL)")]
    Inspect {
        database: String,
        #[source]
        source: DbErr,
    },
    #[error(
        "the database {database} (DATABASE_URL) has no `orders` table: it is not the one the \
         stack writes to"
    )]
    NoOrdersTable { database: String },
}

impl DatabaseError {
    /// What to do about it, for the line after the error.
    pub fn hint(&self) -> &'static str {
        "name the database the stack writes to, e.g. \
         DATABASE_URL=postgres://user:password@host/database just load …"
    }
}

/// What the database says about the run's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCheck {
    /// Orders answered 201 (or 303) that are rows.
    pub confirmed_found: u64,
    /// Orders answered 201 that are not rows: must be 0.
    pub confirmed_missing: u64,
    /// Orders answered 202 that are rows by now.
    pub pending_committed: u64,
    /// Rows beyond one per order of this run (each order has a phone of its own): must be 0.
    pub doubled: u64,
    /// Which database was checked (password hidden).
    pub database: String,
}

/// A database with the `orders` table, open for the check after the run.
#[derive(Debug)]
pub struct OrdersDatabase {
    connection: DatabaseConnection,
    /// The URL, password hidden: what every message and the report name.
    shown: String,
}

impl OrdersDatabase {
    /// Opens `url` and makes sure it has the `orders` table.
    pub async fn open(url: &str) -> Result<Self, DatabaseError> {
        let database = redact_url_password(url);
        let mut options = ConnectOptions::new(url);
        options
            .connect_timeout(CONNECT_TIMEOUT)
            .acquire_timeout(CONNECT_TIMEOUT)
            .sqlx_logging(false);
        let connection = match Database::connect(options).await {
            Ok(connection) => connection,
            Err(error) => {
                // The innermost cause: sea-orm's own layers repeat it.
                let root =
                    std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                        .last()
                        .map_or_else(|| error.to_string(), ToString::to_string);
                let reason = root.replace(url, &database);
                return Err(DatabaseError::Open { database, reason });
            }
        };
        match finalprice_db::has_orders_table(&connection).await {
            Ok(true) => Ok(Self {
                connection,
                shown: database,
            }),
            Ok(false) => Err(DatabaseError::NoOrdersTable { database }),
            Err(source) => Err(DatabaseError::Inspect { database, source }),
        }
    }

    /// Looks up every answered order (1000 ids per query), and counts the rows of the run's
    /// phones (`phones`, all of one length) that are not the first of their phone.
    pub async fn check(
        &self,
        outcomes: &[(Uuid, Outcome)],
        phones: Range<String>,
    ) -> anyhow::Result<DatabaseCheck> {
        self.count(outcomes, phones)
            .await
            .with_context(|| format!("checking the run's orders in {}", self.shown))
    }

    async fn count(
        &self,
        outcomes: &[(Uuid, Outcome)],
        phones: Range<String>,
    ) -> Result<DatabaseCheck, DbErr> {
        let db = &self.connection;
        let mut present = HashSet::new();
        let ids: Vec<Uuid> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Accepted | Outcome::Pending | Outcome::Answered))
            .map(|(id, _)| *id)
            .collect();
        for chunk in ids.chunks(1000) {
            let rows = orders::Entity::find()
                .filter(orders::Column::Id.is_in(chunk.iter().copied()))
                .all(db)
                .await?;
            present.extend(rows.into_iter().map(|row| row.id));
        }
        let stored: Vec<String> = orders::Entity::find()
            .select_only()
            .column(orders::Column::Phone)
            .filter(orders::Column::Phone.gte(phones.start.as_str()))
            .filter(orders::Column::Phone.lt(phones.end.as_str()))
            .into_tuple()
            .all(db)
            .await?;
        // Longer numbers sort inside the range too; the run's are all as long as its bounds.
        let mut seen = HashSet::new();
        let doubled = stored
            .into_iter()
            .filter(|phone| phone.len() == phones.start.len())
            .filter(|phone| !seen.insert(phone.clone()))
            .count() as u64;
        let mut check = DatabaseCheck {
            confirmed_found: 0,
            confirmed_missing: 0,
            pending_committed: 0,
            doubled,
            database: self.shown.clone(),
        };
        for (id, outcome) in outcomes {
            match outcome {
                Outcome::Accepted | Outcome::Answered if present.contains(id) => {
                    check.confirmed_found += 1
                }
                Outcome::Accepted => check.confirmed_missing += 1,
                Outcome::Pending if present.contains(id) => check.pending_committed += 1,
                _ => {}
            }
        }
        Ok(check)
    }
}

#[cfg(test)]
mod tests {
    use finalprice_shared::domain::PhoneNumber;
    use finalprice_shared::messages::NewOrder;
    use finalprice_testkit::{Backend, TestDb, order};

    use super::*;

    /// The error `open` gives for `url`, and its causes in one line as `finalprice-load`
    /// prints them.
    async fn refused(url: &str) -> (DatabaseError, String) {
        let error = OrdersDatabase::open(url)
            .await
            .expect_err("the database cannot be checked");
        let chain: Vec<String> =
            std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        let text = chain.join(": ");
        (error, text)
    }

    #[tokio::test]
    async fn a_database_without_the_orders_table_is_named_with_what_to_do() {
        let db = TestDb::empty(Backend::Sqlite)
            .await
            .expect("an empty SQLite file");

        let (error, text) = refused(db.url()).await;

        assert!(
            matches!(error, DatabaseError::NoOrdersTable { .. }),
            "{error:?}"
        );
        assert!(text.contains(db.url()), "names the database: {text}");
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(text.contains("no `orders` table"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(
            error.hint().contains("DATABASE_URL=postgres://"),
            "{}",
            error.hint()
        );
    }

    #[tokio::test]
    async fn a_database_that_cannot_be_opened_is_named_without_its_password() {
        // A SQLite file in a directory that does not exist: opening fails, nothing is created.
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = format!("sqlite://{}/gone/orders.db", dir.path().display());
        let (error, text) = refused(&missing).await;
        assert!(matches!(error, DatabaseError::Open { .. }), "{error:?}");
        assert!(text.starts_with("cannot open the database"), "{text}");
        assert!(
            text.contains(&missing) && text.contains("DATABASE_URL"),
            "{text}"
        );

        // A port that is no number fails at once (a refused connection is retried until the
        // timeout), and the password stays out of the message.
        let (error, text) = refused("postgres://fp:s3cret@127.0.0.1:port/finalprice").await;
        assert!(matches!(error, DatabaseError::Open { .. }), "{error:?}");
        assert!(
            text.contains("postgres://fp:***@127.0.0.1:port/finalprice"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[tokio::test]
    async fn the_check_finds_missing_and_doubled_orders_of_the_run_only() {
        let db = TestDb::new(Backend::Sqlite).await.expect("database");
        let rows = db.connect().await.expect("connect");
        let stored = order("+79000000001");
        let missing = order("+79000000002");
        let pending = order("+79000000003");
        // The same order under another id, and an order of another run.
        let twin = order("+79000000001");
        let other_run = order("+79100000001");
        // Sorts inside the run's range, but is not a phone of the run.
        let longer = NewOrder {
            phone: PhoneNumber::parse_e164("+790000000012").expect("an E.164 phone"),
            ..order("+79000000004")
        };
        orders::Entity::insert_many(
            [&stored, &twin, &other_run, &longer].map(orders::ActiveModel::from),
        )
        .exec(&rows)
        .await
        .expect("insert");
        let outcomes = [
            (stored.id, Outcome::Accepted),
            (missing.id, Outcome::Accepted),
            (pending.id, Outcome::Pending),
        ];

        let check = OrdersDatabase::open(db.url())
            .await
            .expect("a migrated database")
            .check(
                &outcomes,
                "+79000000000".to_owned().."+79000000010".to_owned(),
            )
            .await
            .expect("checked");
        assert_eq!(
            (
                check.confirmed_found,
                check.confirmed_missing,
                check.doubled,
                check.pending_committed
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(check.database, db.url());
    }
}
