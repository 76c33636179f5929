//! Probes and routing basics.

use finalprice_testkit::Backend;

use crate::helpers::spawn_app;

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
