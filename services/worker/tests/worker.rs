//! The worker against real databases and a real nats-server: the batch commit, the status
//! lookup, rejection of an order that can never be written, and the `migrate` command.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use finalprice_shared::messages::{
    self, AddressedConfirmation, Confirmation, DEAD_LETTER_ORDER_ID_HEADER,
    DEAD_LETTER_REASON_HEADER, ENVELOPE_HEADER, EnvelopeBuilder, NewOrder, OrderState, Outcome,
    REPLY_TO_HEADER, REPLY_TOKEN_HEADER, confirmations_subject, order_subject,
};
use finalprice_shared::nats;
use finalprice_testkit::{Backend, NatsServer, TestDb, eventually, order};
use finalprice_worker::Application;
use finalprice_worker::dead_letters;
use finalprice_worker::process::commit_orders;
use finalprice_worker::status::lookup;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn a_batch_commits_once_and_reports_what_was_new(backend: Backend) {
    let db = TestDb::new(backend).await.expect("database");
    let connection = db.connect().await.expect("connect");
    let batch: Vec<NewOrder> = (0..50).map(|i| order(&format!("+7999{i:07}"))).collect();

    let first = commit_orders(&connection, &batch).await.expect("commit");
    assert_eq!(first.len(), 50, "{backend:?}: every order is new");

    // A redelivery of part of the batch, plus one order met twice in the same batch.
    let fresh = order("89990000001");
    let mut again = batch[..10].to_vec();
    again.push(fresh.clone());
    again.push(fresh.clone());
    let second = commit_orders(&connection, &again).await.expect("commit");
    assert_eq!(second.len(), 1, "{backend:?}: only the fresh order is new");
    assert!(second.contains(&fresh.id));

    let stored = count_orders(&connection).await;
    assert_eq!(stored, 51, "{backend:?}: one row per order");

    // Each column lands where it belongs, the name's Cyrillic intact, the time to the microsecond.
    use sea_orm::EntityTrait;
    for sent in [&batch[0], &batch[49], &fresh] {
        let row = finalprice_db::entity::orders::Entity::find_by_id(sent.id)
            .one(&connection)
            .await
            .expect("read back")
            .expect("the row");
        assert_eq!(row.name, sent.name.as_ref(), "{backend:?}");
        assert_eq!(row.phone, sent.phone.as_ref(), "{backend:?}");
        assert_eq!(
            row.created_at.timestamp_micros(),
            sent.created_at.timestamp_micros(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_batch_commits_once_and_reports_what_was_new_postgres() {
    a_batch_commits_once_and_reports_what_was_new(Backend::Postgres).await;
}

#[tokio::test]
async fn a_batch_commits_once_and_reports_what_was_new_sqlite() {
    a_batch_commits_once_and_reports_what_was_new(Backend::Sqlite).await;
}

/// Each backend's refusal that only its error code tells (no sqlx kind) is read by that
/// backend's rules: SQLite's codes are decimal numbers, PostgreSQL's SQLSTATEs are not, and
/// read by the other's rules each would be taken for an outage.
#[tokio::test]
async fn a_refusal_told_only_by_its_code_is_read_by_the_backend_that_raised_it() {
    use finalprice_worker::error::{CommitFailure, classify};
    use sea_orm::ConnectionTrait;
    let refusals = [
        // SQLITE_CONSTRAINT_DATATYPE (3091).
        (
            Backend::Sqlite,
            "CREATE TABLE probe (n INTEGER) STRICT",
            "INSERT INTO probe VALUES ('not a number')",
        ),
        // 22001, string data right truncation.
        (
            Backend::Postgres,
            "CREATE TABLE probe (n varchar(1))",
            "INSERT INTO probe VALUES ('too long')",
        ),
    ];
    for (backend, create, insert) in refusals {
        let db = TestDb::new(backend).await.expect("database");
        let connection = db.connect().await.expect("connect");
        connection.execute_unprepared(create).await.expect("create");
        let error = connection
            .execute_unprepared(insert)
            .await
            .expect_err("refused");
        assert_eq!(
            classify(&error),
            CommitFailure::Permanent,
            "{backend:?}: {error}"
        );
    }
}

async fn count_orders(db: &sea_orm::DatabaseConnection) -> u64 {
    use sea_orm::{EntityTrait, PaginatorTrait};
    finalprice_db::entity::orders::Entity::find()
        .count(db)
        .await
        .expect("count")
}

/// What the tests below start from: a fresh nats-server and database, a worker's settings for
/// them, and a NATS client with its JetStream context made as the worker makes them.
struct Harness {
    _server: NatsServer,
    db: TestDb,
    config: finalprice_shared::config::Config,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

impl Harness {
    /// Puts `order` into the queue as the front does, and waits for its PubAck.
    async fn enqueue(&self, order: &NewOrder) {
        self.js
            .publish(order_subject(order.id), messages::encode(order))
            .await
            .expect("publish")
            .await
            .expect("PubAck");
    }
}

async fn harness(backend: Backend) -> Harness {
    let server = NatsServer::start().expect("nats-server");
    let db = TestDb::new(backend).await.expect("database");
    let config = finalprice_testkit::config(&server, &db);
    let client = nats::connect(&config.nats, "test").await.expect("nats");
    let js = nats::jetstream(client.clone(), &config.nats);
    Harness {
        _server: server,
        db,
        config,
        client,
        js,
    }
}

#[tokio::test]
async fn status_is_accepted_pending_or_unknown() {
    let h = harness(Backend::Postgres).await;
    let stream = nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let connection = h.db.connect().await.expect("connect");

    let committed = order("89991234567");
    commit_orders(&connection, std::slice::from_ref(&committed))
        .await
        .expect("commit");
    let queued = order("89991234568");
    h.enqueue(&queued).await;

    let accepted = lookup(&connection, &stream, committed.id, None)
        .await
        .expect("lookup");
    assert_eq!(accepted.state, OrderState::Accepted);
    assert_eq!(accepted.phone_masked.as_deref(), Some("+7********67"));
    let pending = lookup(&connection, &stream, queued.id, None)
        .await
        .expect("lookup");
    assert_eq!(pending.state, OrderState::Pending);
    let unknown = lookup(&connection, &stream, Uuid::now_v7(), None)
        .await
        .expect("lookup");
    assert_eq!(unknown.state, OrderState::Unknown);
}

/// A statement that waits on a lock (or a database gone silent) is given up after
/// `worker.commit_timeout` and the batch retried, instead of holding one of the worker's
/// batches for as long as the wait lasts; once the lock goes, the order is committed once.
#[tokio::test]
async fn a_commit_that_gets_no_answer_is_given_up_and_retried() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let mut h = harness(Backend::Postgres).await;
    h.config.worker.commit_timeout = Duration::from_millis(200);
    h.config.worker.retry_delay = Duration::from_millis(50);
    let connection = h.db.connect().await.expect("connect");
    let lock = connection.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");

    let worker = Application::build(&h.config).await.expect("worker");
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let queued = order("89991234569");
    h.enqueue(&queued).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            stats.snapshot().batches_failed >= 2
        })
        .await,
        "given up and tried again while the lock is held: {:?}",
        stats.snapshot()
    );
    assert_eq!(stats.snapshot().orders_inserted, 0);
    lock.rollback().await.expect("unlock");
    assert!(
        eventually(Duration::from_secs(10), || async {
            count_orders(&connection).await == 1
        })
        .await,
        "committed once the lock is gone"
    );

    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
    assert_eq!(count_orders(&connection).await, 1);
    assert_eq!(stats.snapshot().orders_rejected, 0, "an outage, not poison");
}

/// Makes a replica that lags behind the only one to answer `stream`'s direct gets, as a
/// follower catching up would be for the messages it lacks: a real mirror (`mirror_direct`) that
/// holds only a probe on `probe_subject`, with the stream's own direct gets turned off. Returns
/// once a direct get for `held_subject`, which the stream holds, is answered "not found".
async fn answered_by_a_replica_behind(
    js: &async_nats::jetstream::Context,
    stream: &mut async_nats::jetstream::stream::Stream,
    probe_subject: &str,
    held_subject: &str,
) {
    use async_nats::jetstream::stream;
    let mut own = stream.info().await.expect("stream info").config.clone();
    js.create_stream(stream::Config {
        name: format!("{}_BEHIND", own.name),
        mirror: Some(stream::Source {
            name: own.name.clone(),
            filter_subject: Some(probe_subject.to_owned()),
            ..Default::default()
        }),
        mirror_direct: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .expect("the mirror");
    // A mirror answers for its stream only once it has copied a message.
    js.publish(probe_subject.to_owned(), "probe".into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    own.allow_direct = false;
    js.update_stream(own).await.expect("direct gets off");

    let not_found = eventually(Duration::from_secs(10), || async {
        let answer = stream.direct_get_last_for_subject(held_subject).await;
        answer.is_err_and(|error| error.kind() == stream::DirectGetErrorKind::NotFound)
    })
    .await;
    assert!(not_found, "the mirror never answered for the stream");
}

#[tokio::test]
async fn a_replica_that_lags_behind_cannot_make_a_queued_order_unknown() {
    let h = harness(Backend::Sqlite).await;
    let mut orders = nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let connection = h.db.connect().await.expect("connect");

    let queued = order("89991234568");
    h.enqueue(&queued).await;
    // The probe is taken from the work queue by the mirror; no order is.
    answered_by_a_replica_behind(
        &h.js,
        &mut orders,
        "orders.mirror-probe",
        &order_subject(queued.id),
    )
    .await;

    let pending = lookup(&connection, &orders, queued.id, None)
        .await
        .expect("lookup");
    assert_eq!(pending.state, OrderState::Pending, "{pending:?}");
    assert_eq!(pending.phone_masked.as_deref(), Some("+7********68"));
    let unknown = lookup(&connection, &orders, Uuid::now_v7(), None)
        .await
        .expect("lookup");
    assert_eq!(unknown.state, OrderState::Unknown);
}

#[tokio::test]
async fn a_replica_that_lags_behind_cannot_hide_a_dead_letter() {
    let h = harness(Backend::Sqlite).await;
    let mut letters = nats::ensure_dead_letter_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");

    let id = Uuid::now_v7();
    let mut headers = HeaderMap::new();
    headers.insert(DEAD_LETTER_ORDER_ID_HEADER, id.to_string().as_str());
    headers.insert(DEAD_LETTER_REASON_HEADER, "a test letter");
    let subject = messages::dead_letter_subject(7);
    h.js.publish_with_headers(subject.clone(), headers, "{}".into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");
    answered_by_a_replica_behind(&h.js, &mut letters, "dlq.orders.probe", &subject).await;

    let listed = dead_letters::list(&mut letters).await.expect("list");
    let letter = listed
        .iter()
        .find(|letter| letter.order_id == Some(id))
        .unwrap_or_else(|| panic!("the letter is listed: {listed:?}"));
    assert_eq!(letter.reason, "a test letter");
}

async fn next(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .expect("a reply in time")
        .expect("a reply")
}

#[tokio::test]
async fn a_batch_answers_each_front_inbox_with_one_message_and_others_alone() {
    let h = harness(Backend::Sqlite).await;
    nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");

    // Two fronts' inboxes (numbered waiters that ask for gathering, as the front does) and a
    // tool's inbox that ends in digits but does not ask.
    let (front_a, front_b) = (h.client.new_inbox(), h.client.new_inbox());
    let tool = format!("{}.5", h.client.new_inbox());
    let mut replies_a = h
        .client
        .subscribe(format!("{front_a}.*"))
        .await
        .expect("sub");
    let mut replies_b = h
        .client
        .subscribe(format!("{front_b}.*"))
        .await
        .expect("sub");
    let mut replies_tool = h.client.subscribe(tool.clone()).await.expect("sub");
    let mut sent = Vec::new();
    for (reply_to, token, phone) in [
        (format!("{front_a}.1"), Some("1"), "+79990000001"),
        (format!("{front_b}.7"), Some("7"), "+79990000002"),
        (format!("{front_a}.2"), Some("2"), "+79990000003"),
        (tool.clone(), None, "+79990000004"),
    ] {
        let order = order(phone);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            order.id.to_string().as_str(),
        );
        headers.insert(REPLY_TO_HEADER, reply_to.as_str());
        if let Some(token) = token {
            headers.insert(REPLY_TOKEN_HEADER, token);
        }
        h.js.publish_with_headers(order_subject(order.id), headers, messages::encode(&order))
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        sent.push(order.id);
    }

    // Queued before the worker starts, so its first fetch takes all four as one batch.
    let worker = Application::build(&h.config).await.expect("worker");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let gathered = |message: &async_nats::Message| {
        let confirmations: Vec<AddressedConfirmation> =
            messages::decode(&message.payload).expect("gathered confirmations");
        confirmations
            .into_iter()
            .map(|c| {
                assert_eq!(c.confirmation.outcome, Outcome::Accepted);
                (c.token, c.confirmation.id)
            })
            .collect::<Vec<_>>()
    };

    let to_a = next(&mut replies_a).await;
    assert_eq!(to_a.subject.as_str(), confirmations_subject(&front_a));
    assert_eq!(gathered(&to_a), vec![(1, sent[0]), (2, sent[2])]);
    let to_b = next(&mut replies_b).await;
    assert_eq!(to_b.subject.as_str(), confirmations_subject(&front_b));
    assert_eq!(gathered(&to_b), vec![(7, sent[1])]);
    let to_tool = next(&mut replies_tool).await;
    let alone: Confirmation = messages::decode(&to_tool.payload).expect("a confirmation");
    assert_eq!((alone.id, alone.outcome), (sent[3], Outcome::Accepted));

    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
    // One message per inbox: nothing else arrived for either front.
    h.client.flush().await.expect("flush");
    for replies in [&mut replies_a, &mut replies_b] {
        replies.unsubscribe().await.expect("unsubscribe");
        assert!(replies.next().await.is_none(), "a second message");
    }
}

#[tokio::test]
async fn an_order_that_can_never_be_written_is_rejected_on_its_last_delivery_and_leaves_the_queue()
{
    let server = NatsServer::start().expect("nats-server");
    let db = TestDb::new(Backend::Sqlite).await.expect("database");
    let mut config = finalprice_testkit::config(&server, &db);
    config.worker.retry_delay = Duration::from_millis(20);
    config.worker.dead_letter_after = 3;
    let worker = Application::build(&config).await.expect("worker");
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));

    let client = nats::connect(&config.nats, "test").await.expect("nats");
    let js = nats::jetstream(client.clone(), &config.nats);
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    let id = Uuid::now_v7();
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.to_string().as_str());
    headers.insert(REPLY_TO_HEADER, inbox.as_str());
    // Right for this publish, wrong for the dead letter's: it must not be carried over.
    headers.insert("Nats-Expected-Stream", "ORDERS");
    // A name the front would refuse: the worker must not trust the queue.
    let payload = format!(
        r#"{{"id":"{id}","name":"<script>","phone":"+79991234567","created_at":"2026-11-27T00:00:00Z"}}"#
    );
    js.publish_with_headers(order_subject(id), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");

    let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
        .await
        .expect("a reply in time")
        .expect("a reply");
    let confirmation: Confirmation = messages::decode(&reply.payload).expect("confirmation");
    assert_eq!(confirmation.id, id);
    assert!(
        matches!(confirmation.outcome, Outcome::Rejected { .. }),
        "{confirmation:?}"
    );
    assert_eq!(stats.snapshot().orders_rejected, 1);
    assert_eq!(stats.snapshot().orders_inserted, 0);
    let (_, mut letters) = dead_letters::open(&config.nats)
        .await
        .expect("dead letters");
    let listed = dead_letters::list(&mut letters).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].order_id, Some(id));
    assert_eq!(
        listed[0].deliveries, 3,
        "retried like a refused order before it is given up"
    );

    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
    let mut stream = js.get_stream("ORDERS").await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        0,
        "terminated, not retried"
    );
}

