//! The three binaries' command lines as a newcomer meets them: `--help` lists what each does,
//! `--version` names the package version, a wrong argument is refused with the usage, and the
//! load tool pointed at the wrong database says so before it loads anything; all without a
//! configuration, a nats-server or a front.

use std::process::Output;

use finalprice_testkit::{binary, clean_command};

/// Runs `name` with `args` and an environment the configuration cannot load from: `--help`
/// and `--version` must not need one.
fn run(name: &str, args: &[&str]) -> Output {
    let binary = binary(name).expect("built");
    clean_command(&binary)
        .args(args)
        .env("FINALPRICE_CONFIG_FILE", "/nonexistent/finalprice.toml")
        .env("FINALPRICE_HTTP__ADDR", "not an address")
        .env("COLUMNS", "100")
        .output()
        .unwrap_or_else(|error| panic!("{name} runs: {error}"))
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("UTF-8")
}

/// The line of `help` that lists `item` (a subcommand or a flag), with its text.
fn line_of<'a>(help: &'a str, item: &str) -> &'a str {
    help.lines()
        .find(|line| line.split_whitespace().next() == Some(item))
        .unwrap_or_else(|| panic!("{item} is not listed in:\n{help}"))
}

fn assert_version(name: &str) {
    let output = run(name, &["--version"]);
    assert!(output.status.success(), "{}", stderr(&output));
    // The workspace has one version, so this package's is theirs too.
    assert_eq!(
        stdout(&output).trim(),
        format!("{name} {}", env!("CARGO_PKG_VERSION"))
    );
}

fn assert_refused_with_usage(name: &str, args: &[&str]) -> String {
    let output = run(name, args);
    assert_eq!(output.status.code(), Some(2), "{name} {args:?}");
    let error = stderr(&output);
    assert!(
        error.contains(&format!("Usage: {name}")),
        "{name} {args:?} shows the usage:\n{error}"
    );
    assert!(
        stdout(&output).is_empty(),
        "{name} {args:?} printed to stdout"
    );
    error
}

#[test]
fn the_worker_lists_its_subcommands_each_with_its_line() {
    let output = run("finalprice-worker", &["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    for subcommand in [
        "run",
        "migrate",
        "status",
        "export",
        "dlq-list",
        "dlq-replay",
    ] {
        let line = line_of(&help, subcommand);
        assert!(
            line.split_whitespace().count() > 3,
            "{subcommand} has no line of help: {line:?}"
        );
    }
    assert!(line_of(&help, "run").contains("(the default)"), "{help}");
    assert!(help.contains("config.default.toml"), "{help}");
    assert!(help.contains("FINALPRICE_"), "{help}");

    assert_version("finalprice-worker");

    let error = assert_refused_with_usage("finalprice-worker", &["migrat"]);
    assert!(
        error.contains("unrecognized subcommand 'migrat'"),
        "{error}"
    );
    let error = assert_refused_with_usage("finalprice-worker", &["dlq-replay"]);
    assert!(error.contains("--all|SEQUENCE"), "{error}");
    let error = assert_refused_with_usage("finalprice-worker", &["dlq-replay", "--all", "3"]);
    assert!(error.contains("cannot be used with"), "{error}");
}

#[test]
fn the_front_says_what_it_is_and_takes_no_arguments() {
    let output = run("finalprice-front", &["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    assert!(help.contains("Usage: finalprice-front"), "{help}");
    assert!(help.contains("config.default.toml"), "{help}");
    assert!(help.contains("FINALPRICE_HTTP__ADDR"), "{help}");

    assert_version("finalprice-front");

    let error = assert_refused_with_usage("finalprice-front", &["serve"]);
    assert!(error.contains("unexpected argument 'serve'"), "{error}");
}

#[test]
fn the_load_generator_lists_every_flag_with_its_line() {
    let output = run("finalprice-load", &["--help"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    for flag in [
        "--url",
        "--connections",
        "--seconds",
        "--requests",
        "--rate",
        "--hold",
        "--form",
        "--front-metrics",
        "--worker-metrics",
        "--nats-cpu",
        "--nats-monitor",
        "--report",
        "--json",
    ] {
        line_of(&help, flag);
    }
    assert!(help.contains("[default: 256]"), "{help}");
    assert!(help.contains("DATABASE_URL"), "{help}");

    assert_version("finalprice-load");

    let error = assert_refused_with_usage("finalprice-load", &["--conections", "8"]);
    assert!(
        error.contains("--connections"),
        "suggests the flag meant:\n{error}"
    );
    let output = run("finalprice-load", &["--connections", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("must be at least 1"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_load_generator_pointed_at_a_database_without_orders_says_which_and_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    // What `just load` names unless told otherwise, while the stack runs on PostgreSQL.
    let url = format!("sqlite://{}/finalprice.db?mode=rwc", dir.path().display());
    let binary = binary("finalprice-load").expect("built");
    let output = clean_command(&binary)
        // Nothing listens there: the database is looked at before any load.
        .args(["--url", "http://127.0.0.1:9", "--requests", "1"])
        .env("DATABASE_URL", &url)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("finalprice-load runs");

    assert_eq!(output.status.code(), Some(1));
    let error = stderr(&output);
    let mut lines = error.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("finalprice-load: the database ")
            && first.contains(&url)
            && first.contains("(DATABASE_URL) has no `orders` table"),
        "{error}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|line| line.contains("DATABASE_URL=postgres://")),
        "{error}"
    );
    assert_eq!(lines.next(), None, "two lines, no backtrace:\n{error}");
    assert!(
        stdout(&output).is_empty(),
        "no report of a run that did not happen"
    );
}

#[test]
fn a_rust_log_that_does_not_parse_is_said_not_ignored() {
    let binary = binary("finalprice-worker").expect("built");
    // `status` against no nats-server: logging is set up, then the command fails in ~2 s.
    let output = clean_command(&binary)
        .arg("status")
        .env("RUST_LOG", "=bad[")
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("the worker runs");
    let stderr = stderr(&output);
    assert!(
        stderr.contains("RUST_LOG is not a log filter; the default levels apply"),
        "{stderr}"
    );
}
