//! `finalprice-front`: serves the order form until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use finalprice_front::Application;
use finalprice_shared::config::Config;
use finalprice_shared::{shutdown, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            #[allow(clippy::print_stderr)] // logging is not set up without a configuration
            {
                eprintln!("finalprice-front: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("finalprice-front: cannot start the runtime: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let guard = telemetry::init("finalprice-front", &config.log)?;
        let result = run(&config).await;
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "finalprice-front failed");
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
