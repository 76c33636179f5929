//! What a JSON client is told when its request fails: one RFC 9457 problem document with a
//! stable `type` for every error, and an order whose fate the front cannot tell named by its
//! id, so a retry with it as `key` is the same order.

use std::time::Duration;

use finalprice_testkit::Backend;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with};

const PROBLEMS: &str = "https://finalprice.dev/problems/";

/// Words of the front's inner errors (async-nats, sea-orm, its own Debug names) that must
/// never reach a client.
const INTERNAL: [&str; 8] = [
    "NoAck",
    "no_ack",
    "Disconnected",
    "nats",
    "Error",
    "error:",
    "sea_orm",
    "{:?}",
];

/// Asserts `response` is problem `slug` with `status`, and returns its body.
async fn problem(response: reqwest::Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status(), status, "{slug}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{slug}"
    );
    let text = response.text().await.expect("a body");
    for word in INTERNAL {
        assert!(!text.contains(word), "{word:?} in {text}");
    }
    let body: Value = serde_json::from_str(&text).expect("a JSON body");
    assert_eq!(body["type"], format!("{PROBLEMS}{slug}"), "{text}");
    assert_eq!(body["status"], status, "{text}");
    assert!(
        body["title"]
            .as_str()
            .is_some_and(|title| !title.is_empty()),
        "{text}"
    );
    body
}

fn json_request(app: &TestApp, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    app.http
        .request(method, app.url(path))
        .header("accept", "application/json")
}

/// An order sent with `key` (or none), as an API client sends it.
async fn post_order(app: &TestApp, key: Option<Uuid>) -> reqwest::Response {
    let mut order = json!({ "name": "Anna", "phone": "+79991234567" });
    if let Some(key) = key {
        order["key"] = json!(key);
    }
    app.post_json(&order).await
}

#[tokio::test]
async fn an_order_whose_fate_is_unknown_is_named_and_its_retry_with_that_id_is_one_order() {
    let app = spawn_app(Backend::Postgres).await;
    assert_eq!(app.row_ids().await, Vec::<Uuid>::new(), "a fresh database");

    // A hung nats-server: the connection looks alive, the publish goes out, no PubAck comes.
    app.nats.freeze().expect("nats-server freezes");
    let first = post_order(&app, None).await;
    app.nats.thaw().expect("nats-server goes on");

    let retry_after = first.headers().get("retry-after").cloned();
    assert_eq!(first.status(), 503, "{:?}", first.text().await);
    let retry_after = retry_after.expect("a Retry-After");
    let retry_after = retry_after.to_str().expect("ASCII").parse::<u64>();
    assert!(retry_after.expect("whole seconds") >= 1);
    let body = problem(first, 503, "outcome-unknown").await;
    let id = Uuid::parse_str(body["id"].as_str().expect("an id")).expect("a UUID");
    let detail = body["detail"].as_str().expect("a detail");
    assert!(detail.contains(&id.to_string()), "{detail}");
    assert!(detail.contains("key"), "{detail}");

    // The client does as told: the same order again, with the id as its key.
    let mut answers = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = post_order(&app, Some(id)).await;
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.expect("a JSON body");
        answers.push(status);
        if matches!(status, 201 | 202) {
            assert_eq!(body["id"], id.to_string(), "every answer names the same id");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retry is acknowledged: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let committed = eventually(Duration::from_secs(15), || async {
        app.row(id).await.is_some() && app.queued().await == 0
    });
    assert!(
        committed.await,
        "the order is committed and the stream empty"
    );
    assert_eq!(
        app.row_ids().await,
        [id],
        "one order, however many times it was sent: {answers:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_order_that_cannot_be_in_the_queue_is_said_not_taken_and_keeps_its_key() {
    let mut app = spawn_app(Backend::Sqlite).await;
    app.kill_nats().await;

    let key = Uuid::now_v7();
    let refused = post_order(&app, Some(key)).await;
    assert!(refused.headers().contains_key("retry-after"));
    let body = problem(refused, 503, "queue-unavailable").await;
    assert_eq!(body["id"], key.to_string());

    // Without a key, the answer names the id made for it.
    let body = problem(post_order(&app, None).await, 503, "queue-unavailable").await;
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.parse::<Uuid>().is_ok())
    );

    // A browser gets its form back with the same key, so pressing "Order" again is one order.
    let page = app
        .post_form(&format!("name=Anna&phone=89991234567&key={key}"))
        .await;
    assert_eq!(page.status(), 503);
    assert!(page.headers().contains_key("retry-after"));
    let html = page.text().await.expect("a page");
    assert!(html.contains(&format!("value=\"{key}\"")), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn json_clients_get_a_problem_for_404_405_415_and_busy() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_in_flight = 1;
        config.http.reply_timeout = Duration::from_secs(3);
        config.http.retry_after = Duration::from_secs(7);
    })
    .await;
    use reqwest::Method;

    let missing = json_request(&app, Method::GET, "/nope").send().await;
    problem(missing.expect("answered"), 404, "not-found").await;
    let missing = json_request(&app, Method::GET, "/static/nope.css")
        .send()
        .await;
    problem(missing.expect("answered"), 404, "not-found").await;

    let wrong = json_request(&app, Method::DELETE, "/orders").send().await;
    let wrong = wrong.expect("answered");
    assert_eq!(wrong.headers()["allow"], "POST");
    problem(wrong, 405, "method-not-allowed").await;

    let unsupported = json_request(&app, Method::POST, "/orders")
        .header("content-type", "text/plain")
        .body("name=Anna")
        .send()
        .await;
    problem(
        unsupported.expect("answered"),
        415,
        "unsupported-media-type",
    )
    .await;

    // A client that sends JSON without asking for it still gets JSON back.
    let malformed = app
        .http
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await;
    problem(malformed.expect("answered"), 400, "malformed-body").await;

    // No worker: the one slot is held by an order waiting for its confirmation.
    let held = app.post_form("name=Anna&phone=89990000001");
    let busy = async {
        let slot_taken = eventually(Duration::from_secs(10), || async {
            app.queued().await == 1
        });
        assert!(slot_taken.await, "the held order reached the queue");
        let order = post_order(&app, None).await;
        let page = json_request(&app, Method::GET, "/").send().await;
        (order, page.expect("answered"))
    };
    let (held, (order, page)) = tokio::join!(held, busy);
    assert_eq!(held.status(), 303);
    for answer in [order, page] {
        assert_eq!(answer.headers()["retry-after"], "7");
        let body = problem(answer, 503, "busy").await;
        assert!(body.get("id").is_none(), "nothing was queued: {body}");
    }

    // The fixed bodies stay as they are.
    let invalid = app
        .post_json(&json!({ "name": "", "phone": "+79991234567" }))
        .await;
    assert_eq!(invalid.status(), 422);
    assert_eq!(invalid.headers()["content-type"], "application/json");
    let body: Value = invalid.json().await.expect("a JSON body");
    assert!(body["errors"]["name"].is_string(), "{body}");
    app.stop().await;
}
