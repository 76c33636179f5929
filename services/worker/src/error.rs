//! What a failed commit means for the orders in it: wait and retry (the database is unwell), or
//! suspect the orders themselves (the database refused their data).

use sea_orm::sqlx;
use sea_orm::sqlx::sqlite::SqliteError;
use sea_orm::{DbBackend, DbErr, RuntimeErr};

/// The worker's reaction to a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFailure {
    /// Connection lost, pool exhausted, server shutting down, lock or serialization conflict:
    /// the same orders will go in later. Retried with a growing delay, without limit — an
    /// outage must never turn good orders into dead letters.
    Transient,
    /// The database refused the data (a constraint, a value it cannot store): retrying the
    /// same row will fail the same way. Retried alone, then dead-lettered.
    Permanent,
}

/// Classifies by the error's kind and SQLSTATE, never by its message. Unknown means transient:
/// a needless retry costs time, a wrong dead letter costs an order.
pub fn classify(error: &DbErr) -> CommitFailure {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => CommitFailure::Transient,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(error) => classify_sqlx(error),
            RuntimeErr::Internal(_) => CommitFailure::Transient,
        },
        DbErr::TryIntoErr { .. }
        | DbErr::ConvertFromU64(_)
        | DbErr::Type(_)
        | DbErr::Json(_)
        | DbErr::AttrNotSet(_) => CommitFailure::Permanent,
        _ => CommitFailure::Transient,
    }
}

fn classify_sqlx(error: &sqlx::Error) -> CommitFailure {
    match error {
        sqlx::Error::Database(database) => {
            let refused_data = matches!(
                database.kind(),
                sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation
                    | sqlx::error::ErrorKind::CheckViolation
                    | sqlx::error::ErrorKind::ExclusionViolation
            );
            let refused_by_code = database.code().is_some_and(|code| {
                let backend = if database.try_downcast_ref::<SqliteError>().is_some() {
                    DbBackend::Sqlite
                } else {
                    DbBackend::Postgres
                };
                refused_code(backend, &code)
            });
            if refused_data || refused_by_code {
                CommitFailure::Permanent
            } else {
                CommitFailure::Transient
            }
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => CommitFailure::Permanent,
        _ => CommitFailure::Transient,
    }
}

/// Whether a database's error code says it refused the data itself. The two backends' codes
/// overlap as text: SQLite's are decimal numbers, and some of them (22 "no large files",
/// 23 "not authorized", 2314 a read-lock I/O error) begin like PostgreSQL's refusal classes.
fn refused_code(backend: DbBackend, code: &str) -> bool {
    if backend == DbBackend::Sqlite {
        // 18 (too big), 19 (constraint) and 20 (type mismatch); an extended code keeps its
        // primary code in the low byte.
        code.parse::<u32>()
            .is_ok_and(|code| matches!(code & 0xff, 18..=20))
    } else {
        // PostgreSQL classes 22 (data exception) and 23 (integrity constraint violation).
        code.starts_with("22") || code.starts_with("23")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnAcquireErr;

    #[test]
    fn losing_the_database_is_transient() {
        assert_eq!(
            classify(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
            CommitFailure::Transient
        );
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            classify(&DbErr::Exec(RuntimeErr::SqlxError(io.into()))),
            CommitFailure::Transient
        );
        assert_eq!(
            classify(&DbErr::Exec(RuntimeErr::SqlxError(
                sqlx::Error::PoolTimedOut.into()
            ))),
            CommitFailure::Transient
        );
    }

    #[test]
    fn each_backend_s_codes_are_read_as_its_own() {
        // PostgreSQL: unique, not-null, check violations and value too long refuse the data;
        // serialization failure, admin shutdown, lock timeout, query canceled do not.
        for code in ["23505", "23502", "23514", "22001", "22P02"] {
            assert!(refused_code(DbBackend::Postgres, code), "{code}");
        }
        for code in ["40001", "57P01", "55P03", "57014", "08006", "53300"] {
            assert!(!refused_code(DbBackend::Postgres, code), "{code}");
        }
        // SQLite: too big, constraint (plain, unique 2067, not-null 1299, check 275), mismatch
        // refuse the data; busy (5, 517), locked (6), I/O read-lock (2314), no large file
        // support (22), not authorized (23), full (13) do not.
        for code in ["18", "19", "2067", "1299", "275", "20"] {
            assert!(refused_code(DbBackend::Sqlite, code), "{code}");
        }
        for code in ["5", "517", "6", "2314", "22", "23", "13", "10"] {
            assert!(!refused_code(DbBackend::Sqlite, code), "{code}");
        }
    }

    #[test]
    fn values_the_database_cannot_store_are_permanent() {
        assert_eq!(
            classify(&DbErr::Type("bad value".into())),
            CommitFailure::Permanent
        );
    }
}
