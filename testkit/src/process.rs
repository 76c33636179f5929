//! The real binaries as processes, for tests that kill them: started with a clean environment
//! plus the settings given, logging to a file, stopped by SIGKILL or SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// A running `finalprice-front` or `finalprice-worker`; killed when dropped.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

/// Where `cargo` put this workspace's binaries: beside the `deps` folder of the running test.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary outside a target directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not built: run `cargo build --workspace --bins` (just test does)",
            path.display()
        );
    }
    Ok(path)
}

/// The workspace root, where the justfile, scripts/ and compose.yaml live.
pub fn repository() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
        .to_path_buf()
}

/// What `scripts/tools NAME` prints, as the recipes get it: the tool's command (`docker compose`
/// for Docker's plugin, else one path), found on PATH or installed into the project's .tools/.
pub fn tool(name: &str) -> anyhow::Result<String> {
    let tools = repository().join("scripts/tools");
    let output = Command::new(&tools)
        .arg(name)
        .output()
        .with_context(|| format!("cannot run {}", tools.display()))?;
    if !output.status.success() {
        bail!(
            "{name} not found: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `binary` with none of the caller's FinalPrice settings: no `FINALPRICE_*`, `OTEL_*`,
/// `NATS_URL` or `DATABASE_URL` leaks from the shell running the tests into the process.
pub fn clean_command(binary: &std::path::Path) -> Command {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars() {
        if key.starts_with("FINALPRICE_")
            || key.starts_with("OTEL_")
            || key == "NATS_URL"
            || key == "DATABASE_URL"
        {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `finalprice-worker <args>` as an operator would, with only `NATS_URL` and
/// `DATABASE_URL` of ours; panics unless it succeeds, and returns what it printed.
pub fn operator(nats_url: &str, database_url: &str, args: &[&str]) -> String {
    let binary = binary("finalprice-worker").expect("built");
    let output = clean_command(&binary)
        .args(args)
        .env("NATS_URL", nats_url)
        .env("DATABASE_URL", database_url)
        .output()
        .expect("finalprice-worker runs");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

impl Service {
    /// Starts `binary` (`finalprice-front` or `finalprice-worker`) with only `env` of ours:
    /// nothing from the caller's `FINALPRICE_*`, `NATS_URL`, `DATABASE_URL` leaks in.
    pub fn start(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-service-").tempdir()?;
        let log = dir.path().join(format!("{name}.log"));
        let mut command = clean_command(&binary(name)?);
        command
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name,
            child: Some(child),
            log,
            _dir: dir,
        })
    }

    /// The process id, for signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (a start-up line, say).
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "{} did not log {needle:?} within {within:?}:\n{}",
            self.name,
            self.log()
        )
    }

    /// Waits until the front at `address` (`http://host:port`) answers `/readyz` with 200.
    pub async fn wait_ready(&self, address: &str, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let ready = crate::eventually(within, || async {
            http.get(format!("{address}/readyz"))
                .send()
                .await
                .is_ok_and(|answer| answer.status() == 200)
        });
        if ready.await {
            return Ok(());
        }
        bail!(
            "{} at {address} not ready within {within:?}:\n{}",
            self.name,
            self.log()
        )
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as an orchestrator stops a container.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("already stopped")?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("already stopped")?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "{} did not exit within {within:?}:\n{}",
            self.name,
            self.log()
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` (`STOP`, `CONT`, `USR2`, …) to a child process: freezing, thawing or
/// putting a nats-server in lame-duck mode.
pub(crate) fn signal(child: Option<&Child>, signal: &str) -> anyhow::Result<()> {
    let pid = child.map(Child::id).context("not running")?;
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

/// The lowest port this harness hands out: below it sit well-known services' ports.
const FIRST_TEST_PORT: u16 = 15_000;

/// A free local port, picked below the kernel's ephemeral range. Servers in these tests are
/// killed and started again on the same port while the test's own clients open thousands of
/// connections; a port from the ephemeral range (what binding port 0 gives) can meanwhile
/// become the local end of one of those connections, and the restarted server then dies with
/// "address already in use". Below the range only another listener can take it, and each call
/// in this process gets a port no earlier call got.
pub fn free_port() -> anyhow::Result<u16> {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral <= FIRST_TEST_PORT + 1_000 {
        // An unusual range leaves no room below it; the kernel's choice is then the best left.
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    let span = ephemeral - FIRST_TEST_PORT;
    // Where this process starts in the span, so two test binaries rarely try the same ports.
    let start = (std::process::id() % u32::from(span)) as u16;
    for _ in 0..span {
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = FIRST_TEST_PORT + (start.wrapping_add(call) % span);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {FIRST_TEST_PORT} and {ephemeral}")
}
