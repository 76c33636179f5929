//! `GET /orders/{id}` cannot be turned against the sale: each look costs a NATS request to the
//! workers, so lookups have a per-client rate, a bound of their own on looks at once, a kept
//! answer for an accepted order, and one look per id at a time. The looks are counted where
//! they cost: as status requests on the real nats-server, seen by a subscriber of the test's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use finalprice_shared::messages::STATUS_SUBJECT;
use finalprice_testkit::Backend;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app_with};

/// Counts the status requests that reach nats-server: every look a front makes.
struct Looks {
    seen: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Looks {
    async fn watch(app: &TestApp) -> Self {
        let client = async_nats::connect(app.nats.url()).await.expect("nats");
        let mut requests = client.subscribe(STATUS_SUBJECT).await.expect("subscribe");
        client.flush().await.expect("subscribed before any lookup");
        let seen = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let _client = client;
            while requests.next().await.is_some() {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        Self { seen, _task: task }
    }

    fn count(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn lookup(app: &TestApp, id: Uuid, client: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/orders/{id}")))
        .header("accept", "application/json")
        .header("x-forwarded-for", client)
        .send()
        .await
        .expect("answered")
}

#[tokio::test]
async fn askers_of_one_id_share_one_look_and_an_accepted_order_is_looked_up_once() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.lookup_rate_per_second = 0;
    })
    .await;
    app.start_worker().await;
    let looks = Looks::watch(&app).await;

    // 32 shoppers at once ask for one order nobody has: one look answers them all.
    let unknown = Uuid::now_v7();
    let answers = join_all((0..32).map(|_| lookup(&app, unknown, "192.0.2.1"))).await;
    for answer in answers {
        assert_eq!(answer.status(), 404);
    }
    let shared = looks.count();
    assert!(
        (1..=2).contains(&shared),
        "32 concurrent askers of one id cost {shared} looks"
    );
    // Asked again after the short keep: looked again, since an unknown order may yet arrive.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(lookup(&app, unknown, "192.0.2.1").await.status(), 404);
    assert_eq!(
        looks.count(),
        shared + 1,
        "an unknown answer is kept briefly"
    );

    // An accepted order: one look, then every later ask is answered by the front.
    let created = app
        .post_json(&json!({ "name": "Anna", "phone": "+79991234567" }))
        .await;
    assert_eq!(created.status(), 201);
    let id: Uuid = created.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id");
    let before = looks.count();
    for _ in 0..10 {
        let answer = lookup(&app, id, "192.0.2.1").await;
        assert_eq!(answer.status(), 200);
        let body: Value = answer.json().await.expect("JSON");
        assert_eq!(body["status"], "accepted");
    }
    assert_eq!(
        looks.count(),
        before + 1,
        "an accepted order is looked up once, then answered by the front"
    );
    app.stop().await;
}

#[tokio::test]
async fn lookups_past_their_own_bound_get_503_before_any_nats_work() {
    // No worker: a look waits the whole status timeout, holding the one slot. Long enough that
    // the second lookup arrives while it is held even on a loaded machine (CI runs ~50 of these
    // tests at once on two cores).
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_lookups_in_flight = 1;
        config.http.lookup_rate_per_second = 0;
        config.http.status_timeout = Duration::from_secs(10);
        config.http.retry_after = Duration::from_secs(4);
    })
    .await;
    // A status subscriber that never answers keeps the front waiting (no "no responders").
    let looks = Looks::watch(&app).await;

    let held = lookup(&app, Uuid::now_v7(), "192.0.2.1");
    let refused = async {
        let started = finalprice_testkit::eventually(Duration::from_secs(20), || async {
            looks.count() == 1
        });
        assert!(started.await, "the first look reached nats-server");
        let answer = lookup(&app, Uuid::now_v7(), "192.0.2.2").await;
        let looked = looks.count();
        (answer, looked)
    };
    let (held, (refused, looked)) = tokio::join!(held, refused);
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "4");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["type"], "https://finalprice.dev/problems/busy");
    assert_eq!(looked, 1, "the refused lookup asked nothing of NATS");
    // The held one ends as it would have: nobody could tell.
    assert_eq!(held.status(), 503);

    // Pages and orders are not held by the lookups' bound.
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_client_past_its_lookup_rate_gets_429_and_another_client_does_not() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.lookup_rate_per_second = 1;
        config.http.lookup_rate_burst = 3;
        config.http.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    let id = Uuid::now_v7();
    for _ in 0..3 {
        // No worker answers: "cannot tell now", but each is a look the client was allowed.
        let answer = lookup(&app, id, "192.0.2.1").await;
        assert_ne!(answer.status(), 429);
    }
    let limited = lookup(&app, id, "192.0.2.1").await;
    assert_eq!(limited.status(), 429);
    let wait: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!(wait >= 1);
    let body: Value = limited.json().await.expect("JSON");
    assert_eq!(body["type"], "https://finalprice.dev/problems/rate-limited");

    // A browser gets the "try again in N seconds" page in its language.
    let page = app
        .http
        .get(app.url(&format!("/orders/{id}")))
        .header("x-forwarded-for", "192.0.2.1")
        .send()
        .await
        .expect("answered");
    assert_eq!(page.status(), 429);
    assert!(page.headers().contains_key("retry-after"));
    let html = page.text().await.expect("a page");
    assert!(html.contains("<html"), "{html}");

    let other = lookup(&app, id, "192.0.2.2").await;
    assert_ne!(other.status(), 429, "each client has its own rate");
    app.stop().await;
}
