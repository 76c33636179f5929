//! TLS on every hop to nats-server (issue #28), against a real nats-server that requires it,
//! with certificates each test makes: the services' client trusts the CA it is given and no
//! other, presents a client certificate to a server that asks for one, names the setting to
//! check when a certificate is refused or a file cannot be used, and a real front and worker
//! take an order over TLS configured by environment variables alone. And the worker's hop to
//! PostgreSQL: TLS by `sslmode` in `DATABASE_URL`, trusting only the CA of `sslrootcert`.

use std::time::Duration;

use async_nats::jetstream::stream;
use finalprice_shared::config::{Config, NatsConfig};
use finalprice_shared::nats;
use finalprice_testkit::{Backend, NatsServer, Service, TestCa, TestDb, free_port};

/// A refused or failed connection must be reported within this, not retried behind the caller.
const ANSWERED_WITHIN: Duration = Duration::from_secs(15);

/// The defaults, pointed at `url`, trusting `ca_file`.
fn nats_config(url: &str, ca: Option<&TestCa>) -> NatsConfig {
    let mut config = Config::from_figment(&Config::figment(None))
        .expect("defaults")
        .nats;
    config.url = url.to_owned();
    config.tls.ca_file = ca.map(TestCa::ca_file);
    config
}

/// Connects as the services do, failing the test if that takes longer than a first attempt.
async fn connect(config: &NatsConfig) -> Result<async_nats::Client, nats::SetupError> {
    tokio::time::timeout(ANSWERED_WITHIN, nats::connect(config, "tls-test"))
        .await
        .expect("connect answers")
}

/// The error of a connection that must fail, with its causes on one line.
async fn refused(config: &NatsConfig) -> String {
    match connect(config).await {
        Ok(_) => panic!("connected with {:?}", config.tls),
        Err(error) => {
            let mut text = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(error) = cause {
                text.push_str(&format!(": {error}"));
                cause = error.source();
            }
            text
        }
    }
}

