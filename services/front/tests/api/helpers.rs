//! `spawn_app`: a front and (optionally) a worker in this process, on a fresh nats-server and a
//! fresh database; plus the requests and database reads the tests share.

use std::sync::Arc;
use std::time::Duration;

use finalprice_db::entity::orders;
use finalprice_front::Application as Front;
use finalprice_shared::config::Config;
use finalprice_shared::messages::order_subject;
pub use finalprice_testkit::eventually;
use finalprice_testkit::load::{self, Tally, Target};
use finalprice_testkit::{Backend, NatsServer, TestDb};
use finalprice_worker::{Application as Worker, WorkerStats};
use sea_orm::{DatabaseConnection, EntityTrait};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A running front, its NATS and database, and optionally a worker.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The front's admin listener (`/metrics` off the shoppers' port), when the test set
    /// `http.admin_addr`.
    pub admin_addr: Option<std::net::SocketAddr>,
    pub nats: NatsServer,
    /// Lives as long as the app: the database is dropped with it.
    _db: TestDb,
    pub config: Config,
    /// Follows no redirects, so tests see the 303 itself.
    pub http: reqwest::Client,
    rows: DatabaseConnection,
    front: Service,
    worker: Option<(Service, Arc<WorkerStats>)>,
    worker_metrics: Option<std::net::SocketAddr>,
}

struct Service {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(self) {
        self.stop.cancel();
        let stopped = self.task.await.expect("the service's task is not lost");
        if let Err(error) = stopped {
            panic!("the service did not stop cleanly: {error:#}");
        }
    }
}

/// A front and a worker on `backend`.
pub async fn spawn_app(backend: Backend) -> TestApp {
    let mut app = spawn_app_without_worker(backend).await;
    app.start_worker().await;
    app
}

/// A front alone: orders are durable in the stream but nobody commits them.
pub async fn spawn_app_without_worker(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A front alone, with settings changed by `adjust` (start a worker with `start_worker`).
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(
        NatsServer::start().expect("nats-server starts"),
        backend,
        adjust,
    )
    .await
}

/// A front alone on the given nats-server.
pub async fn spawn_app_on(
    nats: NatsServer,
    backend: Backend,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    finalprice_shared::telemetry::init_for_tests();
    // Some tests hold thousands of connections to the front in this process; an ordinary
    // user's soft limit (1,024) would refuse them where the service itself would not.
    finalprice_shared::service::raise_open_files_limit().expect("the open files limit");
    let db = TestDb::new(backend).await.expect("test database");
    let mut config = finalprice_testkit::config(&nats, &db);
    adjust(&mut config);
    let front = Front::build(&config).await.expect("front builds");
    let address = format!("http://{}", front.local_addr().expect("bound"));
    let admin_addr = front.admin_addr().expect("admin listener bound");
    let stop = CancellationToken::new();
    let task = tokio::spawn(front.run_until_stopped(stop.clone()));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    let rows = db.connect().await.expect("database for assertions");
    TestApp {
        address,
        admin_addr,
        nats,
        _db: db,
        config,
        http,
        rows,
        front: Service { stop, task },
        worker: None,
        worker_metrics: None,
    }
}