fn worker_binary() -> Command {
    finalprice_testkit::clean_command(std::path::Path::new(env!(
        "CARGO_BIN_EXE_finalprice-worker"
    )))
}

#[tokio::test]
async fn migrate_applies_the_schema_on_both_backends_and_may_run_again() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::empty(backend).await.expect("database");
        for run in 1..=2 {
            let output = worker_binary()
                .arg("migrate")
                .env("DATABASE_URL", db.url())
                .output()
                .expect("finalprice-worker runs");
            assert!(
                output.status.success(),
                "{backend:?} run {run}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let connection = db.connect().await.expect("connect");
        assert_eq!(
            count_orders(&connection).await,
            0,
            "{backend:?}: the orders table exists"
        );
    }
}

#[test]
fn a_bad_setting_stops_the_worker_with_its_name() {
    let output = worker_binary()
        .arg("migrate")
        .env("FINALPRICE_WORKER__BATCH_SIZE", "0")
        .output()
        .expect("finalprice-worker runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("worker.batch_size"), "{stderr}");
}

#[test]
fn a_database_url_it_cannot_parse_is_logged_without_its_password() {
    let output = worker_binary()
        .arg("migrate")
        .env(
            "DATABASE_URL",
            "postgres://finalprice:s3cret-in-url@127.0.0.1:port/finalprice",
        )
        .output()
        .expect("finalprice-worker runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("postgres://finalprice:***@127.0.0.1:port/finalprice"),
        "the URL is named: {stderr}"
    );
    assert!(!stderr.contains("s3cret-in-url"), "{stderr}");
}

#[tokio::test]
async fn the_database_password_can_come_from_a_file() {
    let db = TestDb::empty(Backend::Postgres).await.expect("database");
    // postgres://user:password@host/db → postgres://user@host/db, password in a file.
    let (scheme_user, rest) = db
        .url()
        .split_once(':')
        .and_then(|(scheme, rest)| {
            let (user, after) = rest.trim_start_matches("//").split_once(':')?;
            Some((format!("{scheme}://{user}"), after.to_owned()))
        })
        .expect("a URL with a password");
    let (password, host_db) = rest.split_once('@').expect("user:password@host");
    let dir = tempfile::tempdir().expect("temp dir");
    let migrate_with = |secret: &str| {
        let file = dir.path().join("pgpassword");
        std::fs::write(&file, format!("{secret}\n")).expect("write the secret");
        worker_binary()
            .arg("migrate")
            .env("DATABASE_URL", format!("{scheme_user}@{host_db}"))
            .env("FINALPRICE_DB__PASSWORD_FILE", &file)
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .output()
            .expect("finalprice-worker runs")
    };

    // First a wrong one, to show the server asks and the file is what answers.
    let refused = migrate_with("not-the-password");
    assert!(
        !refused.status.success(),
        "a wrong password in the file must be refused; is the test server trusting every login?"
    );
    let output = migrate_with(password);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// An envelope as a front publishes it: each `(order, token)` answered on `<inbox>.<token>`,
/// the inbox named once. Returns the PubAck's sequence.
async fn enqueue_envelope(h: &Harness, inbox: &str, orders: &[(Bytes, u64)]) -> u64 {
    let mut builder = EnvelopeBuilder::default();
    for (order, token) in orders {
        builder.push(order, *token, None);
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        Uuid::now_v7().to_string().as_str(),
    );
    headers.insert(REPLY_TO_HEADER, inbox);
    headers.insert(ENVELOPE_HEADER, orders.len().to_string().as_str());
    let first: serde_json::Value = serde_json::from_slice(&orders[0].0).expect("JSON");
    let first = Uuid::parse_str(first["id"].as_str().expect("an id")).expect("a UUID");
    h.js.publish_with_headers(order_subject(first), headers, builder.finish())
        .await
        .expect("publish")
        .await
        .expect("PubAck")
        .sequence
}

/// What arrives on a front's inbox until `until` says it has all it waits for: accepted
/// tokens (gathered) and rejected ones (alone).
async fn answers(
    replies: &mut async_nats::Subscriber,
    until: impl Fn(&HashSet<u64>, &HashSet<u64>) -> bool,
) -> (HashSet<u64>, HashSet<u64>) {
    let (mut accepted, mut rejected) = (HashSet::new(), HashSet::new());
    while !until(&accepted, &rejected) {
        let message = next(replies).await;
        if message.subject.ends_with(".batch") {
            let gathered: Vec<AddressedConfirmation> =
                messages::decode(&message.payload).expect("gathered confirmations");
            for answer in gathered {
                assert_eq!(answer.confirmation.outcome, Outcome::Accepted);
                accepted.insert(answer.token);
            }
        } else {
            let alone: Confirmation = messages::decode(&message.payload).expect("confirmation");
            assert!(
                matches!(alone.outcome, Outcome::Rejected { .. }),
                "{alone:?}"
            );
            let token = message.subject.rsplit('.').next().expect("a token");
            rejected.insert(token.parse().expect("a numeric token"));
        }
    }
    (accepted, rejected)
}

#[tokio::test]
async fn a_poison_order_in_an_envelope_goes_to_the_dead_letters_alone_and_its_neighbours_are_committed()
 {
    let mut h = harness(Backend::Postgres).await;
    // Long enough that the first delivery's answers come well before the second delivery.
    h.config.worker.retry_delay = Duration::from_secs(2);
    h.config.worker.dead_letter_after = 2;
    nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let inbox = h.client.new_inbox();
    let mut replies = h.client.subscribe(format!("{inbox}.*")).await.expect("sub");
    let good: Vec<NewOrder> = (1..=3).map(|i| order(&format!("+7999000000{i}"))).collect();
    let poison_id = Uuid::now_v7();
    // A name the front would refuse: the worker must not trust the queue.
    let poison = format!(
        r#"{{"id":"{poison_id}","name":"<script>","phone":"+79991234567","created_at":"2026-11-27T00:00:00Z"}}"#
    );
    let sequence = enqueue_envelope(
        &h,
        &inbox,
        &[
            (messages::encode(&good[0]), 1),
            (Bytes::from(poison.clone()), 2),
            (messages::encode(&good[1]), 3),
            (messages::encode(&good[2]), 4),
        ],
    )
    .await;

    let worker = Application::build(&h.config).await.expect("worker");
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    // The neighbours are confirmed on the first delivery, before the poison is due.
    let (accepted, rejected) = answers(&mut replies, |accepted, _| accepted.len() == 3).await;
    assert_eq!(accepted, HashSet::from([1, 3, 4]));
    assert!(rejected.is_empty(), "not due on the first delivery");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        h.js.get_consumer_from_stream("workers", "ORDERS")
            .await
            .expect("consumer");
    assert_eq!(
        consumer.info().await.expect("info").num_redelivered,
        0,
        "the neighbours were answered on the first delivery, not with the poison's last"
    );
    let (_, rejected) = answers(&mut replies, |_, rejected| !rejected.is_empty()).await;
    assert_eq!(rejected, HashSet::from([2]));

    let connection = h.db.connect().await.expect("connect");
    assert_eq!(count_orders(&connection).await, 3);
    assert_eq!(stats.snapshot().orders_rejected, 1);
    let (js, mut letters) = dead_letters::open(&h.config.nats)
        .await
        .expect("dead letters");
    let listed = dead_letters::list(&mut letters).await.expect("list");
    assert_eq!(listed.len(), 1, "the poison alone: {listed:?}");
    assert_eq!(listed[0].order_id, Some(poison_id));
    assert_eq!(listed[0].orders_sequence, sequence);
    assert_eq!(listed[0].position, Some(1));
    assert_eq!(listed[0].deliveries, 2);
    // Its payload is the order alone, so a replay puts back that order and no other.
    let letter = letters
        .get_raw_message(listed[0].sequence)
        .await
        .expect("the letter");
    assert_eq!(letter.payload, poison.as_bytes());
    let the_envelope_is_gone = eventually(Duration::from_secs(5), || async {
        let mut orders = h.js.get_stream("ORDERS").await.expect("stream");
        orders.info().await.expect("info").state.messages == 0
    });
    assert!(
        the_envelope_is_gone.await,
        "acked once its orders were done"
    );

    let replayed = dead_letters::replay(&js, &mut letters, &dead_letters::Selection::All)
        .await
        .expect("replay");
    assert_eq!(replayed, vec![listed[0].sequence]);
    let dead_again = eventually(Duration::from_secs(10), || async {
        stats.snapshot().orders_rejected == 2
    });
    assert!(
        dead_again.await,
        "the replayed order is read as an order alone"
    );
    assert_eq!(count_orders(&connection).await, 3, "no neighbour came back");

    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
}

#[tokio::test]
async fn the_same_key_in_two_envelopes_is_one_row_and_both_waiters_are_told_accepted() {
    let h = harness(Backend::Sqlite).await;
    nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let (front_a, front_b) = (h.client.new_inbox(), h.client.new_inbox());
    let mut replies_a = h
        .client
        .subscribe(format!("{front_a}.*"))
        .await
        .expect("sub");
    let mut replies_b = h
        .client
        .subscribe(format!("{front_b}.*"))
        .await
        .expect("sub");
    let twice = order("+79990000001");
    let (other_a, other_b) = (order("+79990000002"), order("+79990000003"));
    enqueue_envelope(
        &h,
        &front_a,
        &[
            (messages::encode(&other_a), 1),
            (messages::encode(&twice), 2),
        ],
    )
    .await;
    // A double click that reached another front: the same key, its own envelope.
    enqueue_envelope(
        &h,
        &front_b,
        &[
            (messages::encode(&twice), 8),
            (messages::encode(&other_b), 9),
        ],
    )
    .await;

    let worker = Application::build(&h.config).await.expect("worker");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let (to_a, _) = answers(&mut replies_a, |accepted, _| accepted.len() == 2).await;
    let (to_b, _) = answers(&mut replies_b, |accepted, _| accepted.len() == 2).await;
    assert_eq!(to_a, HashSet::from([1, 2]));
    assert_eq!(to_b, HashSet::from([8, 9]));
    let connection = h.db.connect().await.expect("connect");
    assert_eq!(count_orders(&connection).await, 3, "one row per key");

    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
}

#[tokio::test]
async fn an_order_in_another_orders_envelope_is_found_by_the_sequence_its_link_names() {
    let h = harness(Backend::Postgres).await;
    let stream = nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let connection = h.db.connect().await.expect("connect");
    let inbox = h.client.new_inbox();
    let (first, second) = (order("+79990000001"), order("+79990000022"));
    let sequence = enqueue_envelope(
        &h,
        &inbox,
        &[
            (messages::encode(&first), 1),
            (messages::encode(&second), 2),
        ],
    )
    .await;
    let state = |id, at| {
        let (connection, stream) = (&connection, &stream);
        async move { lookup(connection, stream, id, at).await.expect("lookup") }
    };

    let found = state(second.id, Some(sequence)).await;
    assert_eq!(found.state, OrderState::Pending);
    assert_eq!(found.phone_masked.as_deref(), Some("+7********22"));
    assert_eq!(
        state(first.id, None).await.state,
        OrderState::Pending,
        "the envelope's subject names its first order"
    );
    // Without the hint an order further in the envelope cannot be found: the front's link and
    // its 202's Location carry it (README, "How an order travels").
    assert_eq!(state(second.id, None).await.state, OrderState::Unknown);
    // A hint is no claim: one that names another message, or none, finds nothing.
    assert_eq!(
        state(Uuid::now_v7(), Some(sequence)).await.state,
        OrderState::Unknown
    );
    assert_eq!(
        state(second.id, Some(sequence + 1_000)).await.state,
        OrderState::Unknown
    );

    commit_orders(&connection, [&first, &second])
        .await
        .expect("commit");
    let accepted = state(second.id, Some(sequence)).await;
    assert_eq!(accepted.state, OrderState::Accepted);
}

#[tokio::test]
async fn an_envelope_an_old_worker_dead_lettered_whole_is_replayed_as_an_envelope() {
    let h = harness(Backend::Sqlite).await;
    nats::ensure_orders_stream(&h.js, &h.config.nats)
        .await
        .expect("stream");
    let (js, mut letters) = dead_letters::open(&h.config.nats)
        .await
        .expect("dead letters");
    let orders = [order("+79990000001"), order("+79990000002")];
    let mut builder = EnvelopeBuilder::default();
    for (token, order) in orders.iter().enumerate() {
        builder.push(&messages::encode(order), token as u64, None);
    }
    // As a worker of the release before envelopes stored it: the headers it carried over,
    // the first order's id from the subject, the reason it could not read it.
    let mut headers = HeaderMap::new();
    headers.insert(ENVELOPE_HEADER, "2");
    headers.insert(
        DEAD_LETTER_ORDER_ID_HEADER,
        orders[0].id.to_string().as_str(),
    );
    headers.insert(DEAD_LETTER_REASON_HEADER, "malformed or invalid order: …");
    js.publish_with_headers(messages::dead_letter_subject(41), headers, builder.finish())
        .await
        .expect("publish")
        .await
        .expect("PubAck");

    let replayed = dead_letters::replay(&js, &mut letters, &dead_letters::Selection::All)
        .await
        .expect("replay");
    assert_eq!(replayed.len(), 1);
    let worker = Application::build(&h.config).await.expect("worker");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let connection = h.db.connect().await.expect("connect");
    let both = eventually(Duration::from_secs(10), || async {
        count_orders(&connection).await == 2
    });
    assert!(both.await, "both orders of the envelope are committed");
    stop.cancel();
    running
        .await
        .expect("joined")
        .expect("worker stops cleanly");
}
