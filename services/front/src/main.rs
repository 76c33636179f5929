//! `finalprice-front`: serves the order form until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use finalprice_front::Application;
use finalprice_shared::config::Config;
use finalprice_shared::{service, shutdown};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    service::main("finalprice-front", run)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = Application::build(&config).await?;
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    app.run_until_stopped(token).await
}