/// A JetStream publish to a stream of its own, and its PubAck.
async fn publish_and_get_the_ack(client: async_nats::Client, config: &NatsConfig) {
    let js = nats::jetstream(client, config);
    js.create_stream(stream::Config {
        name: "TLS_CHECK".into(),
        subjects: vec!["tls.check".into()],
        ..Default::default()
    })
    .await
    .expect("stream created over TLS");
    let ack = js
        .publish("tls.check", "over TLS".into())
        .await
        .expect("handed over")
        .await
        .expect("PubAck over TLS");
    assert_eq!(ack.stream, "TLS_CHECK");
    assert_eq!(ack.sequence, 1);
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_connects_and_gets_its_puback() {
    let ca = TestCa::new().expect("CA");
    let server = NatsServer::start_with_tls(&ca, false).expect("nats-server with TLS");
    assert!(server.url().starts_with("tls://"), "{}", server.url());

    let config = nats_config(&server.url(), Some(&ca));
    let client = connect(&config).await.expect("connects over TLS");
    assert!(client.server_info().tls_required, "the server requires TLS");
    publish_and_get_the_ack(client, &config).await;

    // A nats:// URL to the same server: TLS because the server asks for it, and because
    // `required` says so.
    let mut plain_url = nats_config(&server.url().replace("tls://", "nats://"), Some(&ca));
    plain_url.tls.required = true;
    let client = connect(&plain_url).await.expect("connects over TLS");
    client.flush().await.expect("a round trip over TLS");
}

#[tokio::test]
async fn a_server_certificate_of_another_ca_is_refused_naming_nats_tls_ca_file() {
    let ca = TestCa::new().expect("CA");
    let server = NatsServer::start_with_tls(&ca, false).expect("nats-server with TLS");
    let other = TestCa::new().expect("another CA");

    let error = refused(&nats_config(&server.url(), Some(&other))).await;
    assert!(
        error.contains("check nats.tls.ca_file (FINALPRICE_NATS__TLS__CA_FILE)"),
        "{error}"
    );
    assert!(
        error.contains("does not trust the server's certificate"),
        "{error}"
    );

    // Without a ca_file the system's roots are used, which do not hold a test CA either.
    let error = refused(&nats_config(&server.url(), None)).await;
    assert!(error.contains("nats.tls.ca_file"), "{error}");
}

#[tokio::test]
async fn a_server_that_verifies_clients_takes_only_a_certificate_of_its_ca() {
    let ca = TestCa::new().expect("CA");
    let server = NatsServer::start_with_tls(&ca, true).expect("nats-server verifying clients");

    let mut config = nats_config(&server.url(), Some(&ca));
    let error = refused(&config).await;
    assert!(
        error.contains("check nats.tls.cert_file (FINALPRICE_NATS__TLS__CERT_FILE)"),
        "no client certificate: {error}"
    );

    let other = TestCa::new().expect("another CA");
    config.tls.cert_file = Some(other.client_cert_file());
    config.tls.key_file = Some(other.client_key_file());
    let error = refused(&config).await;
    assert!(
        error.contains("nats.tls.cert_file"),
        "a client certificate of another CA: {error}"
    );

    config.tls.cert_file = Some(ca.client_cert_file());
    config.tls.key_file = Some(ca.client_key_file());
    let client = connect(&config)
        .await
        .expect("the CA's client certificate is taken");
    publish_and_get_the_ack(client, &config).await;
}

#[tokio::test]
async fn a_missing_ca_file_is_refused_before_any_connection() {
    // Nothing listens there: the answer comes from the file alone.
    let url = format!("nats://127.0.0.1:{}", free_port().expect("a port"));
    let mut config = nats_config(&url, None);
    let missing = std::env::temp_dir().join("fp-no-such-dir/ca.pem");
    config.tls.ca_file = Some(missing.clone());
    let error = refused(&config).await;
    assert!(
        error.starts_with(&format!(
            "nats.tls.ca_file (FINALPRICE_NATS__TLS__CA_FILE): {}: No such file or directory",
            missing.display()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn tls_asked_for_by_the_client_refuses_a_server_without_it() {
    let server = NatsServer::start().expect("nats-server without TLS");
    let mut config = nats_config(&server.url(), None);
    config.tls.required = true;
    let error = refused(&config).await;
    assert!(
        error.contains("check nats.tls.required (FINALPRICE_NATS__TLS__REQUIRED)"),
        "{error}"
    );

    // Asked for by the URL instead: that is the setting to check.
    let config = nats_config(&server.url().replace("nats://", "tls://"), None);
    let error = refused(&config).await;
    assert!(
        error.contains("does not speak TLS; check nats.url (NATS_URL)"),
        "{error}"
    );
}

/// The settings a service needs, TLS among them, as environment variables only.
fn service_env(server: &NatsServer, ca: &TestCa, db: &TestDb) -> Vec<(&'static str, String)> {
    let path = |path: std::path::PathBuf| path.display().to_string();
    vec![
        ("NATS_URL", server.url()),
        ("FINALPRICE_NATS__TLS__CA_FILE", path(ca.ca_file())),
        (
            "FINALPRICE_NATS__TLS__CERT_FILE",
            path(ca.client_cert_file()),
        ),
        ("FINALPRICE_NATS__TLS__KEY_FILE", path(ca.client_key_file())),
        ("DATABASE_URL", db.url().to_owned()),
        (
            "FINALPRICE_WORKER__METRICS_ADDR",
            format!("127.0.0.1:{}", free_port().expect("a port")),
        ),
    ]
}

#[tokio::test]
async fn a_front_and_a_worker_take_an_order_over_tls_set_by_environment_variables() {
    let ca = TestCa::new().expect("CA");
    let server = NatsServer::start_with_tls(&ca, true).expect("nats-server verifying clients");
    let db = TestDb::new(Backend::Sqlite).await.expect("database");

    let worker =
        Service::start("finalprice-worker", &service_env(&server, &ca, &db)).expect("worker");
    worker
        .wait_for_log("worker pulling orders", Duration::from_secs(20))
        .await
        .expect("the worker sets up over TLS");
    let port = free_port().expect("a port");
    let mut front_env = service_env(&server, &ca, &db);
    front_env.push(("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}")));
    let front = Service::start("finalprice-front", &front_env).expect("front");
    let http = reqwest::Client::new();
    let address = format!("http://127.0.0.1:{port}");
    front
        .wait_ready(&address, Duration::from_secs(20))
        .await
        .expect("the front is ready over TLS");

    let answer = http
        .post(format!("{address}/orders"))
        .header("accept", "application/json")
        .json(&serde_json::json!({"name": "Anna", "phone": "89991234567"}))
        .send()
        .await
        .expect("order answered");
    assert_eq!(answer.status(), 201, "accepted end to end over TLS");
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["status"], "accepted", "{body}");

    // A front given another CA stops at start, saying which setting to check.
    let other = TestCa::new().expect("another CA");
    let mut wrong = service_env(&server, &other, &db);
    wrong.push((
        "FINALPRICE_HTTP__ADDR",
        format!("127.0.0.1:{}", free_port().expect("a port")),
    ));
    let mut wrong_front = Service::start("finalprice-front", &wrong).expect("front");
    let status = wrong_front
        .wait_exit(ANSWERED_WITHIN)
        .await
        .expect("the front stops");
    assert!(!status.success(), "{status}");
    let log = wrong_front.log();
    assert!(
        log.contains("check nats.tls.ca_file (FINALPRICE_NATS__TLS__CA_FILE)"),
        "{log}"
    );
}

/// `finalprice-worker migrate` against `url`: whether it succeeded, and what it logged.
fn migrate(url: &str) -> (bool, String) {
    let output = finalprice_testkit::clean_command(
        &finalprice_testkit::binary("finalprice-worker").expect("built"),
    )
    .arg("migrate")
    .env("DATABASE_URL", url)
    .output()
    .expect("finalprice-worker runs");
    let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), log)
}

/// One value of `SHOW setting` on `db`.
async fn show(db: &sea_orm::DatabaseConnection, setting: &str) -> String {
    use sea_orm::ConnectionTrait as _;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SHOW {setting}"),
        ))
        .await
        .expect("SHOW")
        .expect("a row");
    row.try_get_by_index::<String>(0).expect("text")
}

