//! `/metrics` on both services moves by the right amounts.

use finalprice_testkit::Backend;

use crate::helpers::{eventually, spawn_app};

/// The value of the sample named `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_requests_orders_and_batches() {
    let app = spawn_app(Backend::Sqlite).await;
    for i in 0..5 {
        let answer = app
            .post_form(&format!("name=Anna&phone=8999000000{i}"))
            .await;
        assert_eq!(answer.status(), 303);
    }
    assert_eq!(app.post_form("name=&phone=1").await.status(), 422);

    let front = app.get("/metrics").await;
    assert_eq!(front.status(), 200);
    assert!(
        front.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4"),
        "a scrape that does not ask for OpenMetrics gets the classic text"
    );
    let front = front.text().await.expect("text");
    let worker = app
        .http
        .get(app.worker_metrics_url())
        .send()
        .await
        .expect("worker /metrics")
        .text()
        .await
        .expect("text");

    let created = "finalprice_front_http_requests_total";
    assert_eq!(
        sample(
            &front,
            created,
            &["route=\"create_order\"", "status=\"303\""]
        ),
        5.0,
        "{front}"
    );
    assert_eq!(
        sample(
            &front,
            created,
            &["route=\"create_order\"", "status=\"422\""]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &front,
            "finalprice_front_confirmation_wait_seconds_count",
            &["outcome=\"accepted\""]
        ),
        5.0
    );
    assert_eq!(
        sample(&worker, "finalprice_worker_orders_committed_total", &[]),
        5.0,
        "{worker}"
    );
    // The bounds beside their usage: the pool's size, the stream's (unbounded by default).
    let pool = sample(&worker, "finalprice_worker_db_pool_max_connections", &[]);
    assert!(pool >= 1.0, "{worker}");
    assert!(sample(&worker, "finalprice_worker_db_pool_connections", &[]) <= pool);
    assert!(
        worker
            .lines()
            .any(|line| line == "finalprice_worker_dead_letters 0"),
        "{worker}"
    );
    assert!(
        sample(&front, "finalprice_front_stream_max_messages", &[]) > 0.0,
        "nats/stream-orders.json bounds the stream: {front}"
    );
    let batches = sample(&worker, "finalprice_worker_batches_committed_total", &[]);
    assert!(
        (1.0..=5.0).contains(&batches),
        "{batches} batches for 5 orders"
    );
    assert_eq!(
        sample(&worker, "finalprice_worker_batch_size_sum", &[]),
        5.0
    );
    assert!(
        worker.contains("finalprice_worker_consumer_pending"),
        "the lag gauge is exported"
    );
    // Both services report their process under Prometheus' standard names (the test process
    // runs both, so only presence and a plausible size can be asserted).
    for text in [&front, &worker] {
        assert!(
            sample(text, "process_resident_memory_bytes", &[]) > 1e6,
            "{text}"
        );
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        // A front holding thousands of sockets runs out of descriptors first: both are shown.
        assert!(
            sample(text, "process_open_fds", &[]) < sample(text, "process_max_fds", &[]),
            "{text}"
        );
        assert!(sample(text, "process_threads", &[]) >= 1.0, "{text}");
        assert!(text.contains("\nprocess_start_time_seconds "), "{text}");
        // Which release answers: the workspace has one version, so this package's is theirs.
        let build = format!(
            "\nfinalprice_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
    }
    app.stop().await;
}

/// One `GET /healthz` on a kept-alive connection; whether it was answered 200.
async fn healthz_on(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0_u8; 1024];
    let n = socket.read(&mut answer).await.expect("read");
    answer[..n].starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn kept_alive_connections_between_requests_are_counted_as_idle() {
    let app = spawn_app(Backend::Sqlite).await;
    let address = app.address.trim_start_matches("http://");
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut socket = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        assert!(healthz_on(&mut socket).await);
        kept.push(socket);
    }
    // Parking happens PARK_AFTER after the last request; wait for it instead of guessing.
    let parked = eventually(finalprice_front::PARK_AFTER * 50, || async {
        let front = app.get("/metrics").await.text().await.expect("text");
        sample(&front, "finalprice_front_idle_connections ", &[]) >= 3.0
    });
    let parked = parked.await;
    let front = app.get("/metrics").await.text().await.expect("text");
    assert!(parked, "the three served connections are parked: {front}");
    let open = sample(&front, "finalprice_front_connections ", &[]);
    let idle = sample(&front, "finalprice_front_idle_connections ", &[]);
    assert!(
        open > idle,
        "the one asking for /metrics is not idle: {front}"
    );
    for socket in &mut kept {
        assert!(healthz_on(socket).await, "served again once parked");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_in_flight_bound_is_shown_beside_the_requests_in_flight() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_in_flight = 37;
    })
    .await;
    let text = app.get("/metrics").await.text().await.expect("text");

    assert_eq!(
        sample(&text, "finalprice_front_http_max_in_flight", &[]),
        37.0,
        "{text}"
    );
    assert!(
        text.contains("\nfinalprice_front_http_requests_in_flight "),
        "{text}"
    );
    app.stop().await;
}
