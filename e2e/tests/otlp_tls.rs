//! Trace export to an `https://` collector (issue #28, "TLS on every hop"): a real front
//! exports its spans over OTLP/HTTP and over OTLP/gRPC with TLS to a receiver whose certificate
//! a test CA signed, trusting it by `OTEL_EXPORTER_OTLP_CERTIFICATE` alone; with another CA's
//! certificate nothing arrives, and a CA file that cannot be read stops the start.

use std::sync::Arc;
use std::time::Duration;

use finalprice_testkit::{NatsServer, Service, TestCa, free_port};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

mod otlp;

/// The receiver's certificate and keys must outlive it.
struct TlsReceiver {
    plain: otlp::Receiver,
    endpoint: String,
}

impl TlsReceiver {
    /// The plain receiver behind a TLS terminator with the CA's server certificate: what
    /// arrives decrypted is what the services sent, whichever protocol ALPN chose.
    async fn start(ca: &TestCa) -> Self {
        let plain = otlp::Receiver::start().await;
        let behind = plain.endpoint().trim_start_matches("http://").to_owned();
        let certificates = CertificateDer::pem_file_iter(ca.server_cert_file())
            .expect("server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("PEM");
        let key = PrivateKeyDer::from_pem_file(ca.server_key_file()).expect("server key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        // `localhost`, not the address: the name the certificate is checked against.
        let endpoint = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, behind) = (acceptor.clone(), behind.clone());
                tokio::spawn(async move {
                    // A refused handshake is the point of some tests: nothing to forward.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(&behind).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        Self { plain, endpoint }
    }
}

/// A front exporting to `endpoint` over `protocol` with `extra`; one order, then SIGTERM, which
/// flushes the exporter. Returns its log.
async fn front_exporting(
    endpoint: &str,
    protocol: otlp::Protocol,
    extra: &[(&'static str, String)],
) -> String {
    let nats = NatsServer::start().expect("nats-server");
    let port = free_port().expect("a free port");
    let address = format!("http://127.0.0.1:{port}");
    let env = [
        vec![
            ("NATS_URL", nats.url()),
            ("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}")),
            ("FINALPRICE_HTTP__REPLY_TIMEOUT", "500ms".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol.env_value().to_owned(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ],
        extra.to_vec(),
    ]
    .concat();
    let mut front = Service::start("finalprice-front", &env).expect("front starts");
    let http = reqwest::Client::new();
    front
        .wait_ready(&address, Duration::from_secs(10))
        .await
        .expect("front ready");
    // No worker: whatever the answer, the request makes the front's spans.
    http.post(format!("{address}/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Test&phone=8+999+555-01-99")
        .send()
        .await
        .expect("answer");
    front.terminate().expect("SIGTERM");
    front
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exit");
    front.log()
}

async fn exports_over_tls(protocol: otlp::Protocol) {
    let ca = TestCa::new().expect("CA");
    let receiver = TlsReceiver::start(&ca).await;
    let log = front_exporting(
        &receiver.endpoint,
        protocol,
        &[(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ca.ca_file().display().to_string(),
        )],
    )
    .await;
    let spans = receiver.plain.spans();
    assert!(
        spans.iter().any(|span| span.service == "finalprice-front"),
        "no span of the front's over TLS: {spans:#?}\n{log}"
    );
    for span in &spans {
        assert_eq!(span.protocol, protocol, "{span:#?}");
        assert_eq!(span.version, env!("CARGO_PKG_VERSION"), "{span:#?}");
        assert!(!span.name.is_empty(), "{span:#?}");
        assert_eq!(
            (span.trace_id.len(), span.span_id.len()),
            (32, 16),
            "{span:#?}"
        );
        // TLS changes the hop, not what is exported: still no phone number.
        assert!(!span.text.contains("555-01-99"), "{span:#?}");
    }
}

#[tokio::test]
async fn a_front_exports_over_https_to_a_collector_signed_by_the_given_ca() {
    exports_over_tls(otlp::Protocol::HttpProtobuf).await;
}

#[tokio::test]
async fn a_front_exports_over_grpc_with_tls_to_a_collector_signed_by_the_given_ca() {
    exports_over_tls(otlp::Protocol::Grpc).await;
}

/// Another CA's certificate: the exporter refuses the collector, so nothing arrives.
async fn another_ca_gets_nothing_through(protocol: otlp::Protocol) -> String {
    let (ca, other) = (TestCa::new().expect("CA"), TestCa::new().expect("CA"));
    let receiver = TlsReceiver::start(&ca).await;
    let log = front_exporting(
        &receiver.endpoint,
        protocol,
        &[(
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            other.ca_file().display().to_string(),
        )],
    )
    .await;
    let spans = receiver.plain.spans();
    assert!(spans.is_empty(), "{spans:#?}");
    log
}

#[tokio::test]
async fn over_https_a_collector_another_ca_signed_gets_nothing_and_the_log_says_why() {
    let log = another_ca_gets_nothing_through(otlp::Protocol::HttpProtobuf).await;
    assert!(
        log.contains("exporting spans to the collector failed") && log.contains("UnknownIssuer"),
        "{log}"
    );
}

#[tokio::test]
async fn over_grpc_a_collector_another_ca_signed_gets_nothing() {
    // The SDK's own report of a failed gRPC export is compiled out (no `internal-logs`), so
    // only the absence of spans shows it.
    another_ca_gets_nothing_through(otlp::Protocol::Grpc).await;
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_read_stops_the_start_naming_the_variable() {
    for protocol in [otlp::Protocol::HttpProtobuf, otlp::Protocol::Grpc] {
        let env = [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://localhost:4318".to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                protocol.env_value().to_owned(),
            ),
            (
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "/nonexistent/collector-ca.pem".to_owned(),
            ),
            ("NATS_URL", "nats://127.0.0.1:1".to_owned()),
        ];
        let mut front = Service::start("finalprice-front", &env).expect("front spawned");
        let exit = front
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("exit");
        let log = front.log();
        assert!(!exit.success(), "{protocol:?}: {log}");
        assert!(
            log.contains("OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/collector-ca.pem"),
            "{protocol:?}: {log}"
        );
    }
}
