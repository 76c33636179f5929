//! Logging and tracing for both services, set up once: `RUST_LOG`-filtered logs (pretty or JSON)
//! and, when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, spans exported over OTLP, chosen by
//! `log.trace_filter` and the sampler, never by `RUST_LOG`; a JSON log line written inside an
//! exported span names its `trace_id` and `span_id`. An `https://` collector is reached over
//! TLS (rustls, ring) trusting the system's roots or `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`.

pub mod nats;

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::{Arc, Once};

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Key, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tracing_subscriber::filter::{FilterExt, ParseError, filter_fn};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Log levels used when `RUST_LOG` is not set: our own crates at info, chatty dependencies
/// quieter.
const DEFAULT_FILTER: &str = "info,sqlx=warn,sea_orm=warn,async_nats=warn,h2=warn,tonic=warn";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("{variable}={value} is not supported: use grpc or http/protobuf")]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("cannot read {variable}={path}")]
    TlsFile {
        variable: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{variable}={path} holds no PEM {what}")]
    TlsPem {
        variable: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("{set} is set without {missing}")]
    TlsIncomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "the system's certificate store holds no usable root; name the collector's CA in {CERTIFICATE}"
    )]
    NoRoots,
    #[error("cannot set up TLS to the collector")]
    Tls(#[from] rustls::Error),
    #[error("cannot start the OTLP/HTTPS client's thread")]
    HttpsThread(#[source] std::io::Error),
    #[error("log.trace_filter is not a filter")]
    TraceFilter(#[from] ParseError),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the span pipeline alive; [`TelemetryGuard::shutdown`] flushes it. Call it last.
#[derive(Debug)]
#[must_use = "dropping the guard without shutdown loses the spans still queued"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still queued and stops the exporter. Blocks, so call it off the
    /// runtime's worker threads (for example from `spawn_blocking`, or after the runtime ended).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing spans at exit failed");
        }
    }
}

/// The log lines' levels: `RUST_LOG`, or the defaults. Each log output builds its own.
fn level_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// The exported spans' filter from `log.trace_filter`: its directives and nothing else, so
/// `RUST_LOG` has no say in it.
pub(crate) fn trace_filter(directives: &str) -> Result<EnvFilter, ParseError> {
    EnvFilter::builder().parse(directives)
}

/// A JSON log line as tracing-subscriber writes it, plus `"trace_id"` and `"span_id"` of the
/// exported span it was written in, so an operator goes from the line to the trace.
///
/// The ids come from OpenTelemetry's current context, which the OTLP layer sets while one of
/// its spans is entered (context activation): the log layer itself sees no spans (see
/// [`init`]). Hence a line names the innermost span that is exported, and none when export is
/// off, outside every span, or in a trace the sampler dropped: an id is only written where a
/// trace can be found by it.
struct JsonWithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for JsonWithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let span = opentelemetry::Context::map_current(|cx| cx.span().span_context().clone());
        if !span.is_sampled() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_trace_ids(&line, &span))
    }
}

/// The JSON log lines' format: the event's fields at the top level, then the trace ids.
fn json_format() -> JsonWithTraceIds<Format<Json>> {
    JsonWithTraceIds(
        tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false),
    )
}

/// `line`, one JSON object and its newline, with `span`'s ids as its last two entries.
fn with_trace_ids(line: &str, span: &SpanContext) -> String {
    let Some(object) = line.trim_end().strip_suffix('}') else {
        return line.to_owned();
    };
    let separator = if object.ends_with('{') { "" } else { "," };
    let mut out = String::with_capacity(line.len() + 64);
    let _ = writeln!(
        out,
        r#"{object}{separator}"trace_id":"{}","span_id":"{}"}}"#,
        span.trace_id(),
        span.span_id()
    );
    out
}

/// Whether the standard OpenTelemetry variables ask for span export.
fn otlp_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    endpoint && !disabled
}

