//! DESIGN.md §2 with the real processes, and their telemetry over the network: a worker
//! SIGKILLed in the middle of a batch, every worker gone and back, SIGTERM to a front and to a
//! worker under load, two of each side by side, a NATS message that breaks the services'
//! client. Each scenario ends on the three numbers that must be zero: accepted but not a row at
//! that moment, acknowledged but never a row, orders stored twice.

use std::time::Duration;

use finalprice_shared::metrics::sample_value;
use finalprice_testkit::load::{self, Tally, Target};
use finalprice_testkit::{Backend, NatsServer, Service, TestDb, eventually, free_port, repository};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
    TransactionTrait,
};

mod otlp;

/// How long a scenario waits for the state its next step needs.
const WAIT: Duration = Duration::from_secs(20);

/// nats-server, a PostgreSQL database, and the settings the processes share.
struct Stack {
    nats: NatsServer,
    _db: TestDb,
    db_url: String,
    rows: DatabaseConnection,
    address: String,
    port: u16,
    http: reqwest::Client,
}

impl Stack {
    async fn new() -> Self {
        let nats = NatsServer::start().expect("nats-server");
        let db = TestDb::new(Backend::Postgres).await.expect("database");
        let rows = db.connect().await.expect("connect");
        let port = free_port().expect("a free port");
        // One connection per request: a stopped front refuses new ones instead of racing a
        // pooled keep-alive connection it is closing.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            db_url: db.url().to_owned(),
            nats,
            _db: db,
            rows,
            address: format!("http://127.0.0.1:{port}"),
            port,
            http,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.nats.url()),
            ("DATABASE_URL", self.db_url.clone()),
            ("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{}", self.port)),
            ("FINALPRICE_HTTP__REPLY_TIMEOUT", "3s".into()),
            // A crashed worker's orders come back to the others after this.
            ("FINALPRICE_NATS__ACK_WAIT", "2s".into()),
            // Must be under it; above the 1 s commits of the slow-commit tests.
            ("FINALPRICE_WORKER__COMMIT_TIMEOUT", "1900ms".into()),
            ("FINALPRICE_WORKER__RETRY_DELAY", "100ms".into()),
            ("FINALPRICE_DB__MAX_CONNECTIONS", "4".into()),
        ]
    }

    async fn worker(&self) -> Service {
        self.worker_with(&[]).await
    }

    async fn worker_with(&self, extra: &[(&'static str, String)]) -> Service {
        let env = [self.env(), extra.to_vec()].concat();
        let worker = Service::start("finalprice-worker", &env).expect("worker starts");
        worker
            .wait_for_log("worker pulling orders", Duration::from_secs(20))
            .await
            .expect("worker ready");
        worker
    }

    /// A worker whose logs may be too quiet to say it started (`RUST_LOG=warn`): ready once
    /// one of its pulls waits at the workers' consumer.
    async fn quiet_worker_with(&self, extra: &[(&'static str, String)]) -> Service {
        let env = [self.env(), extra.to_vec()].concat();
        let worker = Service::start("finalprice-worker", &env).expect("worker starts");
        let client = async_nats::connect(self.nats.url()).await.expect("nats");
        let js = &async_nats::jetstream::new(client);
        let pulling = eventually(WAIT, || async move {
            let consumer = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    "workers", "ORDERS",
                )
                .await;
            match consumer {
                Ok(mut consumer) => consumer.info().await.is_ok_and(|info| info.num_waiting > 0),
                Err(_) => false,
            }
        });
        assert!(pulling.await, "worker not pulling:\n{}", worker.log());
        worker
    }

    async fn front(&self) -> Service {
        self.front_with(&[]).await
    }

    async fn front_with(&self, extra: &[(&'static str, String)]) -> Service {
        let env = [self.env(), extra.to_vec()].concat();
        let front = Service::start("finalprice-front", &env).expect("front starts");
        let ready = format!("{}/readyz", self.address);
        for _ in 0..400 {
            if let Ok(answer) = self.http.get(&ready).send().await
                && answer.status() == 200
            {
                return front;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("front not ready:\n{}", front.log());
    }

    /// Runs `finalprice-worker <args>` (an operator's command) and returns what it printed.
    fn admin(&self, args: &[&str]) -> String {
        finalprice_testkit::operator(&self.nats.url(), &self.db_url, args)
    }

    fn target(&self) -> Target<'_> {
        Target {
            base_url: &self.address,
            http: &self.http,
            rows: &self.rows,
        }
    }

    async fn burst(&self, count: usize, concurrency: usize, first_phone: u64) -> Tally {
        load::burst(self.target(), count, concurrency, first_phone).await
    }

    /// Makes every commit take `seconds`, so that a crash or a stop lands inside a batch.
    async fn slow_commits_by(&self, seconds: &str) {
        self.rows
            .execute_unprepared(&format!(
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$; \
                 CREATE TRIGGER slow_insert BEFORE INSERT ON orders \
                 FOR EACH STATEMENT EXECUTE FUNCTION slow_insert();"
            ))
            .await
            .expect("trigger");
    }

    /// Closes a gate every batch's INSERT waits at until the returned transaction ends: a
    /// worker is then certainly inside a batch, for as long as the test wants.
    async fn gate_commits(&self) -> DatabaseTransaction {
        self.rows
            .execute_unprepared(
                "CREATE FUNCTION gated_insert() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_advisory_xact_lock_shared(7001); RETURN NULL; END $$; \
                 CREATE TRIGGER gated_insert BEFORE INSERT ON orders \
                 FOR EACH STATEMENT EXECUTE FUNCTION gated_insert();",
            )
            .await
            .expect("trigger");
        let gate = self.rows.begin().await.expect("a transaction");
        gate.execute_unprepared("SELECT pg_advisory_xact_lock(7001)")
            .await
            .expect("the gate's lock");
        gate
    }

    /// Database sessions waiting at the gate of [`Stack::gate_commits`].
    async fn at_the_gate(&self) -> u64 {
        let row = self
            .rows
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE wait_event = 'advisory' AND datname = current_database()",
            ))
            .await
            .expect("pg_stat_activity")
            .expect("a row");
        let waiting: i64 = row.try_get("", "n").expect("a count");
        waiting.unsigned_abs()
    }

    /// Ends the statements waiting at the gate. A killed worker's statement would otherwise
    /// still run to its commit once the gate opens; ended, its orders survive only by their
    /// redelivery, which is what the test is about.
    async fn abort_at_the_gate(&self) {
        self.rows
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE wait_event = 'advisory' AND datname = current_database()",
            )
            .await
            .expect("pg_terminate_backend");
    }

    /// A worker's `/metrics` text, from the address it was started with.
    async fn metrics(&self, address: &str) -> String {
        self.http
            .get(format!("http://{address}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("a worker's /metrics")
            .text()
            .await
            .expect("a metrics text")
    }

    async fn row_count(&self) -> u64 {
        load::row_count(&self.rows).await
    }

    /// Orders the front has handed to the ORDERS stream so far, alone or in envelopes (from
    /// its `/metrics`).
    async fn published(&self) -> u64 {
        let Ok(answer) = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
        else {
            return 0;
        };
        let text = answer.text().await.unwrap_or_default();
        text.lines()
            .find_map(|line| {
                line.strip_prefix("finalprice_front_envelope_orders_sum ")?
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0, |orders| orders as u64)
    }

    /// The three numbers of §2, asserted zero.
    async fn assert_guarantees(&self, tally: &Tally) {
        load::assert_guarantees(&self.rows, tally, Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn a_worker_killed_in_the_middle_of_a_batch_loses_nothing() {
    let stack = Stack::new().await;
    // The doomed worker runs alone and its first batch waits at the gate: killed there, it
    // certainly dies holding orders. Then the gate opens and a second worker takes over.
    let gate = stack.gate_commits().await;
    let mut doomed = stack.worker().await;
    let _front = stack.front().await;

    let survivor_metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let load = stack.burst(400, 64, 9_400_000_000);
    let crash_and_take_over = async {
        let inside_a_batch = eventually(WAIT, || async { stack.at_the_gate().await > 0 });
        assert!(
            inside_a_batch.await,
            "the doomed worker's batch reached its INSERT"
        );
        doomed.kill();
        stack.abort_at_the_gate().await;
        gate.commit().await.expect("the gate opens");
        stack
            .worker_with(&[("FINALPRICE_WORKER__METRICS_ADDR", survivor_metrics.clone())])
            .await
    };
    let (tally, _survivor) = tokio::join!(load, crash_and_take_over);

    assert_eq!(tally.acknowledged().count(), 400, "{tally:?}");
    stack.assert_guarantees(&tally).await;
    // The kill landed while the doomed worker held orders: the survivor got them again.
    let metrics = stack.metrics(&survivor_metrics).await;
    let redelivered = sample_value(&metrics, "finalprice_worker_redeliveries_total")
        .expect("a redeliveries counter");
    assert!(redelivered > 0.0, "nothing was redelivered:\n{metrics}");
}

#[tokio::test]
async fn two_fronts_and_two_workers_with_the_same_settings_share_the_work() {
    let stack = Stack::new().await;
    let workers = [stack.worker().await, stack.worker().await];
    // The second front binds the same port (SO_REUSEPORT); it would exit if it could not.
    // Each order is a new connection, which the kernel gives to either; debug logs show which.
    let debug = [("RUST_LOG", "info,finalprice_front=debug".to_owned())];
    let fronts = [
        stack.front_with(&debug).await,
        stack.front_with(&debug).await,
    ];

    let tally = stack.burst(400, 64, 9_450_000_000).await;

    assert_eq!(tally.acknowledged().count(), 400, "{tally:?}");
    stack.assert_guarantees(&tally).await;
    let status = stack.admin(&["status"]);
    assert!(status.contains("2 front(s), 2 worker(s)"), "{status}");
    for front in &fronts {
        let submitted = front.log().matches("order submitted").count();
        assert!(submitted > 0, "each front took some of the orders");
    }
    for worker in &workers {
        let log = worker.log();
        let address = log
            .lines()
            .find(|line| line.contains("worker metrics on /metrics"))
            .and_then(|line| line.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("a worker names its metrics address:\n{log}"));
        let metrics = stack.metrics(address).await;
        let batches = sample_value(&metrics, "finalprice_worker_batches_committed_total");
        assert!(
            batches.is_some_and(|batches| batches > 0.0),
            "each worker committed some of the orders:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_message_that_breaks_the_nats_client_makes_the_service_exit_for_a_restart() {
    let stack = Stack::new().await;
    let mut worker = stack.worker().await;
    let mut front = stack.front().await;

    // async-nats 0.51 panics in its connection task on a header value with a lone CR
    // (nats-io/nats.rs#1612); nats-server passes it on as sent. Both services hear pings.
    publish_raw(
        &stack.nats.url(),
        finalprice_shared::messages::PING_SUBJECT,
        "NATS/1.0\r\nX: a\rb\r\n\r\n",
    )
    .await;

    for (service, name) in [(&mut worker, "worker"), (&mut front, "front")] {
        let exit = service
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|error| panic!("the {name} exits by itself: {error}"));
        assert!(!exit.success(), "the {name} exits as failed: {exit:?}");
        assert!(
            service.log().contains("NATS client stopped working"),
            "the {name} says why:\n{}",
            service.log()
        );
    }
}

/// Publishes `headers` (a complete NATS header block) on `subject` over a bare socket: no
/// client library would send what the tests need to send.
async fn publish_raw(url: &str, subject: &str, headers: &str) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

    let address = url.trim_start_matches("nats://");
    let socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to nats-server");
    let mut socket = BufReader::new(socket);
    let mut line = String::new();
    socket.read_line(&mut line).await.expect("INFO");
    assert!(line.starts_with("INFO"), "{line}");
    let length = headers.len();
    let commands = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\n\
         HPUB {subject} {length} {length}\r\n{headers}\r\nPING\r\n"
    );
    socket
        .get_mut()
        .write_all(commands.as_bytes())
        .await
        .expect("publish");
    line.clear();
    socket.read_line(&mut line).await.expect("PONG");
    assert_eq!(line, "PONG\r\n", "nats-server took the message");
}

#[tokio::test]
async fn orders_wait_in_the_queue_while_every_worker_is_gone_and_are_committed_when_one_returns() {
    let stack = Stack::new().await;
    let mut worker = stack.worker().await;
    let _front = stack.front().await;
    let before = stack.burst(50, 16, 9_500_000_000).await;
    assert_eq!(before.acknowledged().count(), 50, "{before:?}");
    worker.kill();

    let during = stack.burst(100, 16, 9_510_000_000).await;
    assert_eq!(
        during.pending.len(),
        100,
        "durable but unconfirmed: {during:?}"
    );

    let _back = stack.worker().await;
    stack.assert_guarantees(&before).await;
    stack.assert_guarantees(&during).await;
}

#[tokio::test]
async fn sigterm_to_a_front_finishes_what_it_holds_and_refuses_the_rest() {
    let stack = Stack::new().await;
    // Commits take a second, so every order below is still in flight when the signal comes.
    stack.slow_commits_by("1.0").await;
    let _worker = stack.worker().await;
    let mut front = stack.front().await;

    let in_flight = stack.burst(64, 64, 9_600_000_000);
    let stop = async {
        let all_published = eventually(WAIT, || async { stack.published().await == 64 });
        assert!(all_published.await, "all 64 orders published");
        front.terminate().expect("SIGTERM");
        // Logged once the listening socket is closed.
        front
            .wait_for_log(
                "stopping: finishing requests in flight",
                Duration::from_secs(20),
            )
            .await
            .expect("the front stops accepting");
        let late = stack.burst(1, 1, 9_610_000_000).await;
        (late, front.wait_exit(Duration::from_secs(20)).await)
    };
    let (held, (late, exit)) = tokio::join!(in_flight, stop);

    assert_eq!(
        held.acknowledged().count(),
        64,
        "every request in flight got its answer: {held:?}"
    );
    assert_eq!(
        late.refused, 1,
        "a new connection after SIGTERM is refused: {late:?}"
    );
    let exit = exit.expect("the front exits by itself");
    assert!(exit.success(), "clean exit: {exit:?}\n{}", front.log());
    stack.assert_guarantees(&held).await;
}

#[tokio::test]
async fn sigterm_to_a_worker_finishes_commits_confirms_and_acks_its_batches() {
    let stack = Stack::new().await;
    stack.slow_commits_by("0.1").await;
    let mut worker = stack.worker().await;
    let _front = stack.front().await;

    let load = stack.burst(300, 64, 9_700_000_000);
    let stop = async {
        let under_way = eventually(WAIT, || async { stack.row_count().await > 0 });
        assert!(under_way.await, "the first batch committed");
        worker.terminate().expect("SIGTERM");
        worker.wait_exit(Duration::from_secs(30)).await
    };
    let (tally, exit) = tokio::join!(load, stop);

    let exit = exit.expect("the worker exits by itself");
    assert!(exit.success(), "clean exit: {exit:?}\n{}", worker.log());
    assert_eq!(tally.acknowledged().count(), 300, "{tally:?}");
    // Graceful means nothing left half-done: no delivery of the stopped worker awaits an ack.
    let client = async_nats::connect(stack.nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("workers", "ORDERS")
        .await
        .expect("consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        info.num_ack_pending, 0,
        "the stopped worker left unacked orders"
    );
    // Nor a nak for what it committed, nor an ack for what it did not: the work queue holds
    // exactly the orders without a row (a nak would keep a committed one queued).
    let committed = stack.row_count().await;
    let balanced = eventually(WAIT, || async {
        let queued = finalprice_testkit::orders_in_stream(&stack.nats.url())
            .await
            .expect("the stream's orders");
        queued + committed == 300
    });
    assert!(
        balanced.await,
        "{committed} committed, the rest not all queued"
    );
    // And it confirmed what it committed: no other worker ran, so each row's shopper was told.
    assert_eq!(
        tally.accepted.len() as u64,
        committed,
        "every order it committed was answered accepted"
    );

    let _next = stack.worker().await;
    stack.assert_guarantees(&tally).await;
}

/// What one order left behind in a front and a worker that export their spans over OTLP.
struct ExportedOrder {
    spans: Vec<otlp::ReceivedSpan>,
    front_log: String,
    worker_log: String,
}

impl ExportedOrder {
    /// Runs one order, with a name and a phone the checks can look for, through a front and a
    /// worker started with `settings` besides the export's over `protocol`; stops both with
    /// SIGTERM, which flushes their exporters.
    async fn run(protocol: otlp::Protocol, settings: &[(&'static str, String)]) -> Self {
        let receiver = otlp::Receiver::start().await;
        let stack = Stack::new().await;
        let otel = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol.env_value().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ];
        let env = [&otel[..], settings].concat();
        let mut worker = stack.quiet_worker_with(&env).await;
        let mut front = stack.front_with(&env).await;
        // Probes and a scrape, as a kubelet and Prometheus send them: not the shoppers' traces.
        for probe in ["/healthz", "/readyz", "/metrics"] {
            let answer = stack
                .http
                .get(format!("{}{probe}", stack.address))
                .send()
                .await
                .expect("probe answered");
            assert_eq!(answer.status(), 200, "{probe}");
        }

        let answer = stack
            .http
            .post(format!("{}/orders", stack.address))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=%D0%A2%D0%B0%D0%B9%D0%BD%D0%B0+%D0%9B%D0%B8%D1%87%D0%BD%D0%B0%D1%8F&phone=8+999+555-01-99")
            .send()
            .await
            .expect("answer");
        // The client follows the 303 to the order's page.
        assert_eq!(answer.status(), 200);
        assert!(
            answer
                .text()
                .await
                .expect("page")
                .contains("Ваш заказ принят")
        );
        for service in [&mut front, &mut worker] {
            service.terminate().expect("SIGTERM");
            let exit = service
                .wait_exit(Duration::from_secs(30))
                .await
                .expect("exit");
            assert!(exit.success(), "{}", service.log());
        }
        let spans = receiver.spans();
        let other = spans.iter().find(|span| span.protocol != protocol);
        assert!(other.is_none(), "asked for {protocol:?}, got {other:#?}");
        Self {
            spans,
            front_log: front.log(),
            worker_log: worker.log(),
        }
    }

    /// The order's one trace, checked whole: the front's POST through the worker's commit and
    /// back to the front.
    fn order_trace(&self) -> Vec<&otlp::ReceivedSpan> {
        let spans = &self.spans;
        let process = spans
            .iter()
            .find(|span| span.service == "finalprice-worker" && span.name == "orders process")
            .unwrap_or_else(|| panic!("no worker span received: {spans:#?}"));
        let trace: Vec<_> = spans
            .iter()
            .filter(|span| span.trace_id == process.trace_id)
            .collect();
        for (service, name) in [
            ("finalprice-front", "POST /orders"),
            ("finalprice-front", "orders publish"),
            ("finalprice-worker", "orders commit"),
            ("finalprice-worker", "orders confirm"),
            ("finalprice-front", "orders confirmation received"),
        ] {
            assert!(
                trace
                    .iter()
                    .any(|span| span.service == service && span.name == name),
                "{service} {name} missing from the order's trace: {trace:#?}"
            );
        }
        trace
    }
}

/// The JSON log lines in `log`; anything else it holds is skipped.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A line's `trace_id` and `span_id`, when it has them.
fn trace_ids(line: &serde_json::Value) -> Option<(&str, &str)> {
    Some((line["trace_id"].as_str()?, line["span_id"].as_str()?))
}

#[tokio::test]
async fn logs_quieted_to_warn_still_export_the_whole_order_trace() {
    // The usual way to quiet logs during a sale must not switch tracing off. Over gRPC, the
    // protocol operators export with by default; the other test covers OTLP/HTTP.
    let order = ExportedOrder::run(otlp::Protocol::Grpc, &[("RUST_LOG", "warn".to_owned())]).await;
    order.order_trace();
    // Nor do the probes and the scrape before it export traces of their own.
    let probes: Vec<_> = order
        .spans
        .iter()
        .filter(|span| {
            ["/healthz", "/readyz", "/metrics"]
                .iter()
                .any(|path| span.name.ends_with(path))
        })
        .collect();
    assert!(probes.is_empty(), "{probes:#?}");
}

#[tokio::test]
async fn both_services_export_one_trace_that_their_json_logs_name_and_no_personal_data_anywhere() {
    let order = ExportedOrder::run(
        otlp::Protocol::HttpProtobuf,
        &[
            // Every log line the services can write, for the personal-data check below.
            ("RUST_LOG", "debug".to_owned()),
            ("FINALPRICE_LOG__FORMAT", "json".to_owned()),
        ],
    )
    .await;
    let trace = order.order_trace();
    // Each span says which release made it; the workspace has one version.
    for span in &trace {
        assert_eq!(span.version, env!("CARGO_PKG_VERSION"), "{span:#?}");
    }

    // From a log line to its trace: the line the front writes inside the order's server span
    // names that span.
    let front = json_lines(&order.front_log);
    let submitted = front
        .iter()
        .find(|line| line["message"] == "order submitted")
        .unwrap_or_else(|| panic!("no JSON \"order submitted\" line:\n{}", order.front_log));
    let server = trace
        .iter()
        .find(|span| span.name == "POST /orders")
        .expect("checked above");
    assert_eq!(
        trace_ids(submitted),
        Some((server.trace_id.as_str(), server.span_id.as_str())),
        "{submitted}"
    );
    // And every line that names a span, in either service, names one that was exported.
    let worker = json_lines(&order.worker_log);
    for (service, lines) in [("front", &front), ("worker", &worker)] {
        let named: Vec<_> = lines.iter().filter_map(trace_ids).collect();
        assert!(!named.is_empty(), "no {service} line names its span");
        for (trace_id, span_id) in named {
            assert!(
                order
                    .spans
                    .iter()
                    .any(|span| span.trace_id == trace_id && span.span_id == span_id),
                "the {service} logged span {span_id} of trace {trace_id}, never exported"
            );
        }
    }
    // A line outside any span names none.
    let listening = front
        .iter()
        .find(|line| line["message"] == "front listening")
        .expect("the start-up line");
    assert_eq!(trace_ids(listening), None, "{listening}");

    let logs = format!("{}{}", order.front_log, order.worker_log);
    assert!(
        logs.contains("order submitted"),
        "the debug logs were captured"
    );
    for secret in ["Тайна", "Личная", "9995550199", "555-01-99"] {
        assert!(
            !logs.contains(secret),
            "a log line carries personal data ({secret})"
        );
        for span in &order.spans {
            assert!(
                !span.text.contains(secret),
                "span {} carries personal data ({secret})",
                span.name
            );
        }
    }
}

#[tokio::test]
async fn status_and_export_tell_the_truth_about_a_live_stack() {
    let stack = Stack::new().await;
    let _front = stack.front().await;
    let waiting = stack.burst(3, 3, 9_800_000_000).await;
    assert_eq!(waiting.pending.len(), 3, "no worker yet: {waiting:?}");

    let before = stack.admin(&["status"]);
    assert!(before.contains("queue ORDERS:        3 orders"), "{before}");
    assert!(before.contains("none yet"), "{before}");
    assert!(before.contains("1 front(s), 0 worker(s)"), "{before}");

    let _worker = stack.worker().await;
    stack.assert_guarantees(&waiting).await;
    let after = stack.admin(&["status"]);
    assert!(after.contains("queue ORDERS:        0 orders"), "{after}");
    assert!(after.contains("pending 0 (lag), ack pending 0"), "{after}");
    assert!(after.contains("dead letters:        0"), "{after}");
    assert!(after.contains("1 front(s), 1 worker(s)"), "{after}");

    let csv = stack.admin(&["export"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,name,phone,created_at");
    assert_eq!(lines.len(), 4, "{csv}");
    for id in &waiting.pending {
        assert!(csv.contains(&id.to_string()), "{id} missing: {csv}");
    }
    for phone in 9_800_000_000u64..9_800_000_003 {
        assert!(
            csv.contains(&format!(",+7{phone},")),
            "phone {phone} missing: {csv}"
        );
    }
}

#[test]
fn every_operator_recipe_is_listed_with_its_help_line() {
    let root = repository();
    // The justfile passes its own just (./just may have installed it off PATH).
    let just = std::env::var("JUST").unwrap_or_else(|_| "just".into());
    let output = std::process::Command::new(just)
        .arg("--justfile")
        .arg(root.join("justfile"))
        .arg("--list")
        .output()
        .expect("just is installed (./just installs it)");
    let list = String::from_utf8(output.stdout).expect("UTF-8");
    for recipe in [
        "up",
        "down",
        "test",
        "migrate",
        "status",
        "scale",
        "logs",
        "dlq",
        "dlq-replay",
        "export",
        "traces",
        "lint",
        "dc-up",
        "dc-down",
        "dc-logs",
        "dc-status",
        "dc-lint",
        "dc-nats",
        "certs",
        "prometheus",
    ] {
        let line = list
            .lines()
            .find(|line| line.split_whitespace().next() == Some(recipe))
            .unwrap_or_else(|| panic!("no recipe {recipe} in:\n{list}"));
        assert!(line.contains("# "), "{recipe} has no help line: {line}");
    }
}

/// Docker Compose v2 as `scripts/tools docker-compose` finds or installs it (Docker's plugin, or
/// the pinned wheel in .tools/): the rules compose.yaml is read by today, not v1's.
fn compose() -> std::process::Command {
    let found = finalprice_testkit::tool("docker-compose").expect("Compose v2");
    // "docker compose" (the plugin) or one path.
    let mut words = found.split_whitespace();
    let mut command = std::process::Command::new(words.next().expect("a command"));
    command.args(words).current_dir(repository());
    command
}

/// The secrets compose.yaml requires (.env.example).
const COMPOSE_SECRETS: [&str; 5] = [
    "NATS_FRONT_PASSWORD",
    "NATS_WORKER_PASSWORD",
    "NATS_OPERATOR_PASSWORD",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
];

#[test]
fn docker_compose_accepts_compose_yaml() {
    let output = compose()
        .args(["-f", "compose.yaml", "config", "-q"])
        .envs(COMPOSE_SECRETS.map(|name| (name, "test")))
        .output()
        .expect("compose runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut unset = compose();
    unset.args(["-f", "compose.yaml", "config", "-q"]);
    for name in COMPOSE_SECRETS {
        unset.env_remove(name);
    }
    let unset = unset.output().expect("compose runs");
    assert!(
        !unset.status.success(),
        "secrets are required, never defaulted"
    );
}

/// What `just certs DIR` makes for the compose edge (deploy/nginx.conf): a certificate that
/// verifies against the CA beside it for localhost and for 127.0.0.1, for 30 days more at least,
/// with its own key; keys only their owner may read; run again, it keeps them, and `--force`
/// makes new ones.
#[test]
fn compose_edge_certificate_from_just_certs_verifies_against_its_ca_for_localhost_and_127_0_0_1() {
    use std::os::unix::fs::PermissionsExt;

    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("certs");
    let just = finalprice_testkit::tool("just").expect("just");
    let certs = |extra: &[&str]| {
        let output = std::process::Command::new(&just)
            .arg("--justfile")
            .arg(repository().join("justfile"))
            .arg("certs")
            .args(extra)
            .arg(&dir)
            .env_remove("FORCE")
            .output()
            .expect("just runs");
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{printed}{stderr}");
        printed
    };
    let openssl = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), said)
    };
    let path = |name: &str| dir.join(name).to_str().expect("UTF-8").to_owned();
    let (ca, certificate, key) = (path("ca.crt"), path("edge/tls.crt"), path("edge/tls.key"));

    let printed = certs(&[]);
    assert!(
        printed.contains(&format!("curl --cacert {ca} https://localhost:8443/")),
        "how to trust the CA is not printed:\n{printed}"
    );
    for check in [
        ["-verify_hostname", "localhost"],
        ["-verify_ip", "127.0.0.1"],
    ] {
        let (verified, said) =
            openssl(&["verify", "-CAfile", &ca, check[0], check[1], &certificate]);
        assert!(verified && said.contains(": OK"), "{check:?}: {said}");
    }
    let (verified, said) = openssl(&[
        "verify",
        "-CAfile",
        &ca,
        "-verify_hostname",
        "example.com",
        &certificate,
    ]);
    assert!(!verified, "verifies for a name it was not made for: {said}");
    let (read, names) = openssl(&[
        "x509",
        "-in",
        &certificate,
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        read && names.contains("DNS:localhost") && names.contains("IP Address:127.0.0.1"),
        "{names}"
    );
    let thirty_days = (30 * 24 * 3600).to_string();
    let (lasts, said) = openssl(&[
        "x509",
        "-in",
        &certificate,
        "-noout",
        "-checkend",
        &thirty_days,
    ]);
    assert!(lasts, "expires within 30 days: {said}");
    let (_, certificate_public_key) = openssl(&["x509", "-in", &certificate, "-noout", "-pubkey"]);
    let (_, key_public_key) = openssl(&["pkey", "-in", &key, "-pubout"]);
    assert!(
        certificate_public_key.contains("BEGIN PUBLIC KEY"),
        "{certificate_public_key}"
    );
    assert_eq!(
        certificate_public_key, key_public_key,
        "the key is not the certificate's"
    );
    for secret in [path("ca.key"), key] {
        let mode = std::fs::metadata(&secret)
            .expect("the key is there")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} is {:o}", mode & 0o777);
    }

    let made = std::fs::read(&certificate).expect("the certificate");
    certs(&[]);
    assert_eq!(
        std::fs::read(&certificate).expect("the certificate"),
        made,
        "not kept"
    );
    certs(&["--force"]);
    assert_ne!(
        std::fs::read(&certificate).expect("the certificate"),
        made,
        "--force kept it"
    );
}

/// The `healthcheck` command of compose service `service`, aimed at `port` instead of the port
/// the service listens on in compose (the one its `address_variable` gives). The flow sequence
/// on its `test:` line is JSON.
fn compose_health_check(service: &str, address_variable: &str, port: u16) -> Vec<String> {
    let compose = std::fs::read_to_string(repository().join("compose.yaml")).expect("compose.yaml");
    let definition = compose
        .split(&format!("\n  {service}:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no service {service} in compose.yaml"));
    // The service ends where the next top-level entry under `services:` begins.
    let definition = definition
        .split("\n  ")
        .take_while(|line| line.starts_with(' ') || line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n  ");
    let value = |key: &str| {
        definition
            .lines()
            .find_map(|line| line.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("{service} has no {key}\n{definition}"))
            .trim()
    };
    let compose_port = value(&format!("{address_variable}:"))
        .rsplit(':')
        .next()
        .expect("host:port")
        .to_owned();
    let command: Vec<String> = serde_json::from_str(value("test:")).expect("a JSON-style list");
    assert_eq!(command[0], "CMD", "{command:?}");
    assert!(
        command.iter().any(|part| part.contains(&compose_port)),
        "{service}'s health check does not probe the port it listens on ({compose_port}): {command:?}"
    );
    command[1..]
        .iter()
        .map(|part| part.replace(&compose_port, &port.to_string()))
        .collect()
}

/// Runs a compose health check command as Docker would, on this host, within compose's
/// `timeout` (3 s): a check that hangs is a failed one.
fn healthy(command: &[String]) -> bool {
    let mut check = std::process::Command::new(&command[0])
        .args(&command[1..])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the health check runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(status) = check.try_wait().expect("the health check runs") {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = check.kill();
    let _ = check.wait();
    false
}

#[tokio::test]
async fn the_compose_health_checks_pass_on_a_live_front_and_worker_and_fail_without_them() {
    let stack = Stack::new().await;
    let worker_port = free_port().expect("a free port");
    let front_check = compose_health_check("front", "FINALPRICE_HTTP__ADDR", stack.port);
    let worker_check =
        compose_health_check("worker", "FINALPRICE_WORKER__METRICS_ADDR", worker_port);
    assert!(
        !healthy(&front_check),
        "nothing listens yet: {front_check:?}"
    );
    assert!(
        !healthy(&worker_check),
        "nothing listens yet: {worker_check:?}"
    );

    let _worker = stack
        .worker_with(&[(
            "FINALPRICE_WORKER__METRICS_ADDR",
            format!("127.0.0.1:{worker_port}"),
        )])
        .await;
    let _front = stack.front().await;
    assert!(healthy(&front_check), "{front_check:?}");
    assert!(healthy(&worker_check), "{worker_check:?}");
}

/// The number that follows the first `label` in the load tool's report.
fn number_after<T: std::str::FromStr>(text: &str, label: &str) -> Option<T> {
    text.split(label)
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn the_load_tool_reports_truthfully_on_a_small_run() {
    let stack = Stack::new().await;
    let worker_metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let _worker = stack
        .worker_with(&[("FINALPRICE_WORKER__METRICS_ADDR", worker_metrics.clone())])
        .await;
    // Its metrics on an admin listener, as each of `just up-cluster`'s fronts has them.
    let front_metrics = format!("127.0.0.1:{}", free_port().expect("a free port"));
    let _front = stack
        .front_with(&[("FINALPRICE_HTTP__ADMIN_ADDR", front_metrics.clone())])
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("load-report.svg");

    let output =
        std::process::Command::new(finalprice_testkit::binary("finalprice-load").expect("built"))
            .args([
                "--url",
                &stack.address,
                "--connections",
                "16",
                "--requests",
                "300",
                "--hold",
                "1",
                "--front-metrics",
                &front_metrics,
                "--worker-metrics",
                &worker_metrics,
            ])
            .args(["--report", report.to_str().expect("UTF-8 path")])
            .env("DATABASE_URL", &stack.db_url)
            .output()
            .expect("finalprice-load runs");
    let text = String::from_utf8_lossy(&output.stdout);

    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("300 JSON posts over 16 connections"),
        "{text}"
    );
    assert!(
        text.contains("0 confirmed but missing (must be 0)"),
        "{text}"
    );
    assert!(text.contains("0 stored twice (must be 0)"), "{text}");
    assert!(text.contains("latency ms: p50"), "{text}");
    // The front's own figures come from its /metrics (the shoppers' port has none here); the
    // hold kept every connection open.
    assert!(text.contains("front: RSS "), "{text}");
    assert!(text.contains(" ms per 1,000 confirmed orders"), "{text}");
    // So do the worker's, and the generator reports what it cost the machine itself.
    assert!(text.contains("\nworker: RSS "), "{text}");
    // Only that the line is there and holds a number: CPU time counts in 10 ms ticks, and a
    // run this small may honestly read 0.
    number_after::<f64>(&text, "load generator: CPU ").expect("a load generator line");
    assert!(
        text.contains("held: 16 of 16 connections still open after a 1 s hold (each idle at most "),
        "{text}"
    );
    assert!(
        text.contains("MiB at the peak since the load ended"),
        "{text}"
    );
    // Its counts against the database's own.
    let confirmed: u64 = number_after(&text, "orders/s (").expect("a confirmed line");
    let pending: u64 = number_after(&text, "pending: ").expect("a pending count");
    let confirmed_rows: u64 = number_after(&text, "database: ").expect("a database line");
    assert!(confirmed > 0, "{text}");
    assert_eq!(confirmed + pending, 300, "every post answered: {text}");
    assert_eq!(confirmed_rows, confirmed, "{text}");
    let rows_now = stack.row_count().await;
    assert!(rows_now >= confirmed, "{rows_now} rows: {text}");
    assert!(
        eventually(WAIT, || async { stack.row_count().await == 300 }).await,
        "all 300 acknowledged orders are rows in the end: {text}"
    );
    let svg = std::fs::read_to_string(&report).expect("the picture was written");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    assert!(
        svg.contains("Front RSS (MiB) over the run and the hold") && svg.ends_with("</svg>"),
        "{svg}"
    );
}

/// "Max open files" of process `pid`: (soft, hard), from /proc.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().expect("soft").to_owned(),
        values.next().expect("hard").to_owned(),
    )
}

#[tokio::test]
async fn a_front_started_with_an_ordinary_users_open_files_limit_raises_it_to_the_hard_one() {
    // An ordinary user's shell: soft limit 1,024, the hard one far higher. Each connection is a
    // file; a front left at 1,024 refuses shoppers long before its own bounds answer.
    let nats = NatsServer::start().expect("nats-server");
    let port = free_port().expect("a free port");
    let front = finalprice_testkit::binary("finalprice-front").expect("built");
    let mut child = finalprice_testkit::clean_command(std::path::Path::new("bash"))
        .arg("-c")
        .arg(r#"ulimit -Sn 1024 && exec "$0""#)
        .arg(&front)
        .env("NATS_URL", nats.url())
        .env("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the front starts");
    let listening = eventually(WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    let (soft, hard) = open_files_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();

    assert!(listening, "the front did not listen");
    let (_, our_hard) = open_files_limits(std::process::id());
    assert_eq!(hard, our_hard, "the hard limit is inherited as it was");
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
}

/// What Kubernetes puts in every pod's environment for Services named `finalprice-front`,
/// `finalprice-worker` and `finalprice` (`enableServiceLinks`, on by default).
fn kubernetes_service_links() -> Vec<(&'static str, String)> {
    [
        ("FINALPRICE_FRONT_SERVICE_HOST", "10.96.0.12"),
        ("FINALPRICE_FRONT_SERVICE_PORT", "8080"),
        ("FINALPRICE_FRONT_SERVICE_PORT_HTTP", "8080"),
        ("FINALPRICE_FRONT_PORT", "tcp://10.96.0.12:8080"),
        ("FINALPRICE_FRONT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("FINALPRICE_FRONT_PORT_8080_TCP_PROTO", "tcp"),
        ("FINALPRICE_FRONT_PORT_8080_TCP_PORT", "8080"),
        ("FINALPRICE_FRONT_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("FINALPRICE_WORKER_SERVICE_HOST", "10.96.0.14"),
        ("FINALPRICE_WORKER_SERVICE_PORT_METRICS", "9091"),
        ("FINALPRICE_WORKER_PORT_9091_TCP_ADDR", "10.96.0.14"),
        ("FINALPRICE_SERVICE_HOST", "10.96.0.13"),
        ("FINALPRICE_PORT", "tcp://10.96.0.13:80"),
    ]
    .into_iter()
    .map(|(key, value)| (key, value.to_owned()))
    .collect()
}

#[tokio::test]
async fn both_services_start_beside_the_variables_of_kubernetes_service_links() {
    let stack = Stack::new().await;
    let links = kubernetes_service_links();
    let _worker = stack.quiet_worker_with(&links).await;
    let _front = stack.front_with(&links).await;
    let tally = load::burst(stack.target(), 5, 5, 7_000_000_000).await;
    assert_eq!(tally.accepted.len(), 5, "every order accepted");
}
