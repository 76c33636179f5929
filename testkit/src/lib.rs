//! Test harness for FinalPrice: a real nats-server per test (own port, own store, killed on
//! drop) or a real three-node cluster of them, and a fresh, migrated database per test, on
//! PostgreSQL or SQLite (dropped on drop).
//!
//! PostgreSQL comes from `TEST_POSTGRES_URL` (an account that may create databases;
//! default `postgres://finalprice:finalprice@127.0.0.1:5432/postgres`). `just test` and
//! `.ci/run` start the server and create that role.

mod cluster;
mod db;
pub mod load;
mod nats;
mod process;

pub use cluster::NatsCluster;
pub use db::{Backend, TestDb};
pub use nats::{NatsServer, TestCa, USERS, orders_in_stream, test_password};
pub use process::{Service, binary, clean_command, free_port, operator, repository, tool};

use figment::Figment;
use figment::providers::{Format, Toml};
use finalprice_shared::config::{Config, DEFAULTS_TOML};
use finalprice_shared::domain::{Country, CustomerName, PhoneNumber};
use finalprice_shared::messages::NewOrder;

/// Polls `check` until it holds or `within` passes; for effects that are asynchronous by design,
/// and for a scenario's next step that must wait on a state rather than on a guessed time.
pub async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A configuration for a service under test: the given NATS and database, an ephemeral HTTP
/// port, and timeouts short enough that a failing test fails fast.
pub fn config(nats: &NatsServer, db: &TestDb) -> Config {
    let overrides = format!(
        r#"
        [nats]
        url = "{nats}"
        [db]
        url = "{db}"
        max_connections = {connections}
        [http]
        addr = "127.0.0.1:0"
        reply_timeout = "3s"
        # Tests ask for orders' states far faster than a shopper does; the rate has its own.
        lookup_rate_per_second = 0
        [worker]
        retry_delay = "100ms"
        retry_max_delay = "1s"
        shutdown_grace = "10s"
        "#,
        nats = nats.url(),
        db = db.url(),
        connections = if db.backend() == Backend::Sqlite {
            1
        } else {
            4
        },
    );
    let figment = figment_from(&overrides);
    Config::from_figment(&figment).unwrap_or_else(|error| panic!("test configuration: {error}"))
}

/// A valid order (Russian phone written as a shopper may type it) with a fresh id.
pub fn order(phone: &str) -> NewOrder {
    NewOrder {
        id: uuid::Uuid::now_v7(),
        name: CustomerName::parse("Анна").expect("a valid name"),
        phone: PhoneNumber::parse(phone, Country::Russia).expect("a valid phone"),
        created_at: chrono::Utc::now(),
    }
}

fn figment_from(overrides: &str) -> Figment {
    Figment::from(Toml::string(DEFAULTS_TOML)).merge(Toml::string(overrides))
}
