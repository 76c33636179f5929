//! The NATS users of `nats/nats-server-auth.conf` as shipped: a real front and worker, each with
//! its own login, take an order end to end and answer the operator's `status`; and with those
//! logins in hand, nats-server refuses what each role must not do. Every refusal is observed as
//! the server's "Permissions Violation" error naming the subject, never inferred from silence,
//! and where a role may do the thing refused to another, that role is shown doing it.

use std::future::IntoFuture as _;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, ConnectOptions, Event};
use finalprice_shared::messages::order_subject;
use finalprice_shared::nats::workers_consumer_config;
use finalprice_testkit::{
    Backend, NatsServer, Service, TestDb, binary, clean_command, free_port, test_password,
};
use tokio::sync::mpsc;

/// How long a refusal may take to reach the client: it follows the refused command at once.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// A refused JetStream API call gets no answer (the request is dropped, not failed); the call
/// is given up after this, once its refusal has been seen.
const CALL_GIVEN_UP_AFTER: Duration = Duration::from_secs(1);

/// A client logged in as one of the shipped users, with the errors nats-server sends it.
struct Login {
    user: &'static str,
    client: Client,
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Login {
    /// Logs in as `user` with the harness's password, taking replies on `_INBOX_<user>` as the
    /// services do (`finalprice_shared::nats::inbox_prefix`).
    async fn new(nats: &NatsServer, user: &'static str) -> Self {
        let (sender, errors) = mpsc::unbounded_channel();
        let client = ConnectOptions::with_user_and_password(user.to_owned(), test_password(user))
            .custom_inbox_prefix(format!("_INBOX_{user}"))
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        let _ = sender.send(error.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap_or_else(|error| panic!("{user} logs in: {error}"));
        let js = jetstream::ContextBuilder::new()
            .timeout(CALL_GIVEN_UP_AFTER)
            .build(client.clone());
        Self {
            user,
            client,
            js,
            errors,
        }
    }

    /// Waits for nats-server's "Permissions Violation for {what} to "{subject}"" error.
    async fn refused(&mut self, what: &str, subject: &str) {
        let expected = format!("Permissions Violation for {what} to \"{subject}\"");
        let found = tokio::time::timeout(REFUSED_WITHIN, async {
            while let Some(error) = self.errors.recv().await {
                if error.contains(&expected) {
                    return;
                }
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "{}: no {expected:?} within {REFUSED_WITHIN:?}",
            self.user
        );
    }

    /// Runs a JetStream call that must be refused: sees the refusal of `subject`, and that the
    /// call did not succeed.
    async fn refused_call<T, E: std::fmt::Debug>(
        &mut self,
        subject: &str,
        call: impl Future<Output = Result<T, E>>,
    ) {
        let call = tokio::time::timeout(CALL_GIVEN_UP_AFTER * 2, call);
        let (outcome, ()) = tokio::join!(call, self.refused("Publish", subject));
        assert!(
            !matches!(outcome, Ok(Ok(_))),
            "{}: {subject} refused, yet the call succeeded",
            self.user
        );
    }

    /// Asserts that no permission error came in since the last look: what was done was allowed.
    async fn nothing_refused(&mut self) {
        // A round trip: every error about what was sent before it has arrived after it.
        self.client.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut refused = Vec::new();
        while let Ok(error) = self.errors.try_recv() {
            refused.push(error);
        }
        assert!(refused.is_empty(), "{}: refused {refused:?}", self.user);
    }
}

/// `finalprice-worker <args>` logged in as `user`; its exit success and what it printed.
fn operator_command(
    nats: &NatsServer,
    db: &TestDb,
    user: &str,
    args: &[&str],
) -> (bool, String, String) {
    let output = clean_command(&binary("finalprice-worker").expect("built"))
        .args(args)
        .env("NATS_URL", nats.url())
        .env("DATABASE_URL", db.url())
        .env("FINALPRICE_NATS__USER", user)
        .env("FINALPRICE_NATS__PASSWORD", test_password(user))
        .env("FINALPRICE_NATS__REQUEST_TIMEOUT", "1s")
        .output()
        .expect("finalprice-worker runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// What a service logs when nats-server refuses it something (the NATS event at debug level,
/// see `finalprice_shared::nats::connect`).
const VIOLATION: &str = "Permissions Violation";

/// Each service logs the NATS events, refusals among them.
const SERVICE_LOG: &str = "info,finalprice_shared::nats=debug";

#[tokio::test]
async fn each_nats_user_does_its_part_and_nothing_else() {
    let nats = NatsServer::start_with_users().expect("nats-server with the shipped users");
    let db = TestDb::new(Backend::Sqlite).await.expect("database");
    let port = free_port().expect("a port");
    let common = |user: &str| {
        vec![
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url().to_owned()),
            ("FINALPRICE_NATS__USER", user.to_owned()),
            ("FINALPRICE_NATS__PASSWORD", test_password(user)),
            ("RUST_LOG", SERVICE_LOG.to_owned()),
        ]
    };
    let mut worker_env = common("worker");
    worker_env.push((
        "FINALPRICE_WORKER__METRICS_ADDR",
        format!("127.0.0.1:{}", free_port().expect("a port")),
    ));
    let mut worker = Service::start("finalprice-worker", &worker_env).expect("worker");
    worker
        .wait_for_log("worker pulling orders", Duration::from_secs(20))
        .await
        .expect("the worker sets up the streams and its consumer as `worker`");
    let mut front_env = common("front");
    front_env.push(("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}")));
    let front = Service::start("finalprice-front", &front_env).expect("front");
    let http = reqwest::Client::new();
    let address = format!("http://127.0.0.1:{port}");
    front
        .wait_ready(&address, Duration::from_secs(20))
        .await
        .expect("the front is ready as `front`");

    // An order end to end: published as `front`, committed and confirmed on the front's inbox
    // as `worker`; then its state asked of the workers.
    let answer = http
        .post(format!("{address}/orders"))
        .header("accept", "application/json")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Anna&phone=89991234567")
        .send()
        .await
        .expect("order answered");
    assert_eq!(answer.status(), 201, "accepted end to end");
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().expect("an id").to_owned();
    let state = http
        .get(format!("{address}/orders/{id}"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("status answered");
    assert_eq!(
        state.status(),
        200,
        "the workers answer the front's status request"
    );

    // The operator's commands.
    let (ok, status, stderr) = operator_command(&nats, &db, "operator", &["status"]);
    assert!(ok, "status as `operator`: {stderr}");
    assert!(
        status.contains("finalprice-front") && status.contains("finalprice-worker"),
        "both answer the operator's ping:\n{status}"
    );
    let (ok, _, stderr) = operator_command(&nats, &db, "operator", &["dlq-list"]);
    assert!(ok, "dlq-list as `operator`: {stderr}");

    let mut as_front = Login::new(&nats, "front").await;
    let mut as_worker = Login::new(&nats, "worker").await;
    let mut as_operator = Login::new(&nats, "operator").await;

    // Nobody but JetStream reads the order subjects.
    let _spy = as_front.client.subscribe("orders.>").await.expect("sent");
    as_front.refused("Subscription", "orders.>").await;
    let _spy = as_worker.client.subscribe("orders.>").await.expect("sent");
    as_worker.refused("Subscription", "orders.>").await;

    // A front reads only its own user's inboxes; the workers' and the NATS default are refused.
    let _own = as_front
        .client
        .subscribe("_INBOX_front.mine.*")
        .await
        .expect("sent");
    as_front.nothing_refused().await;
    let _spy = as_front
        .client
        .subscribe("_INBOX_worker.>")
        .await
        .expect("sent");
    as_front.refused("Subscription", "_INBOX_worker.>").await;
    let _spy = as_front.client.subscribe("_INBOX.>").await.expect("sent");
    as_front.refused("Subscription", "_INBOX.>").await;

    // A front cannot forge a confirmation to a front's inbox; a worker can, and it arrives.
    let victim = "_INBOX_front.victim.batch";
    let mut inbox = as_front
        .client
        .subscribe("_INBOX_front.victim.*")
        .await
        .expect("subscribe");
    as_front.nothing_refused().await;
    as_front
        .client
        .publish(victim, "[]".into())
        .await
        .expect("sent");
    as_front.refused("Publish", victim).await;
    as_worker
        .client
        .publish(victim, "[]".into())
        .await
        .expect("sent");
    as_worker.nothing_refused().await;
    let delivered = tokio::time::timeout(REFUSED_WITHIN, futures_util::StreamExt::next(&mut inbox))
        .await
        .expect("the worker's confirmation arrives")
        .expect("a message");
    assert_eq!(delivered.subject.as_str(), victim);

    // A worker never publishes an order; a front does (and it stays queued: the worker is
    // stopped first, so the stream holds a message for the reads below).
    worker.terminate().expect("SIGTERM");
    worker
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the worker stops");
    let queued = finalprice_testkit::order("89991234568");
    let subject = order_subject(queued.id);
    let payload = finalprice_shared::messages::encode(&queued);
    let js = as_worker.js.clone();
    as_worker
        .refused_call(&subject, async {
            js.publish(subject.clone(), payload.clone()).await?.await
        })
        .await;
    let ack = as_front
        .js
        .publish(subject.clone(), payload.clone())
        .await
        .expect("sent")
        .await
        .expect("a front publishes orders");
    as_front.nothing_refused().await;

    // A front sees the stream's state, never its messages: no direct get, no get at the
    // leader, no consumer of its own. The worker and the operator read the same message.
    let mut orders = as_front
        .js
        .get_stream("ORDERS")
        .await
        .expect("a front reads the stream's info");
    assert_eq!(orders.info().await.expect("info").state.messages, 1);
    as_front.nothing_refused().await;
    let front_orders = orders.clone();
    as_front
        .refused_call(
            "$JS.API.DIRECT.GET.ORDERS",
            front_orders.direct_get(ack.sequence),
        )
        .await;
    let last_for = format!("$JS.API.DIRECT.GET.ORDERS.{subject}");
    as_front
        .refused_call(
            &last_for,
            front_orders.direct_get_last_for_subject(subject.clone()),
        )
        .await;
    as_front
        .refused_call(
            "$JS.API.STREAM.MSG.GET.ORDERS",
            front_orders.get_raw_message(ack.sequence),
        )
        .await;
    let spy = consumer::pull::Config {
        durable_name: Some("spy".into()),
        ..Default::default()
    };
    as_front
        .refused_call(
            "$JS.API.CONSUMER.CREATE.ORDERS.spy",
            front_orders.create_consumer(spy),
        )
        .await;
    let workers = workers_consumer_config(
        &finalprice_shared::config::Config::from_figment(
            &finalprice_shared::config::Config::figment(None),
        )
        .expect("defaults")
        .nats,
    )
    .expect("definition");
    as_front
        .refused_call(
            "$JS.API.CONSUMER.CREATE.ORDERS.workers",
            front_orders.create_consumer(workers.clone()),
        )
        .await;
    let as_worker_orders = as_worker.js.get_stream("ORDERS").await.expect("stream");
    let read = as_worker_orders
        .direct_get_last_for_subject(subject.clone())
        .await
        .expect("a worker reads a queued order (status answers)");
    assert_eq!(read.payload, payload);
    as_worker_orders
        .create_consumer(workers)
        .await
        .expect("a worker binds the workers' consumer");
    as_worker.nothing_refused().await;
    let as_operator_orders = as_operator.js.get_stream("ORDERS").await.expect("stream");
    let read = as_operator_orders
        .get_raw_message(ack.sequence)
        .await
        .expect("an operator reads a queued order (runbook)");
    assert_eq!(read.payload, payload);
    as_operator.nothing_refused().await;

    // Nor does a front change, purge or delete the stream; a worker cannot delete it either.
    let mut smaller = orders.cached_info().config.clone();
    smaller.max_messages = 1;
    let (front_js, worker_js) = (as_front.js.clone(), as_worker.js.clone());
    as_front
        .refused_call(
            "$JS.API.STREAM.UPDATE.ORDERS",
            front_js.update_stream(smaller),
        )
        .await;
    as_front
        .refused_call(
            "$JS.API.STREAM.PURGE.ORDERS",
            front_orders.purge().into_future(),
        )
        .await;
    as_front
        .refused_call(
            "$JS.API.STREAM.DELETE.ORDERS",
            front_js.delete_stream("ORDERS"),
        )
        .await;
    as_worker
        .refused_call(
            "$JS.API.STREAM.DELETE.ORDERS",
            worker_js.delete_stream("ORDERS"),
        )
        .await;
    as_worker
        .refused_call(
            "$JS.API.STREAM.PURGE.ORDERS",
            as_worker_orders.purge().into_future(),
        )
        .await;
    let info: stream::Info = orders.info().await.expect("info").clone();
    assert_eq!(info.state.messages, 1, "the queued order is still there");
    assert_eq!(
        info.config.max_messages, 1_000_000,
        "the stream is unchanged"
    );

    // Everything the services did, they were allowed to.
    for (name, log) in [("front", front.log()), ("worker", worker.log())] {
        assert!(
            !log.contains(VIOLATION),
            "the {name} was refused something:\n{log}"
        );
    }
}