/// The OTLP span exporter for `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`: `grpc` (the default,
/// port 4317) or `http/protobuf` (port 4318; `/v1/traces` is appended to the endpoint). The
/// builders read `OTEL_EXPORTER_OTLP_ENDPOINT`, `_TIMEOUT`, `_HEADERS` themselves; the provider
/// reads `OTEL_TRACES_SAMPLER(_ARG)` and the batch processor `OTEL_BSP_*`. For an `https://`
/// endpoint the TLS variables are read here (see [`CollectorTls`]): the crate reads none of them.
fn span_exporter() -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::{
        Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig,
    };
    let (variable, value) = first_set([
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
    match value.trim() {
        "grpc" => {
            let builder = SpanExporter::builder().with_tonic();
            // Left to the crate for http://, as before: a TLS setup there would change nothing
            // but what a start costs.
            Ok(if endpoint_is_https(true) {
                builder.with_tls_config(CollectorTls::from_env()?.tonic())
            } else {
                builder
            }
            .build()?)
        }
        "http/protobuf" => {
            let builder = SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            Ok(if endpoint_is_https(false) {
                let client = HttpsClient::start(CollectorTls::from_env()?.rustls()?, timeout())?;
                builder.with_http_client(client)
            } else {
                builder
            }
            .build()?)
        }
        _ => Err(TelemetryError::Protocol { variable, value }),
    }
}

/// The first of the two variables (the signal's own first) set to something not blank.
fn first_set(names: [&'static str; 2]) -> Option<(&'static str, String)> {
    names.into_iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .map(|value| (name, value))
    })
}

/// Whether the exporter will dial the collector over TLS: an `https://` endpoint, or, for gRPC,
/// one without a scheme unless `OTEL_EXPORTER_OTLP_INSECURE` (the crate makes that `https://`).
fn endpoint_is_https(grpc: bool) -> bool {
    let Some((_, endpoint)) = first_set([
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]) else {
        return false;
    };
    match endpoint.trim().split_once("://") {
        Some((scheme, _)) if !scheme.contains(['/', '?', '#']) => {
            scheme.eq_ignore_ascii_case("https")
        }
        _ => {
            grpc && !first_set([
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                "OTEL_EXPORTER_OTLP_INSECURE",
            ])
            .is_some_and(|(_, value)| value.trim().eq_ignore_ascii_case("true"))
        }
    }
}

/// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` in milliseconds, 10 s by default, as the crate reads
/// it: a client of our own must keep to it too.
fn timeout() -> std::time::Duration {
    first_set([
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ])
    .and_then(|(_, value)| value.trim().parse().ok())
    .map_or(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis,
    )
}

const CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CERTIFICATE";
const CLIENT_CERTIFICATE: &str = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
const CLIENT_KEY: &str = "OTEL_EXPORTER_OTLP_CLIENT_KEY";

/// A PEM file named by a variable, read and checked at start: a CA that cannot be used must
/// stop the service, not leave it exporting nothing.
#[derive(Debug)]
struct PemFile(Vec<u8>);

impl PemFile {
    /// The file named by the first of `names` that is set.
    fn from_env(names: [&'static str; 2]) -> Result<Option<Self>, TelemetryError> {
        first_set(names)
            .map(|(variable, path)| Self::read(variable, path))
            .transpose()
    }

    /// The file at `path`, named by `variable` in what goes wrong.
    fn read(variable: &'static str, path: String) -> Result<Self, TelemetryError> {
        let pem = std::fs::read(path.trim()).map_err(|source| TelemetryError::TlsFile {
            variable,
            path: path.clone(),
            source,
        })?;
        let file = Self(pem);
        let what = if variable.ends_with("_KEY") {
            file.key().map(|_| ()).ok_or("private key")
        } else if file.certificates().is_empty() {
            Err("certificate")
        } else {
            Ok(())
        };
        what.map(|()| file).map_err(|what| TelemetryError::TlsPem {
            variable,
            path,
            what,
        })
    }

    fn certificates(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&self.0)
            .filter_map(Result::ok)
            .collect()
    }

