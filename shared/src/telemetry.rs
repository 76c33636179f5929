//! Logging and tracing for both services, set up once: `RUST_LOG`-filtered logs (pretty or JSON)
//! and, when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, spans exported over OTLP, chosen by
//! `log.trace_filter` and the sampler, never by `RUST_LOG`.

pub mod nats;

use std::io::IsTerminal as _;
use std::sync::Once;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt, ParseError, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
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
/// reads `OTEL_TRACES_SAMPLER(_ARG)` and the batch processor `OTEL_BSP_*`.
fn span_exporter() -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    let (variable, value) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().map(|value| (name, value)))
    .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
    match value.trim() {
        "grpc" => Ok(SpanExporter::builder().with_tonic().build()?),
        "http/protobuf" => Ok(SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?),
        _ => Err(TelemetryError::Protocol { variable, value }),
    }
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
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(level_filter().and(events_only))
            .boxed(),
    };
    let mut layers = vec![fmt];

    let provider = if otlp_requested() {
        let exporter = span_exporter()?;
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
                .with_filter(trace_filter(&log.trace_filter)?)
                .boxed(),
        );
        Some(provider)
    } else {
        None
    };

    tracing_subscriber::registry().with(layers).try_init()?;
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
