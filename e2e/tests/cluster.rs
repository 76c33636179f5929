//! DESIGN.md §2 on the production topology: three real nats-servers as one cluster with the
//! streams at R3, two fronts, two workers and PostgreSQL, faulted under load from several
//! clients. Each scenario ends on the three numbers that must be zero (accepted but not a row
//! at that moment, acknowledged but never a row, stored twice) and writes how long the fronts
//! answered anything but "accepted"/"being saved" to `target/cluster-faults.txt`.
//!
//! The servers run with nats-server's own election timeouts (4–9 s), as in production. The
//! scenarios take turns: each is a whole stack on a 2-core machine. Each runs on two threads,
//! so that the harness's blocking steps (a node's start) do not pause the load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use finalprice_testkit::load::{self, Sustained, Target};
use finalprice_testkit::{Backend, NatsCluster, Service, TestDb, eventually, free_port};
use sea_orm::DatabaseConnection;

/// A replicated group of the order path: the stream or the workers' consumer.
#[derive(Debug, Clone, Copy)]
enum Group {
    Stream,
    Consumer,
}

/// One scenario at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Clients sending orders at once, one after another each: half to each front.
const CLIENTS: usize = 16;

/// How long a scenario waits for the state its next step needs (an election, a catch-up).
const WAIT: Duration = Duration::from_secs(60);

/// How long the load runs before a fault, and after the cluster is whole again.
const STEADY: Duration = Duration::from_secs(3);

/// The cluster, the database, two fronts and two workers.
struct Stack {
    cluster: NatsCluster,
    _db: TestDb,
    db_url: String,
    rows: DatabaseConnection,
    fronts: Vec<(Service, String)>,
    _workers: Vec<Service>,
    http: reqwest::Client,
    js: jetstream::Context,
}

impl Stack {
    /// Waits for this scenario's turn, then starts a whole stack and waits until it serves.
    async fn serving() -> (tokio::sync::MutexGuard<'static, ()>, Self) {
        let turn = TURN.lock().await;
        let cluster = NatsCluster::start().await.expect("a three-node cluster");
        let stack = Self::on(cluster).await;
        stack.until_serving().await;
        (turn, stack)
    }

