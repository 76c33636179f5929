//! Every request the front can receive, however broken or hostile, gets a deliberate answer:
//! raw bytes over TCP (no client library to tidy them up), slow clients, idle connections.

use std::time::Duration;

use finalprice_testkit::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// Sends `request` as is and returns the status code of the answer (`None`: no answer).
async fn raw(app: &TestApp, request: &[u8]) -> Option<u16> {
    let text = exchange(app, request, false).await;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `request` as is, shutting down the sending side after it with `half_close`, and
/// returns what came back within 5 s.
async fn exchange(app: &TestApp, request: &[u8], half_close: bool) -> String {
    let address = app.address.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await.expect("connect");
    socket.write_all(request).await.expect("write");
    if half_close {
        socket.shutdown().await.expect("shutdown");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn post(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn every_malformed_or_hostile_request_gets_its_own_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    let form = "application/x-www-form-urlencoded";
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown route", get("/nope"), 404),
        ("encoded dot-dot under /static", get("/static/%2e%2e/Cargo.toml"), 404),
        ("raw dot-dot under /static", get("/static/../../Cargo.toml"), 404),
        ("encoded slash under /static", get("/static/..%2f..%2fCargo.toml"), 404),
        ("absolute path under /static", get("/static//etc/passwd"), 404),
        ("NUL after a static name", get("/static/style.css%00"), 404),
        ("the static file itself", get("/static/style.css"), 200),
        (
            "a header line over the limit",
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
        ),
        (
            "more headers than allowed",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
        ),
        ("not HTTP at all", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), 400),
        ("wrong method on /orders", b"PUT /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(), 405),
        ("wrong content type", post("application/xml", b"<order/>"), 415),
        ("no content type", post("", b"name=Anna"), 415),
        // Decoded lossily: the replacement characters then fail the name rules.
        ("invalid UTF-8 in the form", post(form, b"name=%FF%FE&phone=89991234567"), 422),
        ("invalid UTF-8 in the bytes", post(form, b"name=\xff\xfe&phone=89991234567"), 422),
        ("a JSON body of the wrong shape", post("application/json", br#"{"name": 5}"#), 400),
        ("broken JSON", post("application/json", b"{\"name\":"), 400),
        ("NUL in the name", post(form, b"name=An%00na&phone=89991234567"), 422),
        ("a bidi override in the name", post(form, b"name=Anna%E2%80%AE&phone=89991234567"), 422),
        ("markup in the name", post(form, b"name=%3Cimg+src%3Dx%3E&phone=89991234567"), 422),
        ("SQL in the name", post(form, b"name=x%27%3B+DROP+TABLE+orders%3B--&phone=89991234567"), 422),
        ("a 10 KB name", post(form, format!("name={}&phone=89991234567", "a".repeat(10_000)).as_bytes()), 422),
        ("a body over the limit", post(form, "a".repeat(20_000).as_bytes()), 413),
        (
            "a declared length over the limit",
            b"POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 999999\r\n\r\nname=a".to_vec(),
            413,
        ),
        (
            "a chunked body over the limit",
            [
                b"POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                format!("4e20\r\n{}\r\n0\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            ]
            .concat(),
            413,
        ),
    ];
    for (case, request, expected) in cases {
        assert_eq!(raw(&app, &request).await, Some(expected), "{case}");
    }
    assert_eq!(app.queued().await, 0, "nothing hostile reached the queue");
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "and the front is alive"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_its_sending_side_after_the_order_still_gets_the_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = uuid::Uuid::now_v7();
    let body = format!(r#"{{"name":"Anna","phone":"89991234567","key":"{key}"}}"#);
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Half-close: the request is complete, the answer is still wanted.
    let answer = exchange(&app, request.as_bytes(), true).await;
    // 201, not 202: the worker committed before the answer was written.
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    assert!(answer.contains(&key.to_string()), "{answer}");
    assert!(app.row(key).await.is_some(), "the row behind the 201");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut socket = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow:")
        .await
        .expect("write");

    // A guard, not a measurement: the default timeout (10 s) would not have cut it off by then.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;

    assert!(read.is_ok(), "the front closed the connection");
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_shopper_gets_through_beside_two_thousand_idle_connections() {
    let app = spawn_app(Backend::Sqlite).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(&address).await.expect("connect"));
    }

    let answer = app.post_form("name=Anna&phone=89991234567").await;

    assert_eq!(answer.status(), 303);
    drop(idle);
    assert_eq!(app.get("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_new_client_waits_instead_of_being_refused() {
    let mut app = spawn_app_with(Backend::Sqlite, |config| {
        config.http.max_connections = 20;
        config.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // With a worker the order is answered as soon as it is read, not after the reply timeout.
    app.start_worker().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&address).await.expect("connect"));
    }

    // Every slot is held; the shopper's connection waits in the backlog until the idle ones
    // time out, and is then served.
    let answer = app.post_form("name=Anna&phone=89991234567").await;

    assert_eq!(answer.status(), 303);
    // Served only once the front had let go of an idle connection: without the cap it would
    // be served at once, all 20 still open. The sockets are read directly and without
    // blocking, so their timeout cannot run out while this checks.
    let closed = idle
        .into_iter()
        .map(|socket| socket.into_std().expect("a plain socket"))
        .filter(|socket| {
            // Nonblocking: Ok is the front's goodbye (EOF or a last answer), an error is silence.
            std::io::Read::read(&mut &*socket, &mut [0; 512]).is_ok()
        })
        .count();
    assert!(
        closed > 0,
        "no idle connection was closed before the shopper was served"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_nats_authentication_the_right_credentials_work_and_wrong_ones_fail_safe() {
    use crate::helpers::spawn_app_on;
    let nats = finalprice_testkit::NatsServer::start_with_user("finalprice", "s3cret-pass")
        .expect("nats-server with authentication");
    let mut app = spawn_app_on(nats, Backend::Sqlite, |config| {
        config
            .nats
            .log_in_with_password("finalprice", "s3cret-pass");
    })
    .await;
    app.start_worker().await;
    assert_eq!(
        app.post_form("name=Anna&phone=89991234567").await.status(),
        303
    );
    app.stop().await;

    let wrong = spawn_app_on(
        finalprice_testkit::NatsServer::start_with_user("finalprice", "s3cret-pass").expect("nats"),
        Backend::Sqlite,
        |config| {
            config.nats.log_in_with_password("finalprice", "wrong");
        },
    )
    .await;
    assert_eq!(
        wrong.get("/readyz").await.status(),
        503,
        "not ready without a login"
    );
    let answer = wrong.post_form("name=Anna&phone=89991234567").await;
    assert_eq!(
        answer.status(),
        503,
        "an order is refused with Retry-After, never hangs"
    );
    wrong.stop().await;
}
