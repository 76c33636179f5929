//! `finalprice-worker`: runs a worker until SIGTERM or Ctrl-C; `finalprice-worker migrate`
//! applies the database migrations and exits.

use std::process::ExitCode;

use anyhow::Context as _;
use finalprice_shared::config::Config;
use finalprice_shared::{shutdown, telemetry};
use finalprice_worker::Application;
use sea_orm_migration::MigratorTrait as _;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: finalprice-worker [migrate]";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            #[allow(clippy::print_stderr)] // logging is not set up without a configuration
            {
                eprintln!("finalprice-worker: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("finalprice-worker: cannot start the runtime: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let guard = telemetry::init("finalprice-worker", &config.log)?;
        let result = match command.as_deref() {
            None | Some("run") => run(&config).await,
            Some("migrate") => migrate(&config).await,
            Some(other) => Err(anyhow::anyhow!("unknown command `{other}`; {USAGE}")),
        };
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "finalprice-worker failed");
        }
        // Flushing blocks; off the runtime's workers it cannot stall anything.
        let _ = tokio::task::spawn_blocking(move || guard.shutdown()).await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn run(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    app.run_until_stopped(token).await
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let db = finalprice_db::connect(&config.db)
        .await
        .context("cannot open the database")?;
    finalprice_db::Migrator::up(&db, None)
        .await
        .context("migration failed")?;
    tracing::info!("database migrated");
    Ok(())
}