    /// Fronts and workers on `cluster`, which may still be forming.
    async fn on(cluster: NatsCluster) -> Self {
        let db = TestDb::new(Backend::Postgres).await.expect("database");
        let rows = db.connect().await.expect("connect");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(40))
            .build()
            .expect("http client");
        let client = async_nats::connect(cluster.urls().split(',').collect::<Vec<_>>())
            .await
            .expect("the test's own NATS client");
        let mut stack = Self {
            db_url: db.url().to_owned(),
            js: jetstream::new(client),
            cluster,
            _db: db,
            rows,
            fronts: Vec::new(),
            _workers: Vec::new(),
            http,
        };
        for _ in 0..2 {
            let worker = Service::start("finalprice-worker", &stack.env()).expect("worker starts");
            stack._workers.push(worker);
        }
        for _ in 0..2 {
            let port = free_port().expect("a free port");
            let env = [
                stack.env(),
                vec![("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}"))],
            ]
            .concat();
            let front = Service::start("finalprice-front", &env).expect("front starts");
            stack
                .fronts
                .push((front, format!("http://127.0.0.1:{port}")));
        }
        stack
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.cluster.urls()),
            ("FINALPRICE_NATS__STREAM_REPLICAS", "3".into()),
            ("DATABASE_URL", self.db_url.clone()),
            ("FINALPRICE_HTTP__REPLY_TIMEOUT", "3s".into()),
            // Acks sent to a consumer leader that dies are lost: those orders come back after
            // this (the default 15 s would only make the scenarios longer).
            ("FINALPRICE_NATS__ACK_WAIT", "5s".into()),
            ("FINALPRICE_WORKER__COMMIT_TIMEOUT", "4s".into()),
            ("FINALPRICE_WORKER__RETRY_DELAY", "100ms".into()),
            ("FINALPRICE_DB__MAX_CONNECTIONS", "4".into()),
        ]
    }

    /// Waits until both workers pull and both fronts are ready.
    async fn until_serving(&self) {
        for worker in &self._workers {
            worker
                .wait_for_log("worker pulling orders", WAIT)
                .await
                .expect("worker pulling");
        }
        for (front, address) in &self.fronts {
            let ready = eventually(WAIT, || async {
                let answer = self.http.get(format!("{address}/readyz")).send().await;
                answer.is_ok_and(|answer| answer.status() == 200)
            });
            assert!(ready.await, "front not ready:\n{}", front.log());
        }
    }

    fn targets(&self) -> Vec<Target<'_>> {
        self.fronts
            .iter()
            .map(|(_, address)| Target {
                base_url: address,
                http: &self.http,
                rows: &self.rows,
            })
            .collect()
    }

    /// The name of the node leading `group`, if any now.
    async fn leader(&self, group: Group) -> Option<String> {
        match group {
            Group::Stream => self.stream_leader().await,
            Group::Consumer => self.consumer_leader().await,
        }
    }

    /// SIGKILL of `node`, which leads `group`; waits until another node leads it, lets the
    /// load run on, then starts `node` again and waits until the cluster is whole.
    async fn kill_leader_and_restart(&self, group: Group, node: usize) {
        self.cluster.kill(node);
        let replaced = eventually(WAIT, || async {
            self.leader(group)
                .await
                .is_some_and(|now| now != self.cluster.name(node))
        });
        assert!(replaced.await, "another node leads the {group:?}");
        tokio::time::sleep(STEADY).await;
        self.cluster.start_node(node).expect("the old leader back");
        self.until_whole("the old leader came back").await;
    }

    /// The name of the node leading the `ORDERS` stream, if any now.
    async fn stream_leader(&self) -> Option<String> {
        let mut stream = self.js.get_stream("ORDERS").await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// The name of the node leading the `workers` consumer, if any now.
    async fn consumer_leader(&self) -> Option<String> {
        let stream = self.js.get_stream("ORDERS").await.ok()?;
        let mut consumer = stream
            .get_consumer::<jetstream::consumer::pull::Config>("workers")
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// The index of the node leading the stream, once there is one.
    async fn stream_leader_index(&self) -> usize {
        let elected = eventually(WAIT, || async { self.stream_leader().await.is_some() });
        assert!(elected.await, "the stream has a leader");
        let leader = self.stream_leader().await.expect("a leader");
        self.cluster.index_of(&leader).expect("a node of ours")
    }

    /// Whether the stream and the consumer each have a leader and two current replicas.
    async fn whole(&self) -> bool {
        let Ok(mut stream) = self.js.get_stream("ORDERS").await else {
            return false;
        };
        let Ok(info) = stream.info().await.cloned() else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>("workers")
            .await
        else {
            return false;
        };
        let Ok(consumer) = consumer.info().await else {
            return false;
        };
        [info.cluster.as_ref(), consumer.cluster.as_ref()]
            .into_iter()
            .all(|group| {
                group.is_some_and(|group| {
                    group.leader.is_some()
                        && group.replicas.len() == 2
                        && group.replicas.iter().all(|r| r.current && !r.offline)
                })
            })
    }

    /// Waits until the stream and the consumer are whole again at R3.
    async fn until_whole(&self, after: &str) {
        let whole = eventually(WAIT, || self.whole());
        assert!(
            whole.await,
            "stream and consumer whole again at R3 after {after}"
        );
    }

    /// Runs `fault` while the load runs (from [`STEADY`] before it to [`STEADY`] after it),
    /// then checks the three numbers and reports the scenario.
    async fn under_load(&self, scenario: &str, first_phone: u64, fault: impl Future<Output = ()>) {
        let stop = AtomicBool::new(false);
        let targets = self.targets();
        let began = tokio::time::Instant::now();
        let faulted = async {
            tokio::time::sleep(STEADY).await;
            let from = began.elapsed();
            fault.await;
            let to = began.elapsed();
            tokio::time::sleep(STEADY).await;
            stop.store(true, Ordering::Relaxed);
            from..to
        };
        // Boxed: the load's state is large, and every scenario's future would hold it.
        let (sustained, fault_window) = tokio::join!(
            Box::pin(load::sustain(&targets, CLIENTS, first_phone, &stop)),
            Box::pin(faulted)
        );
        report(scenario, &sustained);
        // The load started with the join above, a moment after `began`: the window is, if
        // anything, a little late, never early.
        let during = sustained.sent_within(fault_window.clone());
        assert!(
            during > 10,
            "orders were sent while the fault lasted ({fault_window:?}): {during}; {}",
            sustained.summary()
        );
        // A shopper refused once tries again with the same key; an election or a lost node
        // may cost a wait, never an order given up after every try.
        assert_eq!(
            sustained.tally.unavailable,
            0,
            "orders still refused after every try: {}",
            sustained.summary()
        );
        load::assert_guarantees(&self.rows, &sustained.tally, WAIT).await;
    }
}

/// Appends one scenario's figures to `target/cluster-faults.txt` (`just test` prints it).
fn report(scenario: &str, sustained: &Sustained) {
    use std::io::Write as _;
    let line = format!("{scenario}: {}\n", sustained.summary());
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/cluster-faults.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_the_cluster_has_a_quorum_wait_for_it_and_then_serve() {
    let _turn = TURN.lock().await;
    // One node of three: no meta leader can be elected, so no stream can be made.
    let cluster = NatsCluster::start_nodes(&[0]).expect("one node");
    let mut stack = Stack::on(cluster).await;
    let waiting = eventually(WAIT, || async {
        stack._workers.iter().all(|worker| {
            let log = worker.log();
            log.contains("JetStream not ready; retrying")
        })
    });
    assert!(waiting.await, "both workers say they wait for JetStream");
    for worker in &mut stack._workers {
        assert!(
            worker.wait_exit(Duration::from_millis(10)).await.is_err(),
            "a worker waits, it does not exit:\n{}",
            worker.log()
        );
    }
    let (front, address) = &stack.fronts[0];
    front
        .wait_for_log("listening", WAIT)
        .await
        .expect("the front serves while it waits");
    let ready = stack.http.get(format!("{address}/readyz")).send().await;
    assert_eq!(
        ready.expect("an answer").status(),
        503,
        "not ready without a stream"
    );

    stack.cluster.start_node(1).expect("second node");
    stack.cluster.start_node(2).expect("third node");
    stack.until_serving().await;
    let targets = stack.targets();
    let tally = load::burst(targets[0], 50, 8, 9_500_000_000).await;
    assert_eq!(tally.acknowledged().count(), 50, "{tally:?}");
    load::assert_guarantees(&stack.rows, &tally, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_killed_under_load_loses_nothing() {
    let (_turn, stack) = Stack::serving().await;
    let leader = stack.stream_leader_index().await;
    let fault = stack.kill_leader_and_restart(Group::Stream, leader);
    stack
        .under_load("stream leader SIGKILLed", 9_510_000_000, fault)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_leader_killed_under_load_loses_nothing() {
    let (_turn, stack) = Stack::serving().await;
    // The consumer's leader is placed by nats-server; asked to step down, it moves to another
    // node, until it is not the stream's leader.
    let apart = eventually(WAIT, || async {
        let (Some(stream), Some(consumer)) =
            (stack.stream_leader().await, stack.consumer_leader().await)
        else {
            return false;
        };
        if stream != consumer {
            return true;
        }
        let _ = stack
            .js
            .request::<_, _, serde_json::Value>(
                "CONSUMER.LEADER.STEPDOWN.ORDERS.workers".to_owned(),
                &serde_json::json!({}),
            )
            .await;
        false
    });
    assert!(
        apart.await,
        "the consumer leads on another node than the stream"
    );
    let leader = stack
        .cluster
        .index_of(&stack.consumer_leader().await.expect("a consumer leader"))
        .expect("a node of ours");
    let fault = stack.kill_leader_and_restart(Group::Consumer, leader);
    stack
        .under_load("consumer leader SIGKILLed", 9_520_000_000, fault)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_hangs_for_15_seconds_loses_nothing() {
    let (_turn, stack) = Stack::serving().await;
    let leader = stack.stream_leader_index().await;
    let fault = async {
        stack.cluster.freeze(leader).expect("SIGSTOP");
        tokio::time::sleep(Duration::from_secs(15)).await;
        stack.cluster.thaw(leader).expect("SIGCONT");
        stack.until_whole("the hung node resumed").await;
    };
    stack
        .under_load("stream leader frozen 15 s", 9_530_000_000, fault)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_comes_back_as_a_full_replica() {
    let (_turn, stack) = Stack::serving().await;
    let wiped = stack.stream_leader_index().await;
    let other = (wiped + 1) % 3;
    let fault = async {
        stack.cluster.kill_and_wipe(wiped).expect("store deleted");
        tokio::time::sleep(STEADY).await;
        stack.cluster.start_node(wiped).expect("started empty");
        stack
            .until_whole("a node came back without its store")
            .await;
        // Now one of the two that kept their disks goes: the stream lives on the wiped node
        // and the third, so the wiped one must hold everything a quorum holds.
        stack.cluster.kill(other);
        tokio::time::sleep(STEADY).await;
        stack.cluster.start_node(other).expect("back");
        stack.until_whole("the other node came back").await;
    };
    stack
        .under_load("stream leader's disk lost", 9_540_000_000, fault)
        .await;
    // What the stream has taken, the wiped node has taken too.
    let mut stream = stack.js.get_stream("ORDERS").await.expect("the stream");
    let last = stream.info().await.expect("its info").state.last_sequence;
    let on_wiped = stack
        .cluster
        .stream_last_sequence(wiped, "ORDERS")
        .await
        .expect("the wiped node reports ORDERS");
    assert_eq!(
        on_wiped, last,
        "the wiped node's copy reaches the stream's last order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_in_lame_duck_mode_loses_nothing() {
    let (_turn, stack) = Stack::serving().await;
    let fault = async {
        for node in 0..3 {
            stack.cluster.lame_duck(node).expect("lame-duck mode");
            stack
                .cluster
                .wait_exit(node, Duration::from_secs(90))
                .await
                .expect("a node in lame-duck mode exits");
            stack.cluster.start_node(node).expect("restarted");
            stack.until_whole("a node was restarted").await;
        }
    };
    stack
        .under_load("rolling restart, lame duck", 9_550_000_000, fault)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_killed_at_once_and_restarted_lose_nothing() {
    let (_turn, stack) = Stack::serving().await;
    let fault = async {
        for node in 0..3 {
            stack.cluster.kill(node);
        }
        tokio::time::sleep(STEADY).await;
        for node in 0..3 {
            stack
                .cluster
                .start_node(node)
                .expect("restarted on its store");
        }
        stack.until_whole("the whole cluster restarted").await;
    };
    stack
        .under_load("all three SIGKILLed", 9_560_000_000, fault)
        .await;
}

/// Runs `finalprice-worker <args>` as an operator would: the cluster's servers in `NATS_URL`,
/// and no `FINALPRICE_NATS__STREAM_REPLICAS`.
fn operator(stack: &Stack, args: &[&str]) -> String {
    finalprice_testkit::operator(&stack.cluster.urls(), &stack.db_url, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_server_and_replica_and_operators_leave_the_replicas_alone() {
    let (_turn, stack) = Stack::serving().await;
    stack.until_whole("the start").await;

    let status = operator(&stack, &["status"]);
    assert!(status.contains("3 of 3 answering"), "{status}");
    for node in 0..3 {
        assert!(status.contains(&stack.cluster.url(node)), "{status}");
    }
    let leader = stack.stream_leader().await.expect("a leader");
    assert!(
        status.contains(&format!("stream replicas:     leader {leader}")),
        "{status}"
    );
    assert_eq!(status.matches(" current").count(), 4, "{status}");
    assert!(status.contains("consumer replicas:   leader n"), "{status}");
    assert!(status.contains("2 front(s), 2 worker(s)"), "{status}");

    // `just dlq` ensures the dead-letter stream; without the replica setting it must keep R3.
    operator(&stack, &["dlq-list"]);
    for name in ["ORDERS", "ORDERS_DLQ"] {
        let mut stream = stack.js.get_stream(name).await.expect("the stream");
        let info = stream.info().await.expect("its info");
        assert_eq!(info.config.num_replicas, 3, "{name} stays at R3");
    }

    let follower = (0..3)
        .find(|&node| stack.cluster.name(node) != leader)
        .expect("a follower");
    stack.cluster.kill(follower);
    let status = operator(&stack, &["status"]);
    assert!(status.contains("2 of 3 answering"), "{status}");
    assert!(status.contains("NOT ANSWERING"), "{status}");
}
