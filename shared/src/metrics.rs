//! Prometheus metrics: the text encoding both services serve at `/metrics`, the process's own
//! memory and CPU, its version, and the small HTTP listener the worker (which serves nothing
//! else) uses for it, as does the front when given an admin address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[doc(hidden)]
pub use prometheus_client as __prometheus_client;

/// Gives a fieldless enum its label values, spelled as Prometheus' conventions want
/// (`create_order`, not the variant's `CreateOrder` that prometheus-client's derive writes), and
/// a `label()` that returns the same text for logs and tests.
#[macro_export]
macro_rules! label_values {
    ($kind:ident { $($variant:ident => $value:literal),+ $(,)? }) => {
        impl $kind {
            /// Every value, to create each labelled series at 0 before its first event: a
            /// series that appears at 1 shows no increase, so `rate` would miss that event.
            #[allow(dead_code)]
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// This value as the metrics' label shows it.
            pub fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }

        impl $crate::metrics::__prometheus_client::encoding::EncodeLabelValue for $kind {
            fn encode(
                &self,
                encoder: &mut $crate::metrics::__prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                $crate::metrics::__prometheus_client::encoding::EncodeLabelValue::encode(
                    &self.label(),
                    encoder,
                )
            }
        }
    };
}
#[doc(inline)]
pub use crate::label_values;

/// What Prometheus is told it gets (prometheus-client writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets for durations, 0.5 ms to about 16 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// What a scraper that did not ask for OpenMetrics gets: the classic Prometheus text format,
/// which `promtool check metrics` and older scrapers read.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scrape's `Accept` header takes OpenMetrics text, as Prometheus' own scrapes say
/// first; anything else (curl's `*/*`, promtool's input) gets the classic format.
pub fn accepts_openmetrics(accept: Option<&http::HeaderValue>) -> bool {
    accept
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// OpenMetrics text (as [`encode`] writes it) in the classic Prometheus text format 0.0.4:
/// there a counter's `HELP` and `TYPE` name its `_total` samples, an info metric is a gauge
/// named `…_info`, and there is no `UNIT` nor `# EOF`. prometheus-client writes only
/// OpenMetrics; the samples themselves are the same in both.
pub fn classic_text(openmetrics: &str) -> String {
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        let Some((prefix, rest)) = described else {
            text.push_str(line);
            text.push('\n');
            continue;
        };
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let (suffix, kind) = match types.get(name).copied() {
            Some("counter") => ("_total", "counter"),
            Some("info") => ("_info", "gauge"),
            Some("unknown") => ("", "untyped"),
            Some(kind) => ("", kind),
            None => ("", tail),
        };
        let tail = if prefix == "# TYPE " { kind } else { tail };
        text.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
    }
    text
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// The process's resident memory, CPU time, open and allowed file descriptors, threads and start
/// time under the names Prometheus' own clients use (`process_resident_memory_bytes`,
/// `process_cpu_seconds_total`, `process_open_fds`, `process_max_fds`, `process_threads`,
/// `process_start_time_seconds`), read from `/proc` at each scrape: a front holding thousands of
/// sockets runs out of descriptors before memory, and a restart shows as a new start time.
/// Where there is no `/proc` (not Linux), nothing is written.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Registers the collector at the registry's root, so the names carry no service prefix.
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(Self));
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = own_resident_bytes() {
            let gauge = ConstGauge::new(bytes as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                gauge.metric_type(),
            )?)?;
        }
        if let Some(seconds) = own_cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_open_fds",
                "Open file descriptors: each client connection is one",
                own_open_fds(),
            ),
            (
                "process_max_fds",
                "The most file descriptors this process may open (its soft limit)",
                own_max_fds(),
            ),
            ("process_threads", "Operating system threads", own_threads()),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(seconds) = own_start_time_seconds() {
            let gauge = ConstGauge::new(seconds);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time",
                "When the process started, in seconds since the Unix epoch",
                Some(&Unit::Seconds),
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// How many file descriptors this process has open (`None` where there is no `/proc`).
fn own_open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // The listing holds the descriptor that reads it.
    Some(entries.saturating_sub(1))
}

