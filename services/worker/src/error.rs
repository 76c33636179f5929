//! What a failed commit means for the orders in it: wait and retry (the database is unwell), or
//! suspect the orders themselves (the database refused their data).

use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};

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
            // PostgreSQL classes 22 (data exception) and 23 (integrity constraint violation);
            // SQLite 18 (too big), 19 (constraint) and 20 (type mismatch), with extended codes.
            let code = database.code();
            let refused_by_code = code.as_deref().is_some_and(|code| {
                code.starts_with("22")
                    || code.starts_with("23")
                    || code
                        .parse::<u32>()
                        .is_ok_and(|sqlite| matches!(sqlite & 0xff, 18..=20))
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
    fn values_the_database_cannot_store_are_permanent() {
        assert_eq!(
            classify(&DbErr::Type("bad value".into())),
            CommitFailure::Permanent
        );
    }
}
