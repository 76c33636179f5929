//! `http.admin_addr`: `/metrics` on a listener of its own, off the shoppers' port.

use std::net::SocketAddr;

use finalprice_testkit::Backend;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn with_an_admin_address_metrics_are_served_there_and_not_to_shoppers() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.admin_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let admin = app.admin_addr.expect("the admin listener is bound");
    assert_ne!(admin.port(), 0, "port 0 becomes a real port");

    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(
        app.get("/metrics").await.status(),
        404,
        "the shoppers' port knows no /metrics"
    );
    let posted = app
        .http
        .post(app.url("/metrics"))
        .send()
        .await
        .expect("answered");
    assert_eq!(posted.status(), 404, "an unknown path, whatever the method");

    let metrics = app
        .http
        .get(format!("http://{admin}/metrics"))
        // As Prometheus asks.
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
        )
        .send()
        .await
        .expect("admin /metrics answered");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .contains("openmetrics")
    );
    let text = metrics.text().await.expect("text");
    // The front's own registry: the requests above are counted, the refused scrapes as unknown
    // paths rather than under a route the port does not serve.
    let not_found: f64 = text
        .lines()
        .filter(|line| {
            line.starts_with("finalprice_front_http_requests_total")
                && line.contains("status=\"404\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(not_found, 2.0, "{text}");
    assert!(!text.to_lowercase().contains("route=\"metrics\""), "{text}");
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");

    let health = app
        .http
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .expect("admin /healthz answered");
    assert_eq!(health.status(), 200);

    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener closes with the front"
    );
}
