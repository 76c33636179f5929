//! The order path end to end: form → front → JetStream → worker → database → confirmation.

use std::time::Duration;

use finalprice_shared::messages::{REPLY_TO_HEADER, REPLY_TOKEN_HEADER, ReplyTarget};
use finalprice_testkit::Backend;
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{
    eventually, order_id_from_location, spawn_app, spawn_app_with, spawn_app_without_worker,
};

const VALID_FORM: &str = "name=%D0%90%D0%BD%D0%BD%D0%B0+%D0%9F%D0%B5%D1%82%D1%80%D0%BE%D0%B2%D0%B0&phone=8+%28999%29+123-45-67";

async fn a_confirmed_order_is_a_row_when_the_answer_arrives(backend: Backend) {
    let app = spawn_app(backend).await;

    let response = app.post_form(VALID_FORM).await;

    assert_eq!(
        response.status(),
        303,
        "{backend:?}: a committed order redirects"
    );
    let id = order_id_from_location(&response);
    // The very moment the answer is in: the row must already be committed.
    let row = app
        .row(id)
        .await
        .unwrap_or_else(|| panic!("{backend:?}: no row for {id}"));
    assert_eq!(row.name, "Анна Петрова", "stored normalised");
    assert_eq!(row.phone, "+79991234567", "stored as E.164");

    let page = app.get(&format!("/orders/{id}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(html.contains("Ваш заказ принят"), "{html}");
    assert!(
        !html.contains("9991234567"),
        "the full phone is never shown: {html}"
    );
    assert!(html.contains("+7********67"), "the masked phone is: {html}");
    app.stop().await;
}

#[tokio::test]
async fn a_confirmed_order_is_a_row_when_the_answer_arrives_postgres() {
    a_confirmed_order_is_a_row_when_the_answer_arrives(Backend::Postgres).await;
}

#[tokio::test]
async fn a_confirmed_order_is_a_row_when_the_answer_arrives_sqlite() {
    a_confirmed_order_is_a_row_when_the_answer_arrives(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_json_client_gets_201_with_the_committed_id_and_can_ask_after_it() {
    let app = spawn_app(Backend::Postgres).await;

    let response = app
        .post_json(&json!({ "name": "Jean-Luc Picard", "phone": "+33 1 23 45 67 89" }))
        .await;

    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(body["status"], "accepted");
    let id = Uuid::parse_str(body["id"].as_str().expect("an id")).expect("a UUID");
    assert!(app.row(id).await.is_some(), "201 means committed");

    let (status, answer) = app.get_json(&format!("/orders/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(answer, json!({ "id": id, "status": "accepted" }));
    let unknown = Uuid::now_v7();
    let (status, answer) = app.get_json(&format!("/orders/{unknown}")).await;
    assert_eq!(status, 404);
    assert_eq!(answer, json!({ "id": unknown, "status": "unknown" }));
    let (status, answer) = app.get_json("/orders/not-a-uuid").await;
    assert_eq!(status, 404);
    assert_eq!(answer, json!({ "id": null, "status": "unknown" }));
    app.stop().await;
}

#[tokio::test]
async fn invalid_input_gets_422_with_each_field_named_and_nothing_is_published() {
    let app = spawn_app(Backend::Sqlite).await;
    let cases = [
        ("name=&phone=89991234567", "name", "empty name"),
        ("name=Anna&phone=12345", "phone", "short phone"),
        (
            "name=%3Cscript%3E&phone=89991234567",
            "name",
            "markup in the name",
        ),
        (
            "name=Anna&phone=%2B7+999+abc",
            "phone",
            "letters in the phone",
        ),
        ("phone=89991234567", "name", "name missing"),
    ];
    for (body, field, case) in cases {
        let response = app.post_form(body).await;
        assert_eq!(response.status(), 422, "{case}");
        let html = response.text().await.expect("page");
        assert!(
            html.contains(&format!("id=\"{field}-error\"")),
            "{case}: the {field} error is shown on its field: {html}"
        );
        assert!(html.contains("aria-invalid=\"true\""), "{case}");
    }

    let json = app.post_json(&json!({ "name": "", "phone": "abc" })).await;
    assert_eq!(json.status(), 422);
    let body: serde_json::Value = json.json().await.expect("JSON body");
    assert!(body["errors"]["name"].is_string(), "{body}");
    assert!(body["errors"]["phone"].is_string(), "{body}");

    assert_eq!(app.queued().await, 0, "nothing invalid reaches the stream");
    assert_eq!(app.row_count().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn the_form_comes_back_with_the_shoppers_input_and_escaped() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = Uuid::now_v7();

    let response = app
        .post_form(&format!("name=%22%3E%3Cb%3Ex&phone=8+999+123&key={key}"))
        .await;

    assert_eq!(response.status(), 422);
    let html = response.text().await.expect("page");
    assert!(html.contains("value=\"8 999 123\""), "phone kept: {html}");
    assert!(
        html.contains(&format!("value=\"{key}\"")),
        "same key, so a resubmit is one order"
    );
    assert!(
        !html.contains("\"><b>x"),
        "hostile input is escaped: {html}"
    );
    app.stop().await;
}

#[tokio::test]
async fn without_a_worker_the_shopper_sees_being_saved_until_a_worker_commits() {
    let mut app = spawn_app_without_worker(Backend::Postgres).await;

    let response = app.post_form(VALID_FORM).await;

    assert_eq!(
        response.status(),
        303,
        "durable in the stream, not yet confirmed"
    );
    let id = order_id_from_location(&response);
    assert!(app.row(id).await.is_none());
    // Queued asking for its confirmation to come with the rest of its batch for this front.
    let headers = app.queued_headers(id).await;
    let reply_to = headers
        .get(REPLY_TO_HEADER)
        .expect("a reply inbox")
        .as_str();
    let token = headers.get(REPLY_TOKEN_HEADER).map(|token| token.as_str());
    assert!(
        matches!(
            ReplyTarget::of(reply_to, token),
            ReplyTarget::Gathered { .. }
        ),
        "{reply_to} {token:?}"
    );
    let page = app.get(&format!("/orders/{id}")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("page");
    assert!(html.contains("Заказ сохраняется"), "{html}");
    assert!(
        html.contains("http-equiv=\"refresh\""),
        "the page refreshes itself: {html}"
    );
    assert!(
        !html.contains("Ваш заказ принят"),
        "never accepted before the commit"
    );

    let json = app
        .post_json(&json!({ "name": "Anna", "phone": "89991234568" }))
        .await;
    assert_eq!(json.status(), 202);
    assert_eq!(
        json.json::<serde_json::Value>().await.expect("JSON")["status"],
        "pending"
    );

    app.start_worker().await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            app.row(id).await.is_some()
        })
        .await,
        "the worker commits what waited in the stream"
    );
    let html = app
        .get(&format!("/orders/{id}"))
        .await
        .text()
        .await
        .expect("page");
    assert!(html.contains("Ваш заказ принят"), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn with_nats_down_the_front_answers_503_with_retry_after_and_keeps_the_input() {
    let mut app = spawn_app(Backend::Sqlite).await;
    app.nats.kill();

    // Answered, never a hang: the test client gives up (and fails the test) after 20 s.
    let response = app.post_form(VALID_FORM).await;

    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let html = response.text().await.expect("page");
    assert!(
        html.contains("value=\"8 (999) 123-45-67\""),
        "input kept: {html}"
    );

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503, "not ready without NATS");
    assert_eq!(app.get("/healthz").await.status(), 200, "still alive");
    app.stop().await;
}

#[tokio::test]
async fn with_nats_down_nothing_is_queued_for_later_and_the_front_still_stops() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.nats.request_timeout = Duration::from_millis(300);
        config.http.status_timeout = Duration::from_millis(500);
    })
    .await;
    app.start_worker().await;
    let placed = app
        .post_json(&json!({"name": "Anna", "phone": "+79991234567"}))
        .await;
    assert_eq!(placed.status(), 201);
    let known: serde_json::Value = placed.json().await.expect("a JSON body");
    let known = known["id"].as_str().expect("an id").to_owned();
    // Looked up once while NATS is there: an accepted answer cannot change, so the front keeps it.
    let (status, body) = app.get_json(&format!("/orders/{known}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    app.kill_nats().await;

    let refused = app.burst(500, 64, 9_100_000_000).await;

    assert_eq!(refused.unavailable, 500, "{refused:?}");
    // Refused without reaching the NATS client: nothing waits in its queue to be sent (and
    // stored) after the reconnect, or fills it so that every later send waits for the server.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("finalprice_front_publish_failures_total{kind=\"disconnected\"} 500"),
        "{metrics}"
    );
    // Answered, never a hang: the test client gives up (and fails the test) after 20 s. An
    // order this front has seen accepted stays accepted, NATS or not; of any other it cannot
    // tell.
    let (status, body) = app.get_json(&format!("/orders/{known}")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("accepted")));
    let (status, body) = app.get_json(&format!("/orders/{}", Uuid::now_v7())).await;
    assert_eq!(status, 503, "cannot tell without NATS: {body}");
    let stopped = tokio::time::timeout(Duration::from_secs(20), app.stop()).await;
    assert!(stopped.is_ok(), "the front stops while NATS is away");
}

#[tokio::test]
async fn many_orders_in_flight_are_committed_in_fewer_transactions() {
    let app = spawn_app(Backend::Postgres).await;
    let orders = 200;

    let responses = join_all((0..orders).map(|i| {
        let body = json!({ "name": "Anna", "phone": format!("+7999{:07}", i) });
        let app = &app;
        async move { app.post_json(&body).await.status() }
    }))
    .await;

    assert!(
        responses.iter().all(|status| *status == 201),
        "{responses:?}"
    );
    assert_eq!(app.row_count().await, orders);
    let stats = app.worker_stats().snapshot();
    assert_eq!(stats.orders_inserted, orders);
    assert!(
        stats.batches_committed < orders,
        "{orders} orders took {} transactions: no batching",
        stats.batches_committed
    );
    app.stop().await;
}

#[tokio::test]
async fn resubmitting_the_same_key_names_the_same_order_and_stores_it_once() {
    let app = spawn_app(Backend::Postgres).await;
    let key = Uuid::now_v7();
    let body = format!("{VALID_FORM}&key={key}");

    let first = app.post_form(&body).await;
    let second = app.post_form(&body).await;

    assert_eq!(first.status(), 303);
    assert_eq!(second.status(), 303);
    assert_eq!(order_id_from_location(&first), key);
    assert_eq!(order_id_from_location(&second), key);
    let html = app
        .get(&format!("/orders/{key}"))
        .await
        .text()
        .await
        .expect("page");
    assert!(
        html.contains("Ваш заказ принят"),
        "the duplicate learns the real state: {html}"
    );
    assert_eq!(app.row_count().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn bodies_that_are_not_a_form_get_415_or_413() {
    let app = spawn_app(Backend::Sqlite).await;

    let text = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "text/plain")
        .body("name=Anna")
        .send()
        .await
        .expect("answered");
    assert_eq!(text.status(), 415);

    let huge = format!("name={}&phone=89991234567", "a".repeat(64 * 1024));
    assert_eq!(app.post_form(&huge).await.status(), 413);

    let broken = app.post_form("name=%FF%FE&phone=89991234567").await;
    assert!(
        broken.status() == 400 || broken.status() == 422,
        "invalid UTF-8 is the client's mistake: {}",
        broken.status()
    );
    assert_eq!(app.queued().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_order_is_404() {
    let app = spawn_app(Backend::Sqlite).await;
    let started = std::time::Instant::now();
    let unknown = app.get(&format!("/orders/{}", Uuid::now_v7())).await;
    let status = unknown.status();
    assert_eq!(
        status,
        404,
        "after {:?}: {}",
        started.elapsed(),
        unknown.text().await.unwrap_or_default()
    );
    assert_eq!(app.get("/orders/not-a-uuid").await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn the_form_carries_a_fresh_key_each_time() {
    let app = spawn_app(Backend::Sqlite).await;
    let first = app.get("/").await.text().await.expect("page");
    let second = app.get("/").await.text().await.expect("page");
    for field in [
        "name=\"name\"",
        "name=\"phone\"",
        "name=\"key\"",
        "type=\"tel\"",
    ] {
        assert!(first.contains(field), "{field} missing: {first}");
    }
    let key = |html: &str| {
        let start = html.find("name=\"key\" value=\"").expect("key field") + 18;
        html[start..start + 36].to_owned()
    };
    assert_ne!(key(&first), key(&second));
    assert!(Uuid::parse_str(&key(&first)).is_ok());
    app.stop().await;
}

#[tokio::test]
async fn orders_that_arrive_while_a_publish_awaits_its_puback_travel_in_one_envelope() {
    let mut app = spawn_app_with(Backend::Postgres, |config| {
        config.nats.envelopes_in_flight = 1;
        config.http.reply_timeout = Duration::from_millis(200);
    })
    .await;
    app.until_gathering().await;
    // A hung server holds the first publish; every order that reaches the front meanwhile is
    // gathered behind it.
    let bodies: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"name": "Анна", "phone": format!("+7999000{i:04}")}))
        .collect();
    let posts = join_all(bodies.iter().map(|body| app.post_json(body)));
    let answers = app.while_nats_hangs(20, posts).await;

    let mut links = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 202, "durable, no worker to commit it");
        let location = answer
            .headers()
            .get("location")
            .expect("a 202 names where to ask")
            .to_str()
            .expect("ASCII")
            .to_owned();
        let body: serde_json::Value = answer.json().await.expect("JSON");
        let id = body["id"].as_str().expect("an id").to_owned();
        assert!(
            location.starts_with(&format!("/orders/{id}?at=")),
            "{location}"
        );
        links.push(location);
    }
    let mut stream = crate::helpers::orders_stream(&app).await;
    let messages = stream.info().await.expect("info").state.messages;
    assert!(
        messages <= 2,
        "the first publish, then one envelope of the rest: {messages} messages"
    );
    assert_eq!(app.queued().await, 20, "every order is in the stream");
    // Each order's link finds it while it waits, first in its envelope or not.
    for link in &links {
        let (status, body) = app.get_json(link).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("pending")),
            "{link}"
        );
    }
    let page = app.get(&links[19]).await.text().await.expect("page");
    assert!(page.contains("Заказ сохраняется"), "{page}");

    app.start_worker().await;
    let committed = eventually(Duration::from_secs(20), || async {
        app.row_count().await == 20
    });
    assert!(committed.await, "every order of the envelope is committed");
    // The front shares a "being saved" for a second (lookups.rs): accepted at the next ask.
    for link in &links {
        let accepted = eventually(Duration::from_secs(5), || async {
            let (status, body) = app.get_json(link).await;
            (status, body["status"].as_str()) == (200, Some("accepted"))
        });
        assert!(accepted.await, "{link}");
    }
    app.stop().await;
}

#[tokio::test]
async fn while_a_worker_that_cannot_read_envelopes_answers_every_order_travels_alone() {
    use finalprice_shared::messages::PING_SUBJECT;
    use futures_util::StreamExt;

    // A worker of the release before envelopes, as it answers pings (no `reads_envelopes`),
    // running before the front starts: a rolling upgrade that began with the fronts.
    let nats = finalprice_testkit::NatsServer::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let mut pings = client.subscribe(PING_SUBJECT).await.expect("sub");
    client.flush().await.expect("flush");
    let old_worker = tokio::spawn({
        let client = client.clone();
        async move {
            while let Some(ping) = pings.next().await {
                let answer = json!({
                    "service": "finalprice-worker",
                    "instance": Uuid::now_v7(),
                    "version": "0.0.9",
                    "started_at": "2026-11-27T00:00:00Z",
                });
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, answer.to_string().into()).await;
                }
            }
        }
    });
    let app = crate::helpers::spawn_app_on(nats, Backend::Postgres, |config| {
        config.nats.envelopes_in_flight = 1;
        config.http.reply_timeout = Duration::from_millis(100);
    })
    .await;
    // The front asks at start; give its answer time to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(app.metric("finalprice_front_envelopes_on").await, 0.0);

    let bodies: Vec<serde_json::Value> = (0..10)
        .map(|i| json!({"name": "Анна", "phone": format!("+7999100{i:04}")}))
        .collect();
    let posts = join_all(bodies.iter().map(|body| app.post_json(body)));
    let answers = app.while_nats_hangs(10, posts).await;
    assert!(answers.iter().all(|answer| answer.status() == 202));
    let mut stream = crate::helpers::orders_stream(&app).await;
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        10,
        "each order alone, in the form the old worker reads"
    );
    old_worker.abort();
    app.stop().await;
}