    fn key(&self) -> Option<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.0).ok()
    }
}

/// TLS to an `https://` collector, from the OpenTelemetry variables (the signal's own first):
/// `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE`, trusted instead of the system's roots, and
/// `OTEL_EXPORTER_OTLP_(TRACES_)CLIENT_CERTIFICATE` with `_CLIENT_KEY` for a collector that
/// asks for a client certificate.
#[derive(Debug)]
struct CollectorTls {
    ca: Option<PemFile>,
    identity: Option<(PemFile, PemFile)>,
}

impl CollectorTls {
    fn from_env() -> Result<Self, TelemetryError> {
        let ca = PemFile::from_env(["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", CERTIFICATE])?;
        let certificate = PemFile::from_env([
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            CLIENT_CERTIFICATE,
        ])?;
        let key = PemFile::from_env(["OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", CLIENT_KEY])?;
        let identity = match (certificate, key) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TelemetryError::TlsIncomplete {
                    set: CLIENT_CERTIFICATE,
                    missing: CLIENT_KEY,
                });
            }
            (None, Some(_)) => {
                return Err(TelemetryError::TlsIncomplete {
                    set: CLIENT_KEY,
                    missing: CLIENT_CERTIFICATE,
                });
            }
        };
        Ok(Self { ca, identity })
    }

    /// For the gRPC exporter; tonic uses ring, as async-nats does.
    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.0)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some((certificate, key)) => config.identity(Identity::from_pem(&certificate.0, &key.0)),
            None => config,
        }
    }

    /// For [`HttpsClient`].
    fn rustls(&self) -> Result<rustls::ClientConfig, TelemetryError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                roots.add_parsable_certificates(ca.certificates());
            }
            None => {
                // Unreadable entries are skipped, as tonic does: one bad file in
                // /etc/ssl/certs must not cost the rest.
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        if roots.is_empty() {
            return Err(TelemetryError::NoRoots);
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((certificate, key)) => builder.with_client_auth_cert(
                certificate.certificates(),
                key.key().ok_or(rustls::Error::NoCertificatesPresented)?,
            )?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// One export handed to [`HttpsClient`]'s thread, and where its answer goes.
type Exchange = (
    http::Request<bytes::Bytes>,
    oneshot::Sender<Result<http::Response<bytes::Bytes>, HttpError>>,
);

/// The OTLP/HTTP exporter's client for an `https://` collector: HTTP/1.1 over rustls with ring,
/// one connection per export (a batch every few seconds at most).
///
/// The crate's own HTTPS client would be reqwest's, whose rustls features bring aws-lc-rs;
/// rustls with both providers would then make every `ClientConfig::builder()` in the process
/// choose. The batch processor runs exports on a thread of its own without Tokio, so the
/// connections are driven by a current-thread runtime on a thread of ours, which also outlives
/// the service's runtime for the flush at exit.
#[derive(Debug)]
struct HttpsClient {
    exports: mpsc::UnboundedSender<Exchange>,
}

impl HttpsClient {
    fn start(
        config: rustls::ClientConfig,
        timeout: std::time::Duration,
    ) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TelemetryError::HttpsThread)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let (exports, mut queue) = mpsc::unbounded_channel::<Exchange>();
        std::thread::Builder::new()
            .name("otlp-https".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some((request, reply)) = queue.recv().await {
                        let answer = tokio::time::timeout(timeout, post(&connector, request))
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}").into()));
                        // Said here: the SDK's own report of a failed export is compiled out
                        // (no `internal-logs`), and a refused certificate must show somewhere.
                        if let Err(error) = &answer {
                            tracing::warn!(error = %chain(error.as_ref()), "exporting spans to the collector failed");
                        }
                        let _ = reply.send(answer);
                    }
                });
            })
            .map_err(TelemetryError::HttpsThread)?;
        Ok(Self { exports })
    }
}

