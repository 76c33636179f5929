//! Three real nats-servers as one JetStream cluster, started from `nats/nats-cluster.conf` as
//! `just up-cluster` and compose start them: each node on its own free ports and store, which
//! a test can kill, freeze, wipe, put in lame-duck mode and start again on the same ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::nats::binary;
use crate::process::{self, free_port};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats/nats-cluster.conf");

/// How long a node may take to listen after it is started.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);

/// One node: its ports stay the same across restarts, so the others' routes find it again.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    monitor_port: u16,
    /// Behind a lock so that a test can fault nodes (`&self`) while its load runs.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running three-node cluster; every node is killed when dropped. Its methods take `&self`,
/// so a scenario can fault nodes while the same test's load runs.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until they have elected a meta leader (JetStream's own
    /// leader, which every stream and consumer creation needs).
    pub async fn start() -> anyhow::Result<Self> {
        let cluster = Self::start_nodes(&[0, 1, 2])?;
        cluster
            .wait_for_meta_leader(Duration::from_secs(30))
            .await?;
        Ok(cluster)
    }

    /// Starts only the nodes `which`: the others are known to the started ones as routes, and
    /// can be started later with [`NatsCluster::start_node`]. One node alone has no quorum.
    pub fn start_nodes(which: &[usize]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("fp-cluster-").tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(Node {
                name: format!("n{}", i + 1),
                client_port: free_port()?,
                cluster_port: free_port()?,
                monitor_port: free_port()?,
                child: Mutex::new(None),
            });
        }
        let cluster = Self { nodes, dir };
        for &i in which {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    /// `nats://…` of every node, comma-separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The `server_name` of node `i` (`n1`, `n2`, `n3`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node with `server_name` `name`.
    pub fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|node| node.name == name)
            .with_context(|| format!("no node named {name}"))
    }

    /// Node `i`'s JetStream store.
    fn store(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].name)
    }

    /// Whether node `i` runs (it may be frozen).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child().is_some()
    }

    /// Starts node `i` on its ports and store (after [`NatsCluster::kill`], or for the first
    /// time), and waits until it takes clients.
    pub fn start_node(&self, i: usize) -> anyhow::Result<()> {
        let mut running = self.nodes[i].child();
        if running.is_some() {
            bail!("node {} is already running", self.nodes[i].name);
        }
        let route = |node: &Node| format!("nats://127.0.0.1:{}", node.cluster_port);
        let store = self.store(i);
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let node = &self.nodes[i];
        let child = Command::new(binary()?)
            .arg("-c")
            .arg(CONFIG)
            .env("NATS_SERVER_NAME", &node.name)
            .env(
                "NATS_CLUSTER_LISTEN",
                format!("127.0.0.1:{}", node.cluster_port),
            )
            .env("NATS_ROUTE_1", route(&self.nodes[0]))
            .env("NATS_ROUTE_2", route(&self.nodes[1]))
            .env("NATS_ROUTE_3", route(&self.nodes[2]))
            .args(["-a", "127.0.0.1"])
            .args(["-p", &node.client_port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server")?;
        let port = node.client_port;
        *running = Some(child);
        drop(running);
        let deadline = Instant::now() + LISTEN_WITHIN;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = {
                let mut running = node.child();
                let exited = running
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if exited.is_some() {
                    *running = None;
                }
                exited
            };
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let state = exited.map_or_else(
                    || format!("did not listen on {port} within {LISTEN_WITHIN:?}"),
                    |status| format!("exited ({status}) before it listened on {port}"),
                );
                bail!(
                    "node {} {state}; the end of its log:\n{}",
                    node.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL of node `i`: a crash, or a host gone.
    pub fn kill(&self, i: usize) {
        if let Some(mut child) = self.nodes[i].child().take() {
            // A frozen process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL of node `i`, then its store deleted: a host that lost its disk.
    pub fn kill_and_wipe(&self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let store = self.store(i);
        if store.exists() {
            std::fs::remove_dir_all(&store)
                .with_context(|| format!("deleting {}", store.display()))?;
        }
        Ok(())
    }

    /// SIGSTOP of node `i`: a host that hangs, its sockets still open.
    pub fn freeze(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")
    }

    /// SIGCONT of node `i` after [`NatsCluster::freeze`].
    pub fn thaw(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")
    }

    /// Lame-duck mode for node `i` (SIGUSR2, what `nats-server --signal ldm` sends): it gives
    /// up its leaderships, stops taking clients, moves its clients off, and exits.
    pub fn lame_duck(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "USR2")
    }

    /// Waits until node `i` has exited by itself (after lame-duck mode).
    pub async fn wait_exit(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let node = &self.nodes[i];
        while Instant::now() < deadline {
            {
                let mut running = node.child();
                let child = running.as_mut().context("not running")?;
                if child.try_wait()?.is_some() {
                    *running = None;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node {} did not exit within {within:?}", node.name)
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        process::signal(self.nodes[i].child().as_ref(), signal)
    }

    /// What node `i` wrote to its log: for a failing test's message.
    pub fn log(&self, i: usize) -> String {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Node `i`'s monitoring `/jsz?<query>`: JetStream as that node sees it.
    async fn jsz(&self, i: usize, query: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?{query}",
            self.nodes[i].monitor_port
        );
        let answer = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?;
        Ok(answer.json().await?)
    }

    /// The last sequence number of stream `name` in node `i`'s own copy (its `/jsz`).
    pub async fn stream_last_sequence(&self, i: usize, name: &str) -> anyhow::Result<u64> {
        let jsz = self.jsz(i, "accounts=true&streams=true").await?;
        let accounts = jsz["account_details"].as_array().context("no accounts")?;
        accounts
            .iter()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)
            .and_then(|stream| stream["state"]["last_seq"].as_u64())
            .with_context(|| format!("node {} holds no stream {name}", self.nodes[i].name))
    }

    /// Waits until a running node names a meta leader that has both other nodes as current
    /// replicas.
    pub async fn wait_for_meta_leader(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            for i in (0..self.nodes.len()).filter(|&i| self.is_running(i)) {
                if let Ok(jsz) = self.jsz(i, "").await {
                    let meta = &jsz["meta_cluster"];
                    let replicas = meta["replicas"].as_array().map(Vec::as_slice);
                    let all_current = replicas.is_some_and(|replicas| {
                        replicas.len() == 2 && replicas.iter().all(|r| r["current"] == true)
                    });
                    if meta["leader"].is_string() && all_current {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the cluster elected no meta leader within {within:?}")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A frozen node must be thawed to take a signal other than SIGKILL; SIGKILL is fine.
            self.kill(i);
        }
    }
}
