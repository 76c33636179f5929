//! A real nats-server for one test: a free port, its own JetStream store, the repository's
//! `nats/nats-server.conf` (or `nats-server-auth.conf` with its users). Can be killed and
//! restarted on the same port and store.

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

/// The users of `nats/nats-server-auth.conf`, each with the password the harness gives it.
pub const USERS: [&str; 3] = ["front", "worker", "operator"];

/// The password [`NatsServer::start_with_users`] gives `user` (one of [`USERS`]).
pub fn test_password(user: &str) -> String {
    format!("test-{user}-password")
}

/// How clients log in.
#[derive(Debug)]
enum Login {
    None,
    /// One user who may do anything (a configuration of the harness's own).
    One {
        user: String,
        password: String,
    },
    /// The users and permissions of `nats/nats-server-auth.conf`.
    Shipped,
}

/// A running nats-server; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    login: Login,
}

impl NatsServer {
    /// Starts a fresh server on a free port.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(Login::None)
    }

    /// Starts a fresh server on which clients must log in as `user`, who may do anything: for
    /// tests of the login itself (the shipped users' permissions: [`Self::start_with_users`]).
    pub fn start_with_user(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_inner(Login::One {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Starts a fresh server with `nats/nats-server-auth.conf` as shipped: the users of
    /// [`USERS`], each with its permissions and its [`test_password`].
    pub fn start_with_users() -> anyhow::Result<Self> {
        Self::start_inner(Login::Shipped)
    }

    fn start_inner(login: Login) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            login,
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
        match &self.login {
            Login::None => {
                command.arg("-c").arg(CONFIG);
            }
            Login::One { user, password } => {
                // nats-server.conf and one user, in a file of its own: an `include` resolves
                // beside the including file.
                let config = self.dir.path().join("nats-server-one-user.conf");
                let mut text = std::fs::read_to_string(CONFIG)?;
                text.push_str(
                    "\nauthorization {\n  users = [\n    { user: $NATS_USER, password: $NATS_PASSWORD }\n  ]\n}\n",
                );
                std::fs::write(&config, text)?;
                command
                    .arg("-c")
                    .arg(config)
                    .env("NATS_USER", user)
                    .env("NATS_PASSWORD", password);
            }
            Login::Shipped => {
                command.arg("-c").arg(AUTH_CONFIG);
                for user in USERS {
                    command.env(
                        format!("NATS_{}_PASSWORD", user.to_uppercase()),
                        test_password(user),
                    );
                }
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
