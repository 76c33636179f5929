//! The Quick start's scripts as a newcomer meets them: `scripts/up` refuses a taken port and names
//! the process that holds it, `scripts/preflight` stops a machine that lacks a compiler or a new
//! enough Rust with the sentence that says what to install, and `just prometheus` watches what
//! `just up` started with the shipped rules.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use finalprice_testkit::{binary, eventually, free_port, repository, tool};

/// `scripts/up` as `just up` runs it, with its run directory in `run_dir` and the tests' own
/// builds and nats-server.
fn scripts_up(run_dir: &Path) -> Command {
    let bin_dir = binary("finalprice-front")
        .expect("built")
        .parent()
        .expect("a folder")
        .to_path_buf();
    let mut up = Command::new(repository().join("scripts/up"));
    up.current_dir(repository())
        .env("UP_RUN_DIR", run_dir)
        .env("BIN_DIR", bin_dir)
        .env("NATS_SERVER_BIN", tool("nats-server").expect("nats-server"))
        .env_remove("NATS_URL");
    up
}

#[test]
fn up_refuses_a_taken_port_and_names_the_process_holding_it() {
    let taken =
        std::net::TcpListener::bind(("127.0.0.1", free_port().expect("a port"))).expect("listen");
    let taken_address = taken.local_addr().expect("address");
    let run_dir = tempfile::tempdir().expect("temp dir");

    let output = scripts_up(run_dir.path())
        .env("FINALPRICE_HTTP__ADDR", taken_address.to_string())
        .env(
            "FINALPRICE_WORKER__METRICS_ADDR",
            format!("127.0.0.1:{}", free_port().expect("a port")),
        )
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .expect("scripts/up runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains(&format!("port {}", taken_address.port())))
        .unwrap_or_else(|| panic!("the taken port is not named:\n{stderr}"));
    assert!(line.contains("the front"), "{line}");
    assert!(
        line.contains(&format!("pid {}", std::process::id())),
        "the holder (this test) is not named: {line}"
    );
    // Refused before anything started: no nats-server log, no pidfile.
    assert!(!run_dir.path().join("nats.log").exists(), "{stderr}");
    assert!(!run_dir.path().join("pids").exists(), "{stderr}");
    drop(taken);
}

/// A folder of links to the commands preflight uses, without cc, gcc, clang and make, and with
/// `rustc` answering `rustc_version`.
fn bare_machine(rustc_version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for command in [
        "bash", "dirname", "sed", "head", "sort", "awk", "id", "cargo",
    ] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {command}")])
            .output()
            .expect("bash runs");
        let path = String::from_utf8(found.stdout).expect("UTF-8");
        assert!(found.status.success(), "{command} is on this machine");
        std::os::unix::fs::symlink(path.trim(), dir.path().join(command)).expect("link");
    }
    let rustc = dir.path().join("rustc");
    std::fs::write(
        &rustc,
        format!("#!/bin/sh\necho 'rustc {rustc_version} (0000000 2020-01-01)'\n"),
    )
    .expect("write");
    let mut permissions = std::fs::metadata(&rustc).expect("metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&rustc, permissions).expect("chmod");
    dir
}

fn preflight(path: &Path, what: &str) -> (Option<i32>, String) {
    let output = Command::new(repository().join("scripts/preflight"))
        .arg(what)
        .current_dir(repository())
        .env("PATH", path)
        .output()
        .expect("scripts/preflight runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn preflight_stops_a_machine_without_a_compiler_or_a_new_enough_rust() {
    let machine = bare_machine("1.70.0");
    let (code, stderr) = preflight(machine.path(), "build");

    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing was built or started"), "{stderr}");
    assert!(
        stderr.contains("a C compiler: ") && stderr.contains("apt-get install build-essential"),
        "{stderr}"
    );
    assert!(
        stderr.contains("make: ") && stderr.contains("apt-get install make"),
        "{stderr}"
    );
    assert!(
        stderr.contains("this machine has rustc 1.70.0") && stderr.contains("rustup update"),
        "{stderr}"
    );
}

#[test]
fn preflight_passes_the_machine_the_tests_run_on() {
    let (code, stderr) = preflight(Path::new(&std::env::var_os("PATH").expect("PATH")), "build");
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn preflight_for_the_tests_off_debian_names_each_package_and_installs_nothing() {
    // No apt-get on this PATH: as off Debian, nothing can be installed, whoever runs it.
    let machine = bare_machine("1.95.0");
    // Nor anything an earlier run unpacked into the project's .tools/ (as an ordinary user's
    // `just test` does with Debian's prometheus and kubectl packages).
    let no_tools = tempfile::tempdir().expect("temp dir");
    let output = Command::new(repository().join("scripts/preflight"))
        .arg("test")
        .current_dir(repository())
        .env("PATH", machine.path())
        .env("FINALPRICE_TOOLS", no_tools.path())
        .env_remove("TEST_POSTGRES_URL")
        .output()
        .expect("scripts/preflight runs");
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("installing"), "{stderr}");
    assert!(
        stderr.contains("chromium and chromedriver: ")
            && stderr.contains("dnf install chromium chromedriver"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Prometheus: ") && stderr.contains("prometheus and promtool"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kubectl: ") && stderr.contains("kubectl kustomize"),
        "{stderr}"
    );
    assert!(stderr.contains("Node.js with npm: "), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL: ") && stderr.contains("TEST_POSTGRES_URL="),
        "{stderr}"
    );
    assert!(!stderr.contains("this machine has rustc"), "{stderr}");
}

/// A script of the Quick start running in the background, its output in a file; stopped as
/// Ctrl-C would (SIGINT) when dropped, so nothing outlives a failed test.
struct Script {
    child: std::process::Child,
    output: std::path::PathBuf,
}

impl Script {
    fn start(command: &mut Command, output: std::path::PathBuf) -> Self {
        let file = std::fs::File::create(&output).expect("output file");
        let child = command
            .current_dir(repository())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()
            .expect("the script starts");
        Script { child, output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits for `line` in the output, failing with the output if the script ends first.
    async fn wait_for(&mut self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.output().contains(line) {
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("ended ({status}) before {line:?}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} within 2 minutes:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn just_prometheus_loads_the_shipped_rules_and_scrapes_what_just_up_started() {
    let run_dir = tempfile::tempdir().expect("temp dir");
    let port = || free_port().expect("a port").to_string();
    let front = format!("127.0.0.1:{}", port());
    let worker = format!("127.0.0.1:{}", port());
    let mut up = Script::start(
        scripts_up(run_dir.path())
            .env("UP_NATS_PORT", port())
            .env("UP_NATS_MONITOR_PORT", port())
            .env("FINALPRICE_HTTP__ADDR", &front)
            .env("FINALPRICE_WORKER__METRICS_ADDR", &worker)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/orders.db?mode=rwc", run_dir.path().display()),
            )
            .env_remove("FINALPRICE_HTTP__ADMIN_ADDR"),
        run_dir.path().join("up.out"),
    );
    up.wait_for("FinalPrice is up").await;
    assert!(
        up.output().contains(&format!(
            "metrics: http://{front}/metrics (front), http://{worker}/metrics (worker)"
        )),
        "{}",
        up.output()
    );

    let prometheus_address = format!("127.0.0.1:{}", port());
    let mut prometheus = Script::start(
        Command::new(repository().join("scripts/prometheus"))
            .env("UP_RUN_DIR", run_dir.path())
            .env("PROMETHEUS_ADDR", &prometheus_address),
        run_dir.path().join("prometheus.out"),
    );
    prometheus.wait_for("Prometheus is up").await;

    // Both jobs the rules select on, each with the one process `just up` started, scraped.
    let http = reqwest::Client::new();
    let api = |path: &str| {
        let request = http.get(format!("http://{prometheus_address}/api/v1/{path}"));
        async move {
            let answer: serde_json::Value = request
                .send()
                .await
                .expect("Prometheus answers")
                .json()
                .await
                .expect("JSON");
            answer["data"].clone()
        }
    };
    let wanted = [
        ("finalprice-front".to_owned(), front),
        ("finalprice-worker".to_owned(), worker),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut scraped: Vec<(String, String)>;
    loop {
        let targets = api("targets").await;
        scraped = targets["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|target| target["health"] == "up")
            .map(|target| {
                let label = |name: &str| {
                    target["labels"][name]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                };
                (label("job"), label("instance"))
            })
            .collect();
        scraped.sort();
        if scraped == wanted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(scraped, wanted, "{}", prometheus.output());

    // The shipped rule file, whole, every rule evaluated without error.
    let rules_of = |data: &serde_json::Value| -> Vec<serde_json::Value> {
        data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .cloned()
            .collect()
    };
    let rules = rules_of(&api("rules").await);
    let shipped =
        std::fs::read_to_string(repository().join("deploy/prometheus/rules/finalprice.yml"))
            .expect("rule file");
    let count = shipped.matches("- alert: ").count() + shipped.matches("- record: ").count();
    assert_eq!(rules.len(), count, "{rules:?}");
    let evaluated = eventually(Duration::from_secs(30), || async {
        rules_of(&api("rules").await)
            .iter()
            .all(|rule| rule["health"] == "ok")
    })
    .await;
    assert!(evaluated, "{:?}", api("rules").await);

    drop(prometheus);
    drop(up);
    assert!(
        !run_dir.path().join("pids").exists(),
        "the stack did not stop"
    );
}