#[tokio::test]
async fn postgresql_over_tls_trusts_only_the_ca_of_sslrootcert_and_names_it_when_refused() {
    let db = TestDb::new(Backend::Postgres).await.expect("database");
    let admin = db.connect().await.expect("connect");
    assert_eq!(
        show(&admin, "ssl").await,
        "on",
        "the test PostgreSQL must offer TLS (Debian's and Ubuntu's clusters do: ssl = on)"
    );
    let url = db.url().to_owned();
    let with = |query: &str| {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}{query}")
    };

    // TLS asked for and used: the pool's own session says so.
    let mut config = Config::from_figment(&Config::figment(None))
        .expect("defaults")
        .db;
    config.url = with("sslmode=require");
    config.max_connections = 1;
    let pool = finalprice_db::connect(&config).await.expect("TLS session");
    {
        use sea_orm::ConnectionTrait as _;
        let row = pool
            .query_one_raw(sea_orm::Statement::from_string(
                pool.get_database_backend(),
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ))
            .await
            .expect("pg_stat_ssl")
            .expect("a row");
        assert!(row.try_get_by_index::<bool>(0).expect("bool"), "not TLS");
    }

    // The server's own certificate as the CA: trusted, the real binary migrates.
    let server_certificate = show(&admin, "ssl_cert_file").await;
    assert!(
        std::path::Path::new(&server_certificate).is_file(),
        "{server_certificate}"
    );
    let (ok, log) = migrate(&with(&format!(
        "sslmode=verify-ca&sslrootcert={server_certificate}"
    )));
    assert!(ok, "{log}");

    // Another CA: refused, and the message says what to check.
    let other = TestCa::new().expect("CA");
    let (ok, log) = migrate(&with(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        other.ca_file().display()
    )));
    assert!(
        !ok,
        "a server certificate of another CA was trusted:\n{log}"
    );
    assert!(
        log.contains("not signed by the CA of sslrootcert") && log.contains("DATABASE_URL"),
        "{log}"
    );

    // A CA file that is not there: named before any connection.
    let missing = other.ca_file().with_file_name("missing-ca.pem");
    let (ok, log) = migrate(&with(&format!(
        "sslmode=verify-full&sslrootcert={}",
        missing.display()
    )));
    assert!(!ok, "{log}");
    assert!(
        log.contains(&format!(
            "sslrootcert={} in db.url (DATABASE_URL): No such file",
            missing.display()
        )),
        "{log}"
    );
}
