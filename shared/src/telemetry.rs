//! Logging and tracing for both services, set up once: `RUST_LOG`-filtered logs (pretty or JSON)
//! and, when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, spans exported over OTLP, chosen by
//! `log.trace_filter` and the sampler, never by `RUST_LOG`; a JSON log line written inside an
//! exported span names its `trace_id` and `span_id`.

pub mod nats;

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::sync::Once;

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, ResourceDetector as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
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
            .event_format(json_format())
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
