//! `finalprice-worker`: runs a worker until SIGTERM or Ctrl-C; `migrate` applies the database
//! migrations and exits; `status`, `export`, `dlq-list` and `dlq-replay` are operators' commands.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use finalprice_shared::config::Config;
use finalprice_shared::{nats, service, shutdown};
use finalprice_worker::{Application, dead_letters, export, report};
use sea_orm_migration::MigratorTrait as _;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "usage: finalprice-worker [run | migrate | status | export | dlq-list | dlq-replay (--all | SEQUENCE…)]";

/// jemalloc instead of glibc's malloc, as in the front: less CPU per order in this
/// allocation-heavy path (README "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    service::main("finalprice-worker", |config| async move {
        match args.first().map(String::as_str) {
            None | Some("run") => run(&config).await,
            Some("migrate") => migrate(&config).await,
            Some("status") => status(&config).await,
            Some("export") => export(&config).await,
            Some("dlq-list") => dlq_list(&config).await,
            Some("dlq-replay") => dlq_replay(&config, &args[1..]).await,
            Some(other) => Err(anyhow::anyhow!("unknown command `{other}`; {USAGE}")),
        }
    })
}

async fn run(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let client = app.nats_client().clone();
    // Boxed: the worker's future is large, and this one holds it.
    let worker = Box::pin(app.run_until_stopped(token.clone()));
    nats::run_while_client_lives(client, token, worker).await
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

async fn dlq_list(config: &Config) -> anyhow::Result<()> {
    let (_, mut stream) = dead_letters::open(&config.nats).await?;
    let letters = dead_letters::list(&mut stream).await?;
    dead_letters::print(&letters, &mut std::io::stdout().lock())?;
    Ok(())
}

async fn dlq_replay(config: &Config, args: &[String]) -> anyhow::Result<()> {
    let selection = dead_letters::parse_selection(args)?;
    let (js, mut stream) = dead_letters::open(&config.nats).await?;
    let replayed = dead_letters::replay(&js, &mut stream, &selection).await?;
    writeln!(
        std::io::stdout().lock(),
        "replayed {} dead letter(s): {replayed:?}",
        replayed.len()
    )?;
    Ok(())
}

async fn status(config: &Config) -> anyhow::Result<()> {
    let report = report::read(&config.nats).await?;
    std::io::stdout()
        .lock()
        .write_all(report.render().as_bytes())?;
    Ok(())
}

async fn export(config: &Config) -> anyhow::Result<()> {
    let db = finalprice_db::connect(&config.db)
        .await
        .context("cannot open the database")?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let count = export::write_csv(&db, &mut out).await?;
    tracing::info!(orders = count, "export finished");
    Ok(())
}