impl TestApp {
    /// Starts a worker on this app's NATS and database.
    pub async fn start_worker(&mut self) {
        let worker = Worker::build(&self.config).await.expect("worker builds");
        let stats = worker.stats();
        self.worker_metrics = Some(worker.metrics_addr().expect("metrics bound"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run_until_stopped(stop.clone()));
        self.worker = Some((Service { stop, task }, stats));
    }

    /// SIGKILLs nats-server and waits until the front has noticed (its `/readyz` fails), so
    /// what the test sends next meets a front that knows NATS is gone.
    pub async fn kill_nats(&mut self) {
        self.nats.kill();
        let noticed = eventually(Duration::from_secs(10), || async {
            self.get("/readyz").await.status() == 503
        });
        assert!(noticed.await, "the front notices that NATS is gone");
    }

    /// The worker's `/metrics` URL.
    pub fn worker_metrics_url(&self) -> String {
        format!(
            "http://{}/metrics",
            self.worker_metrics.expect("a worker runs")
        )
    }

    /// The running worker's counters.
    pub fn worker_stats(&self) -> &WorkerStats {
        &self.worker.as_ref().expect("a worker runs").1
    }

    /// Stops front and worker gracefully (as on SIGTERM).
    pub async fn stop(mut self) {
        if let Some((worker, _)) = self.worker.take() {
            worker.stop().await;
        }
        self.front.stop().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A browser's form POST.
    pub async fn post_form(&self, body: &str) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .expect("POST /orders answered")
    }

    /// An API client's JSON POST.
    pub async fn post_json(&self, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .header("accept", "application/json")
            .json(body)
            .send()
            .await
            .expect("POST /orders answered")
    }

    /// An API client's GET: status and JSON body.
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.url(path))
            .header("accept", "application/json")
            .send()
            .await
            .expect("GET answered");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET answered")
    }

    /// The front's current value of a metric without labels, from its `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// Waits until the front gathers orders into envelopes (it does once it has looked at the
    /// workers).
    pub async fn until_gathering(&self) {
        let gathering = eventually(Duration::from_secs(10), || async {
            self.metric("finalprice_front_envelopes_on").await == 1.0
        });
        assert!(
            gathering.await,
            "the front gathers once it has looked at the workers"
        );
    }

    /// Runs `requests` while nats-server hangs, and lets it go on once `count` of them are in
    /// the front: the first publish is held, and every order after it waits behind that one.
    pub async fn while_nats_hangs<T>(&self, count: usize, requests: impl Future<Output = T>) -> T {
        self.nats.freeze().expect("nats-server freezes");
        let thaw = async {
            let all_in = eventually(Duration::from_secs(10), || async {
                self.metric("finalprice_front_http_requests_in_flight")
                    .await
                    >= count as f64
            });
            assert!(all_in.await, "the {count} orders reached the front");
            self.nats.thaw().expect("nats-server goes on");
        };
        let (answers, ()) = tokio::join!(requests, thaw);
        answers
    }

    /// The committed row of order `id`, read straight from the database.
    pub async fn row(&self, id: Uuid) -> Option<orders::Model> {
        orders::Entity::find_by_id(id)
            .one(&self.rows)
            .await
            .expect("database read")
    }

    /// Runs raw SQL on the test database (fault injection, schema tweaks).
    pub async fn execute(&self, sql: &str) {
        use sea_orm::ConnectionTrait;
        self.rows.execute_unprepared(sql).await.expect("SQL runs");
    }

    /// Where load goes and where its answers are checked.
    pub fn target(&self) -> Target<'_> {
        Target {
            base_url: &self.address,
            http: &self.http,
            rows: &self.rows,
        }
    }

    /// Sends a burst of orders (see [`finalprice_testkit::load::burst`]).
    pub async fn burst(&self, count: usize, concurrency: usize, first_phone: u64) -> Tally {
        load::burst(self.target(), count, concurrency, first_phone).await
    }

    /// The three numbers of DESIGN.md §2, asserted zero (acknowledged orders get `within`).
    pub async fn assert_guarantees(&self, tally: &Tally, within: Duration) {
        load::assert_guarantees(&self.rows, tally, within).await;
    }

    pub async fn row_count(&self) -> u64 {
        load::row_count(&self.rows).await
    }

    /// The id of every committed row.
    pub async fn row_ids(&self) -> Vec<Uuid> {
        orders::Entity::find()
            .all(&self.rows)
            .await
            .expect("database read")
            .into_iter()
            .map(|row| row.id)
            .collect()
    }

    /// The headers of order `id`'s message while it waits in the ORDERS stream.
    pub async fn queued_headers(&self, id: Uuid) -> async_nats::HeaderMap {
        let client = async_nats::connect(self.nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("ORDERS").await.expect("stream exists");
        stream
            .direct_get_last_for_subject(order_subject(id))
            .await
            .expect("the order is queued")
            .headers
    }

    /// Orders waiting in the ORDERS stream: one per message, or an envelope's count.
    pub async fn queued(&self) -> u64 {
        finalprice_testkit::orders_in_stream(&self.nats.url())
            .await
            .expect("the stream's orders")
    }
}

/// The app's ORDERS stream, as a client of its nats-server sees it.
pub async fn orders_stream(app: &TestApp) -> async_nats::jetstream::stream::Stream {
    let client = async_nats::connect(app.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    js.get_stream("ORDERS").await.expect("stream exists")
}

/// The order id from a 303's `Location: /orders/{id}`.
pub fn order_id_from_location(response: &reqwest::Response) -> Uuid {
    let location = response
        .headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .expect("ASCII location");
    let id = location
        .strip_prefix("/orders/")
        .unwrap_or_else(|| panic!("Location {location} is not an order page"));
    // A pending order's link also names the message that carries it (`?at=…`).
    let id = id.split_once('?').map_or(id, |(id, _)| id);
    Uuid::parse_str(id).expect("the Location names a UUID")
}
