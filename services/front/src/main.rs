//! `finalprice-front`: serves the order form until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use finalprice_front::Application;
use finalprice_shared::config::Config;
use finalprice_shared::{nats, service, shutdown};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc: malloc and free were ~15% of the front's CPU under load,
/// and it keeps less memory per connection (README "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// FinalPrice's front: serves the order form, hands each order to the workers through NATS
/// JetStream
#[derive(Debug, Parser)]
#[command(name = "finalprice-front", version, after_help = CONFIGURATION)]
struct Cli {}

/// Where the settings come from, for `--help`.
const CONFIGURATION: &str = "\
Configuration: the defaults compiled in from shared/config.default.toml (every setting is
documented there), then the TOML file named by FINALPRICE_CONFIG_FILE if set, then the
environment: NATS_URL, FINALPRICE_<SECTION>__<KEY> for any other setting (e.g.
FINALPRICE_HTTP__ADDR=127.0.0.1:8080, the listen address), OTEL_* for span export and RUST_LOG
for the log levels.";

fn main() -> ExitCode {
    // Before the configuration is loaded: `--help` works whatever the environment holds.
    Cli::parse();
    service::main("finalprice-front", env!("CARGO_PKG_VERSION"), run)
}

/// Below this many open files a front runs out of sockets under a burst (each connection,
/// idle ones included, is a file) long before its bounds answer 503.
const FEW_OPEN_FILES: u64 = 4096;

async fn run(config: Config) -> anyhow::Result<()> {
    // service::main has raised the soft limit to the hard one; this reads it back.
    if let Ok(limit) = service::raise_open_files_limit()
        && limit < FEW_OPEN_FILES
    {
        tracing::warn!(
            open_files_limit = limit,
            "few open files allowed: each connection takes one; raise the hard limit \
             (ulimit -Hn, systemd LimitNOFILE, the container's nofile ulimit)"
        );
    }
    let app = Application::build(&config).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let client = app.nats_client().clone();
    nats::run_while_client_lives(client, token.clone(), app.run_until_stopped(token)).await
}
