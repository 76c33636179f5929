//! Probes and routing basics.

use finalprice_testkit::Backend;

use crate::helpers::{spawn_app, spawn_app_without_worker};

#[tokio::test]
async fn probes_answer_and_unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app(Backend::Sqlite).await;

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.get("/static/style.css").await.status(), 200);
    assert_eq!(app.get("/nope").await.status(), 404);

    let wrong = app
        .http
        .delete(app.url("/orders"))
        .send()
        .await
        .expect("answered");
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "POST");

    let page = app.get("/").await;
    assert!(page.headers().contains_key("content-security-policy"));
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    app.stop().await;
}

/// `/readyz` is open to anyone who reaches the front; however many ask at once, nats-server's
/// JetStream API is asked about the stream once (per second), not once per probe.
#[tokio::test]
async fn many_readiness_probes_at_once_cost_nats_server_one_look() {
    let app = spawn_app_without_worker(Backend::Sqlite).await;
    let client = finalprice_shared::nats::connect(&app.config.nats, "test")
        .await
        .expect("nats");
    let js = finalprice_shared::nats::jetstream(client, &app.config.nats);
    let api_requests = async || js.query_account().await.expect("account").requests.total;

    let before = api_requests().await;
    let started = std::time::Instant::now();
    let probes = (0..200).map(|_| app.get("/readyz"));
    for answer in futures_util::future::join_all(probes).await {
        assert_eq!(answer.status(), 200);
    }
    // A look answers for a second: on a slow machine the probes can outlast a few.
    let looks = started.elapsed().as_secs() + 1;
    let asked = api_requests().await - before;

    // The looks and the second account query; 200 without the shared look.
    assert!(
        asked <= looks + 1,
        "{asked} JetStream API requests for 200 probes in {looks} s"
    );
    app.stop().await;
}