#[async_trait::async_trait]
impl HttpClient for HttpsClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, HttpError> {
        let (reply, answer) = oneshot::channel();
        self.exports
            .send((request, reply))
            .map_err(|_| "the OTLP/HTTPS client's thread has stopped")?;
        answer
            .await
            .map_err(|_| "the OTLP/HTTPS client's thread has stopped")?
    }
}

/// The largest answer read from the collector, as the crate's clients cap it.
const MAX_ANSWER: usize = 4 << 20;

/// One export: connect, TLS, the request in origin form with its `Host`, the whole answer.
async fn post(
    connector: &tokio_rustls::TlsConnector,
    request: http::Request<bytes::Bytes>,
) -> Result<http::Response<bytes::Bytes>, HttpError> {
    use http_body_util::{BodyExt as _, Full, Limited};
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .ok_or("the collector's endpoint names no host")?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let tls = connector.connect(name, tcp).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    parts
        .headers
        .entry(http::header::HOST)
        .or_insert(http::HeaderValue::from_str(authority.as_str())?);
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()?;
    let answer = sender
        .send_request(http::Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = answer.into_parts();
    let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// An error and its causes on one line: rustls's reason is a cause or two down.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let _ = write!(text, ": {error}");
        cause = error.source();
    }
    text
}

/// Installs the global subscriber and, if asked for by `OTEL_*`, the OTLP span pipeline.
/// Must run inside a Tokio runtime (the gRPC exporter needs one).
///
/// `service_name` is used unless `OTEL_SERVICE_NAME` says otherwise, and `service_version` for
/// `service.version` unless `OTEL_RESOURCE_ATTRIBUTES` names one.
pub fn init(
    service_name: &'static str,
    service_version: &'static str,
    log: &LogConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    // Each output has its own filter. Logs take events only: formatting every span's fields
    // for log lines that never show them was a measurable share of the front's CPU per order
    // (perf, see README "Performance"). Spans go to the OTLP layer alone, so with export off a
    // span has no taker and costs next to nothing.
    let events_only = filter_fn(|metadata| metadata.is_event());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            // Colour codes only for a person at a terminal, not in log files and collectors.
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(level_filter().and(events_only))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .event_format(json_format())
            .with_filter(level_filter().and(events_only))
            .boxed(),
    };
    let mut layers = vec![fmt];

    let provider = if otlp_requested() {
        let exporter = match span_exporter() {
            Ok(exporter) => exporter,
            Err(error) => {
                // Logs work without export: the caller only sees a failed start, so the reason
                // (which variable, which file) is said here.
                if tracing_subscriber::registry()
                    .with(layers)
                    .try_init()
                    .is_ok()
                {
                    tracing::error!(error = %chain(&error), "cannot set up span export");
                }
                return Err(error);
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name);
        }
        let version = Key::from_static_str("service.version");
        if EnvResourceDetector::new().detect().get(&version).is_none() {
            resource = resource.with_attribute(KeyValue::new(version, service_version));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        // Its own filter, not `RUST_LOG`'s: with `RUST_LOG=warn` the order's info spans would
        // not be made at all, and not one would reach the collector.
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service_name))
                .with_error_records_to_exceptions(true)
                // Entering a span makes its context current: the JSON log lines read their
                // trace ids there.
                .with_context_activation(true)
                .with_filter(trace_filter(&log.trace_filter)?)
                .boxed(),
        );
        Some(provider)
    } else {
        None
    };

    tracing_subscriber::registry().with(layers).try_init()?;
    // A RUST_LOG that does not parse falls back to the defaults above; said here, once logging
    // works, or an operator would wonder why their levels do nothing.
    if let Ok(directives) = std::env::var(EnvFilter::DEFAULT_ENV)
        && let Err(error) = EnvFilter::builder().parse(&directives)
    {
        tracing::warn!(%error, "RUST_LOG is not a log filter; the default levels apply");
    }
    Ok(TelemetryGuard { provider })
}

