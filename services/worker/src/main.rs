//! `finalprice-worker`: runs a worker until SIGTERM or Ctrl-C; `migrate` applies the database
//! migrations and exits; `status`, `export`, `dlq-list` and `dlq-replay` are operators' commands.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use finalprice_shared::config::Config;
use finalprice_shared::{nats, service, shutdown};
use finalprice_worker::dead_letters::Selection;
use finalprice_worker::{Application, dead_letters, export, report};
use sea_orm_migration::MigratorTrait as _;
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc, as in the front: less CPU per order in this
/// allocation-heavy path (README "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// FinalPrice's worker: commits the orders queued in NATS JetStream, confirms each to its front
#[derive(Debug, Parser)]
#[command(name = "finalprice-worker", version, after_help = CONFIGURATION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the settings come from, for `--help`.
const CONFIGURATION: &str = "\
Configuration: the defaults compiled in from shared/config.default.toml (every setting is
documented there), then the TOML file named by FINALPRICE_CONFIG_FILE if set, then the
environment: NATS_URL, DATABASE_URL, FINALPRICE_<SECTION>__<KEY> for any other setting (e.g.
FINALPRICE_WORKER__BATCH_SIZE=500), OTEL_* for span export and RUST_LOG for the log levels.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Pull, commit and confirm orders until SIGTERM or Ctrl-C (the default)
    Run,
    /// Apply the database migrations to DATABASE_URL and exit
    Migrate,
    /// Print the order path's state: NATS servers, queue, backlog, dead letters, who is up
    Status,
    /// Write every committed order to stdout as CSV, oldest first
    Export,
    /// List the dead letters: sequence, order id, where each came from and why
    DlqList,
    /// Put dead letters back into the queue once their cause is fixed
    #[command(override_usage = "finalprice-worker dlq-replay <--all | SEQUENCE...>")]
    DlqReplay(Replay),
}

/// Which dead letters `dlq-replay` puts back: a list, or every one, never both.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Replay {
    /// Every dead letter
    #[arg(long)]
    all: bool,
    /// The dead letters' sequences in ORDERS_DLQ, as `dlq-list` shows them
    #[arg(value_name = "SEQUENCE")]
    sequences: Vec<u64>,
}

impl Replay {
    fn selection(self) -> Selection {
        if self.all {
            Selection::All
        } else {
            Selection::Sequences(self.sequences)
        }
    }
}

fn main() -> ExitCode {
    // Before the configuration is loaded: `--help` works whatever the environment holds.
    let cli = Cli::parse();
    service::main(
        "finalprice-worker",
        env!("CARGO_PKG_VERSION"),
        |config| async move {
            match cli.command.unwrap_or(Command::Run) {
                Command::Run => run(&config).await,
                Command::Migrate => migrate(&config).await,
                Command::Status => status(&config).await,
                Command::Export => export(&config).await,
                Command::DlqList => dlq_list(&config).await,
                Command::DlqReplay(replay) => dlq_replay(&config, &replay.selection()).await,
            }
        },
    )
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

async fn dlq_replay(config: &Config, selection: &Selection) -> anyhow::Result<()> {
    let (js, mut stream) = dead_letters::open(&config.nats).await?;
    let replayed = dead_letters::replay(&js, &mut stream, selection).await?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["finalprice-worker"].iter().chain(args))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dlq_replay_takes_sequences_or_all_but_not_both_nor_neither() {
        let selection = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Some(Command::DlqReplay(replay))) => Ok(replay.selection()),
            Ok(other) => panic!("{args:?} parsed as {other:?}"),
            Err(error) => Err(error.kind()),
        };
        assert_eq!(selection(&["dlq-replay", "--all"]), Ok(Selection::All));
        assert_eq!(
            selection(&["dlq-replay", "3", "7"]),
            Ok(Selection::Sequences(vec![3, 7]))
        );
        assert_eq!(
            selection(&["dlq-replay", "--all", "3"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            selection(&["dlq-replay"]),
            Err(ErrorKind::MissingRequiredArgument)
        );
        assert_eq!(
            selection(&["dlq-replay", "three"]),
            Err(ErrorKind::ValueValidation)
        );
    }

    #[test]
    fn no_command_runs_the_worker() {
        assert!(parse(&[]).expect("parses").command.is_none());
        assert!(matches!(
            parse(&["run"]).expect("parses").command,
            Some(Command::Run)
        ));
    }
}
