//! `finalprice-front`: serves the order form until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use finalprice_front::Application;
use finalprice_shared::config::Config;
use finalprice_shared::{nats, service, shutdown};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc: malloc and free were ~15% of the front's CPU under load,
/// and it keeps less memory per connection (README "Performance").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    service::main("finalprice-front", run)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(&config).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let client = app.nats_client().clone();
    nats::run_while_client_lives(client, token.clone(), app.run_until_stopped(token)).await
}