/// Logs for tests, installed once per test binary; shown only with `TEST_LOG` set
/// (`TEST_LOG=debug cargo test …`), through the test harness's captured output.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Ok(level) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new(level))
                .with_test_writer()
                .try_init();
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, Sampler, SpanData};

    use super::*;

    /// What the log layer wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs a line outside any span and one inside a span, as `init` sets them up for JSON;
    /// returns the lines and the spans exported.
    fn log_in_and_out_of_a_span(sampler: Sampler) -> (Vec<String>, Vec<SpanData>) {
        let exporter = InMemorySpanExporterBuilder::new().build();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler)
            .build();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(json_format())
                    .with_writer(move || writer.clone())
                    .with_filter(filter_fn(|metadata| metadata.is_event())),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            // Interest is cached per callsite for the whole process; a test on another thread
            // may have cached it without this subscriber.
            tracing::callsite::rebuild_interest_cache();
            tracing::info!("outside");
            tracing::info_span!("order").in_scope(|| tracing::info!(order_id = 7, "inside"));
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("UTF-8");
        // Before the provider is dropped: its shutdown empties the exporter.
        let spans = exporter.get_finished_spans().expect("spans");
        (text.lines().map(str::to_owned).collect(), spans)
    }

    #[test]
    fn a_json_line_inside_an_exported_span_ends_with_its_trace_and_span_ids() {
        let (lines, spans) = log_in_and_out_of_a_span(Sampler::AlwaysOn);
        let span = &spans.first().expect("the span was exported").span_context;

        assert!(!lines[0].contains("trace_id"), "{}", lines[0]);
        let ids = format!(
            r#","trace_id":"{}","span_id":"{}"}}"#,
            span.trace_id(),
            span.span_id()
        );
        assert!(
            lines[1].ends_with(&ids),
            "{} should end with {ids}",
            lines[1]
        );
        let line: serde_json::Value = serde_json::from_str(&lines[1]).expect("still JSON");
        assert_eq!(line["message"], "inside");
        assert_eq!(line["order_id"], 7);
    }

    #[test]
    fn a_json_line_in_a_trace_the_sampler_dropped_names_no_trace() {
        let (lines, spans) = log_in_and_out_of_a_span(Sampler::AlwaysOff);
        assert!(spans.is_empty());
        assert!(!lines[1].contains("trace_id"), "{}", lines[1]);
        assert!(lines[1].contains(r#""message":"inside""#), "{}", lines[1]);
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_names_its_variable() {
        let missing =
            PemFile::read(CERTIFICATE, "/nonexistent/ca.pem".to_owned()).expect_err("no such file");
        assert_eq!(
            missing.to_string(),
            "cannot read OTEL_EXPORTER_OTLP_CERTIFICATE=/nonexistent/ca.pem"
        );
        let not_pem = PemFile::read(CERTIFICATE, "Cargo.toml".to_owned()).expect_err("not PEM");
        assert_eq!(
            not_pem.to_string(),
            "OTEL_EXPORTER_OTLP_CERTIFICATE=Cargo.toml holds no PEM certificate"
        );
        let no_key = PemFile::read(CLIENT_KEY, "Cargo.toml".to_owned()).expect_err("not a key");
        assert!(
            no_key.to_string().ends_with("holds no PEM private key"),
            "{no_key}"
        );
    }

    #[test]
    fn trace_ids_are_added_to_an_empty_object_too() {
        let span = SpanContext::new(
            opentelemetry::trace::TraceId::from(1),
            opentelemetry::trace::SpanId::from(2),
            opentelemetry::trace::TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        assert_eq!(
            with_trace_ids("{}\n", &span),
            format!(
                "{{\"trace_id\":\"{:032x}\",\"span_id\":\"{:016x}\"}}\n",
                1, 2
            )
        );
    }
}