/// This process's soft limit on open files: what `process_open_fds` may reach.
fn own_max_fds() -> Option<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// This process's thread count (`None` where there is no `/proc`).
fn own_threads() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// When this process started, in seconds since the Unix epoch: the boot time (`btime` of
/// `/proc/stat`) plus the process's start (field 22 of `/proc/self/stat`, in ticks since boot).
fn own_start_time_seconds() -> Option<f64> {
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let ticks = start_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(boot as f64 + ticks as f64 / USER_HZ)
}

/// `starttime` of a `/proc/<pid>/stat` line, in ticks since boot.
fn start_ticks(stat: &str) -> Option<u64> {
    // As in cpu_seconds: after the name, starttime (field 22) is the 20th.
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Registers `finalprice_build_info{version="…"} 1` at the registry's root: which release each
/// process runs, so a dashboard shows a rolling upgrade's progress and a figure's release.
/// `version` is the binary's own (`env!("CARGO_PKG_VERSION")` in its crate).
pub fn register_build_info(registry: &mut Registry, version: &'static str) {
    let info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    info.get_or_create(&[("version", version)]).set(1);
    registry.register(
        "finalprice_build_info",
        "The release this process runs, as its version label; always 1",
        info,
    );
}

/// This process's resident memory in bytes (`None` where there is no `/proc`).
pub fn own_resident_bytes() -> Option<u64> {
    resident_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// This process's user and system CPU time so far, in seconds (`None` where there is no `/proc`).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Process `pid`'s user and system CPU time so far, in seconds (`None` where it cannot be read).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The value of the unlabelled sample `name` in an OpenMetrics text (as [`encode`] writes it):
/// how the load tool and the tests read a process's figures back.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Ticks per second of `/proc/<pid>/stat`'s times: 100 on x86 and ARM, the platforms we build for.
const USER_HZ: f64 = 100.0;

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces; count from after it.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `/metrics` response of `registry`, in the format the scrape's `Accept` asks for.
pub fn response(registry: &Registry, accept: Option<&http::HeaderValue>) -> Response<Full<Bytes>> {
    negotiated(encode(registry), accept)
}

/// `openmetrics` (a scrape's text) as OpenMetrics when `accept` takes it, else as the classic
/// Prometheus text, as Prometheus' own client libraries answer.
fn negotiated(openmetrics: String, accept: Option<&http::HeaderValue>) -> Response<Full<Bytes>> {
    let (text, content_type) = if accepts_openmetrics(accept) {
        (openmetrics, CONTENT_TYPE)
    } else {
        (classic_text(&openmetrics), CLASSIC_CONTENT_TYPE)
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Binds the metrics listener. Port 0 (the default) takes a free port, so a second process with
/// the same settings never collides; the bound address is logged.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (and `GET /healthz`) from `registry` until `shutdown` fires.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    serve_with(listener, move || encode(&registry), shutdown).await;
}

/// [`serve`] for a registry held inside something else (the front's, inside its metrics):
/// `scrape` encodes it, once per `GET /metrics`.
pub async fn serve_with<F>(listener: TcpListener, scrape: F, shutdown: CancellationToken)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let scrape = Arc::new(scrape);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(5));
    loop {
        let socket = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    continue;
                }
            },
        };
        let scrape = Arc::clone(&scrape);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let scrape = Arc::clone(&scrape);
            async move {
                let response = match (request.method(), request.uri().path()) {
                    (&Method::GET, "/metrics") => {
                        negotiated(scrape(), request.headers().get(header::ACCEPT))
                    }
                    (&Method::GET, "/healthz") => {
                        Response::new(Full::new(Bytes::from_static(b"ok\n")))
                    }
                    _ => {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *response.status_mut() = StatusCode::NOT_FOUND;
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(socket), service);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_status_text() {
        let status =
            "Name:\tfinalprice-front\nVmHWM:\t   99999 kB\nVmRSS:\t   28160 kB\nThreads:\t3\n";
        assert_eq!(resident_bytes(status), Some(28_160 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 3 0";
        assert_eq!(cpu_seconds(stat), Some(3.8));
        assert_eq!(cpu_seconds("4242 (x) S 1"), None);
    }

    #[test]
    fn the_start_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 3 0 98765 1 2";
        assert_eq!(start_ticks(stat), Some(98_765));
        assert_eq!(start_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn this_process_reports_its_descriptors_threads_and_start_under_the_standard_names() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let text = encode(&registry);
        let open = value(&text, "process_open_fds");
        // The standard streams and the listener at least; fewer than the limit.
        assert!(open >= 4.0, "{text}");
        assert!(open < value(&text, "process_max_fds"), "{text}");
        assert!(value(&text, "process_threads") >= 1.0, "{text}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let started = value(&text, "process_start_time_seconds");
        // This test process started within the last hour, not in the future (clock ticks: 10 ms).
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        drop(listener);
    }

    #[test]
    fn build_info_names_the_version_under_the_conventional_name() {
        let mut registry = Registry::default();
        register_build_info(&mut registry, "1.2.3");
        let text = encode(&registry);
        assert!(
            text.lines()
                .any(|line| line == r#"finalprice_build_info{version="1.2.3"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_drops_what_it_lacks() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc_by(3);
        registry.register("orders", "Orders taken", counter);
        let histogram = prometheus_client::metrics::histogram::Histogram::new([0.5]);
        histogram.observe(0.25);
        registry.register_with_unit("wait", "Time waited", Unit::Seconds, histogram);
        let openmetrics = encode(&registry);
        assert!(
            openmetrics.contains("# TYPE orders counter\n"),
            "{openmetrics}"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

        let classic = classic_text(&openmetrics);
        let expected = "# HELP orders_total Orders taken.\n\
                        # TYPE orders_total counter\n\
                        orders_total 3\n\
                        # HELP wait_seconds Time waited.\n\
                        # TYPE wait_seconds histogram\n\
                        wait_seconds_sum 0.25\n\
                        wait_seconds_count 1\n\
                        wait_seconds_bucket{le=\"0.5\"} 1\n\
                        wait_seconds_bucket{le=\"+Inf\"} 1\n";
        assert_eq!(classic, expected);
    }

    #[test]
    fn prometheus_scrapes_get_openmetrics_and_everyone_else_the_classic_text() {
        let registry = Registry::default();
        let prometheus = http::HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        );
        let curl = http::HeaderValue::from_static("*/*");
        let content_type =
            |accept| response(&registry, accept).headers()[header::CONTENT_TYPE].clone();
        assert_eq!(content_type(Some(&prometheus)), CONTENT_TYPE);
        assert_eq!(content_type(Some(&curl)), CLASSIC_CONTENT_TYPE);
        assert_eq!(content_type(None), CLASSIC_CONTENT_TYPE);
    }

    fn value(text: &str, name: &str) -> f64 {
        sample_value(text, name).unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    }

    #[test]
    fn samples_are_found_by_their_whole_name() {
        let text = "# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes_x 1\nprocess_resident_memory_bytes 29360128\n# EOF\n";
        assert_eq!(sample_value(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(
            sample_value(text, "process_resident_memory_bytes"),
            Some(29_360_128.0)
        );
        assert_eq!(sample_value(text, "process_open_fds"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_its_memory_and_cpu_under_the_standard_names() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let before = encode(&registry);
        // A test process holds at least a few MiB.
        assert!(
            value(&before, "process_resident_memory_bytes") > 1e6,
            "{before}"
        );
        // Spin until the next 10 ms tick is counted; bounded, so a broken reading fails.
        let cpu_before = value(&before, "process_cpu_seconds_total");
        let spin = std::time::Instant::now();
        let mut after = encode(&registry);
        while value(&after, "process_cpu_seconds_total") <= cpu_before
            && spin.elapsed() < std::time::Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                std::hint::black_box(spin.elapsed());
            }
            after = encode(&registry);
        }
        assert!(
            value(&after, "process_cpu_seconds_total") > cpu_before,
            "CPU time did not move in 10 s of spinning:\n{before}\n{after}"
        );
    }
}
