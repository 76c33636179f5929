//! The one `main` both binaries share: load the configuration, start the runtime and telemetry,
//! run the command, log its failure, flush the spans, and turn the outcome into an exit code.

use std::future::Future;
use std::process::ExitCode;

use crate::config::Config;
use crate::telemetry;

/// Runs `command` as `service` and returns the process's exit code: 2 for a configuration
/// error (named on stderr, since logging needs the configuration), 1 for a failed command.
/// `version` is the binary's (`env!("CARGO_PKG_VERSION")` in its crate), for its spans.
pub fn main<F, Fut>(service: &'static str, version: &'static str, command: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            #[allow(clippy::print_stderr)] // logging is not set up without a configuration
            {
                eprintln!("{service}: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            #[allow(clippy::print_stderr)] // nor without a runtime
            {
                eprintln!("{service}: cannot start the runtime: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let guard = telemetry::init(service, version, &config.log)?;
        match raise_open_files_limit() {
            Ok(limit) => tracing::debug!(open_files_limit = limit, "open files limit raised"),
            Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
        }
        let result = command(config).await;
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "{service} failed");
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

/// Raises this process's soft limit on open files to its hard limit and returns the new soft
/// limit. Each connection is a file: a front under a burst holds thousands, and an ordinary
/// user's soft limit is often 1,024 while the hard one is far higher (Go's runtime and nginx
/// raise theirs the same way). The tests that hold thousands of connections in process call it
/// too.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
