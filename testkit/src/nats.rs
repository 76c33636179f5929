//! A real nats-server for one test: a free port, its own JetStream store, the repository's
//! `nats/nats-server.conf` (or `nats-server-auth.conf` with its users), TLS with certificates of
//! a [`TestCa`] when asked. Can be killed and restarted on the same port and store.

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

/// The TLS a server requires of its clients.
#[derive(Debug)]
struct ServerTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// Whose client certificates are accepted.
    ca_file: PathBuf,
    /// Whether clients must present a certificate (nats-server's `verify`).
    verify: bool,
}

/// A running nats-server; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    login: Login,
    tls: Option<ServerTls>,
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

    /// Starts a fresh server that requires TLS, with the server certificate of `ca` (which
    /// must outlive the server: a restart reads the files again); with `verify_clients` clients
    /// must also present a certificate `ca` signed. [`Self::url`] is then `tls://…`.
    pub fn start_with_tls(ca: &TestCa, verify_clients: bool) -> anyhow::Result<Self> {
        Self::start_full(
            Login::None,
            Some(ServerTls {
                cert_file: ca.server_cert_file(),
                key_file: ca.server_key_file(),
                ca_file: ca.ca_file(),
                verify: verify_clients,
            }),
        )
    }

    fn start_inner(login: Login) -> anyhow::Result<Self> {
        Self::start_full(login, None)
    }

    fn start_full(login: Login, tls: Option<ServerTls>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-nats-").tempdir()?;
        let mut server = Self {
            child: None,
            dir,
            port: 0,
            login,
            tls,
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`, or `tls://…` when the server requires TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
                command.arg("-c").arg(self.with_tls(Path::new(CONFIG))?);
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
                    .arg(self.with_tls(&config)?)
                    .env("NATS_USER", user)
                    .env("NATS_PASSWORD", password);
            }
            Login::Shipped => {
                command
                    .arg("-c")
                    .arg(self.with_tls(Path::new(AUTH_CONFIG))?);
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

impl NatsServer {
    /// `config`, or, when the server requires TLS, a file in the server's directory that
    /// includes it and adds a `tls` block. nats-server resolves an include beside the including
    /// file, an absolute path too (it joins the two), so `config` and the files beside it,
    /// which it may include, are copied there first.
    fn with_tls(&self, config: &Path) -> anyhow::Result<PathBuf> {
        let Some(tls) = &self.tls else {
            return Ok(config.to_owned());
        };
        let name = config.file_name().context("a configuration file")?;
        let beside = config.parent().context("a configuration file")?;
        if beside != self.dir.path() {
            for entry in std::fs::read_dir(beside)? {
                let path = entry?.path();
                if let Some(file) = path.file_name()
                    && path
                        .extension()
                        .is_some_and(|extension| extension == "conf")
                {
                    std::fs::copy(&path, self.dir.path().join(file))?;
                }
            }
        }
        let mut text = format!(
            "include \"./{}\"\n\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n",
            name.to_string_lossy(),
            tls.cert_file.display(),
            tls.key_file.display(),
            tls.ca_file.display(),
        );
        if tls.verify {
            text.push_str("  verify: true\n");
        }
        // The default (0.5 s) is tight for a debug-built client on a busy test machine.
        text.push_str("  timeout: 2\n}\n");
        let path = self.dir.path().join("nats-server-tls.conf");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// A certificate authority of a test's own: its certificate, a server certificate for
/// `localhost` and `127.0.0.1` and a client certificate it signed, with their keys, as PEM
/// files in a temporary directory (removed on drop). Each is a new CA, so a second one stands
/// for "a CA the other side does not trust".
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

impl TestCa {
    /// Makes the CA and its two certificates.
    pub fn new() -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new().prefix("fp-ca-").tempdir()?;
        let write = |file: &str, pem: String| std::fs::write(dir.path().join(file), pem);

        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("FinalPrice test CA {}", uuid::Uuid::new_v4()),
        );
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        write("ca.pem", params.self_signed(&key)?.pem())?;
        let ca = Issuer::new(params, key);

        for (name, names, usage) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            ("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("FinalPrice test {name}"));
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            write(&format!("{name}.pem"), params.signed_by(&key, &ca)?.pem())?;
            write(&format!("{name}-key.pem"), key.serialize_pem())?;
        }
        Ok(Self { dir })
    }

    /// The CA's certificate (PEM): what a client trusts (`nats.tls.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server's certificate, for `localhost` and `127.0.0.1`.
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    /// A client certificate (`nats.tls.cert_file`).
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// Its key (`nats.tls.key_file`).
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.path().join("client-key.pem")
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
