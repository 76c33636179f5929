//! A real nats-server for one test: a free port, its own JetStream store, the repository's
//! `nats/nats-server.conf`. Can be killed and restarted on the same port and store.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use finalprice_shared::messages;

use crate::process::{self, free_port};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats/nats-server.conf");
const AUTH_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats/nats-server-auth.conf");

/// A running nats-server; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    /// `nats/nats-server-auth.conf`'s user and password, when started with them.
    credentials: Option<(String, String)>,
}

impl NatsServer {
    /// Starts a fresh server on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None)
    }

    /// Starts a fresh server with `nats/nats-server-auth.conf`: clients must log in.
    pub fn start_with_user(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            credentials,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash: no flush, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server hangs with its sockets open, so what clients send waits.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT after [`NatsServer::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        process::signal(self.child.as_ref(), signal)
    }

    /// Starts the server again on the same port and store (after [`NatsServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let store = self.dir.path().join("store");
        let ports_dir = self.dir.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        for stale in std::fs::read_dir(&ports_dir)? {
            std::fs::remove_file(stale?.path())?;
        }
        if self.port == 0 {
            // Not nats-server's own `-p -1`: its choice comes from the ephemeral range, where
            // the test's clients could take the port while the server is down for a restart.
            self.port = free_port()?;
        }
        let port = self.port.to_string();
        let mut command = Command::new(binary()?);
        match &self.credentials {
            Some((user, password)) => {
                command
                    .arg("-c")
                    .arg(AUTH_CONFIG)
                    .env("NATS_USER", user)
                    .env("NATS_PASSWORD", password);
            }
            None => {
                command.arg("-c").arg(CONFIG);
            }
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &port, "-m", "0", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server")?;
        self.child = Some(child);
        self.port = wait_for_port(&ports_dir)?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `NATS_SERVER_BIN` (`just test` sets it), else what `scripts/tools nats-server` finds or
/// installs: one on PATH, or the pinned one in the project's .tools/.
pub(crate) fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(path.into());
    }
    process::tool("nats-server").map(PathBuf::from)
}

/// Reads the port the server chose from its ports file, then waits until it accepts.
fn wait_for_port(ports_dir: &Path) -> anyhow::Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(port) = read_ports_file(ports_dir)
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Ok(port);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nats-server did not start within 10s")
}

fn read_ports_file(ports_dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(ports_dir).ok()?.flatten().next()?;
    let ports: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = ports["nats"][0].as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Orders waiting in the ORDERS stream of the nats-server at `url`: one per message, or the
/// orders an envelope holds.
pub async fn orders_in_stream(url: &str) -> anyhow::Result<u64> {
    let client = async_nats::connect(url).await?;
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("ORDERS")
        .await?;
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(0);
    }
    let mut orders = 0;
    for sequence in state.first_sequence..=state.last_sequence {
        // A work queue deletes what workers ack: gaps are normal.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            // The entries themselves, not the header's count, which a bug could get wrong.
            orders += if messages::is_envelope(&message.headers) {
                messages::open_envelope(&message.payload)?.len() as u64
            } else {
                1
            };
        }
    }
    Ok(orders)
}
