//! What a load run found, as text for the terminal, as JSON for scripts, and as an SVG picture:
//! latency histogram, confirmed orders per second and the front's RSS over time; the memory and
//! CPU of the front, the worker and the load generator itself, NATS messages per order, and
//! connections held.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::database::DatabaseCheck;
use crate::nats::NatsTraffic;
use crate::probe::ProcessSample;
use crate::progress::thousands;
use crate::schedule::{LATE, Schedule, expected_interval_micros};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use uuid::Uuid;

/// How one order was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 201: committed.
    Accepted,
    /// 202: durable, not confirmed in time.
    Pending,
    /// 303 (form posts): committed or pending; the database check tells which.
    Answered,
    /// Any other status.
    Status(u16),
    /// The connection broke before an answer.
    Failed,
}

impl Outcome {
    pub fn label(self) -> String {
        match self {
            Outcome::Accepted => "201 accepted".into(),
            Outcome::Pending => "202 pending".into(),
            Outcome::Answered => "303 answered".into(),
            Outcome::Status(status) => format!("{status}"),
            Outcome::Failed => "connection failed".into(),
        }
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub struct Run {
    pub connections: usize,
    pub form: bool,
    /// `--seconds`, `--requests` and `--hold` as given (or defaulted).
    pub seconds: Option<u64>,
    pub requests: Option<u64>,
    pub hold: Option<u64>,
    /// The open loop's schedule and how the run kept to it (`--rate`); `None`: closed loop.
    pub open: Option<OpenLoop>,
    /// The load phase: in the open loop from the schedule's origin, once every connection is open.
    pub elapsed: Duration,
    /// Microseconds to a request's whole answer: from sending it in the closed loop, from when
    /// it was due in the open loop.
    pub latency: Histogram<u64>,
    pub outcomes: Vec<(Uuid, Outcome)>,
    pub confirmed_per_second: BTreeMap<usize, u64>,
    pub errors: BTreeMap<String, u64>,
    pub database: Option<DatabaseCheck>,
    /// The front's process over the load (unset when its `/metrics` does not report it).
    pub front: Option<ProcessUse>,
    /// A worker's process over the load (`--worker-metrics`).
    pub worker: Option<ProcessUse>,
    /// This load generator's own CPU seconds over the load: it shares the machine.
    pub generator_cpu_seconds: Option<f64>,
    /// Each nats-server's CPU seconds over the load (`--nats-cpu`), by label.
    pub nats_servers: Vec<(String, f64)>,
    /// The idle hold after the load (`--hold`).
    pub held: Option<Held>,
    /// The front's process every 250 ms, load and hold, for the picture.
    pub front_samples: Vec<ProcessSample>,
    /// Each `--nats-monitor` server's `/varz` traffic over the load (`None`: none given).
    pub nats: Option<NatsTraffic>,
}

/// An open-loop run (`--rate`): its schedule and how far it kept to it.
#[derive(Debug)]
pub struct OpenLoop {
    pub schedule: Schedule,
    /// Requests sent (the rest were not started before the run gave up on them).
    pub started: u64,
    /// Started more than [`LATE`] after they were due.
    pub late: u64,
    /// Of those, overdue already when a connection came free for them: every connection was
    /// busy (the rest were sent late by the generator itself: its CPU, its timer).
    pub late_for_a_connection: u64,
    pub most_late: Duration,
    /// When the last request was sent, after the origin.
    pub last_start: Duration,
    /// Microseconds from sending a request to its whole answer: the front's service time,
    /// without the wait for a free connection that `Run::latency` includes.
    pub service: Histogram<u64>,
}

/// A service's process from before the first order to the end of the load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUse {
    pub start: ProcessSample,
    pub end: ProcessSample,
    /// Of every sample in between (taken every 250 ms).
    pub peak_resident_bytes: u64,
}

/// Every connection kept open, idle, after its last order, until all were done and then
/// `seconds` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub seconds: u64,
    /// Connections that got through the load to the hold (the others failed to connect).
    pub lanes: usize,
    /// Of those, still open when the hold ended.
    pub open: usize,
    /// At most, from the front's side: since each connection last sent a request (or began to
    /// connect). The generator may see an answer late, so its own view would understate it.
    pub idle_shortest: Duration,
    pub idle_longest: Duration,
    /// Since the load ended (so it includes memory the load left, on its way back to the OS).
    pub front_peak_resident_bytes: Option<u64>,
    pub front_end_resident_bytes: Option<u64>,
}

impl ProcessUse {
    /// From the samples at the start and end of the load (both needed) and those taken between.
    pub fn over_load(
        start: Option<ProcessSample>,
        end: Option<ProcessSample>,
        between: &[ProcessSample],
    ) -> Option<Self> {
        let (start, end) = (start?, end?);
        let peak_resident_bytes =
            peak_resident_bytes(between.iter().chain([&start, &end]), start.at..=end.at)
                .unwrap_or(end.resident_bytes);
        Some(Self {
            start,
            end,
            peak_resident_bytes,
        })
    }
}

/// The highest resident memory among `samples` taken `within` that span of the run.
pub fn peak_resident_bytes<'a>(
    samples: impl IntoIterator<Item = &'a ProcessSample>,
    within: RangeInclusive<Duration>,
) -> Option<u64> {
    samples
        .into_iter()
        .filter(|sample| within.contains(&sample.at))
        .map(|sample| sample.resident_bytes)
        .max()
}

impl Run {
    pub fn new(connections: usize, form: bool) -> Self {
        Self {
            connections,
            form,
            seconds: None,
            requests: None,
            hold: None,
            open: None,
            elapsed: Duration::ZERO,
            latency: latency_histogram(),
            outcomes: Vec::new(),
            confirmed_per_second: BTreeMap::new(),
            errors: BTreeMap::new(),
            database: None,
            front: None,
            worker: None,
            generator_cpu_seconds: None,
            nats_servers: Vec::new(),
            held: None,
            front_samples: Vec::new(),
            nats: None,
        }
    }

    fn count(&self, wanted: Outcome) -> u64 {
        self.outcomes.iter().filter(|(_, o)| *o == wanted).count() as u64
    }

    fn confirmed(&self) -> u64 {
        self.count(Outcome::Accepted) + self.count(Outcome::Answered)
    }

    /// The closed loop's latencies corrected for coordinated omission, with the expected
    /// interval (µs) used: each connection meant to send every `connections / achieved rate`,
    /// so an answer slower than that hid requests that an open loop would have sent meanwhile.
    /// The interval is known only at the end, hence hdrhistogram's post-recording form of
    /// `record_correct`. `None` in the open loop, which does not need it.
    pub fn corrected(&self) -> Option<(u64, Histogram<u64>)> {
        if self.open.is_some() {
            return None;
        }
        let interval =
            expected_interval_micros(self.connections, self.latency.len(), self.elapsed)?;
        Some((interval, self.latency.clone_correct(interval)))
    }
}

const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// "p50 1.23  p90 …  p99 …  p99.9 …  max …" in ms.
fn percentile_line(latency: &Histogram<u64>) -> String {
    let mut line = String::new();
    for (label, q) in QUANTILES {
        let _ = write!(
            line,
            "{label} {:.2}  ",
            latency.value_at_quantile(q) as f64 / 1e3
        );
    }
    let _ = write!(line, "max {:.2}", latency.max() as f64 / 1e3);
    line
}

/// {"p50": ms, …, "p99_9": ms, "max": ms} (`_` for the point: a plain key for jq).
fn percentiles_json(latency: &Histogram<u64>) -> Value {
    let mut map = serde_json::Map::new();
    for (label, q) in QUANTILES {
        map.insert(
            label.replace('.', "_"),
            json!(latency.value_at_quantile(q) as f64 / 1e3),
        );
    }
    map.insert("max".into(), json!(latency.max() as f64 / 1e3));
    Value::Object(map)
}

/// Microseconds from 1 µs to a minute, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

/// The report for the terminal.
pub fn render_text(run: &Run) -> String {
    let mut out = String::new();
    let seconds = run.elapsed.as_secs_f64().max(1e-9);
    let confirmed = run.confirmed();
    let total = run.outcomes.len() as u64;
    let _ = writeln!(
        out,
        "{} {} posts over {} connections in {:.1} s",
        total,
        if run.form { "form" } else { "JSON" },
        run.connections,
        seconds
    );
    if let Some(open) = &run.open {
        open_loop_lines(&mut out, open);
    }
    let _ = writeln!(
        out,
        "confirmed: {:.0} orders/s ({} of {}), pending: {}",
        confirmed as f64 / seconds,
        confirmed,
        total,
        run.count(Outcome::Pending)
    );
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (_, outcome) in &run.outcomes {
        *kinds.entry(outcome.label()).or_default() += 1;
    }
    let _ = writeln!(out, "answers: {kinds:?}");
    if !run.errors.is_empty() {
        let _ = writeln!(out, "errors: {:?}", run.errors);
    }
    match &run.open {
        Some(open) => {
            let _ = writeln!(
                out,
                "latency ms from the scheduled start: {}",
                percentile_line(&run.latency)
            );
            let _ = writeln!(
                out,
                "service time ms (from the send, without the wait for a connection): {}",
                percentile_line(&open.service)
            );
        }
        None => {
            let _ = writeln!(out, "latency ms: {}", percentile_line(&run.latency));
            if let Some((interval, corrected)) = run.corrected() {
                let _ = writeln!(
                    out,
                    "latency ms, corrected for coordinated omission (expected interval {:.2} ms = {} connections / {:.0} requests/s): {}",
                    interval as f64 / 1e3,
                    run.connections,
                    run.latency.len() as f64 / seconds,
                    percentile_line(&corrected)
                );
            }
        }
    }
    match &run.front {
        Some(front) => process_line(&mut out, "front", front, confirmed),
        None => {
            let _ = writeln!(
                out,
                "front: memory and CPU not reported by its /metrics (a front with an admin \
                 listener serves them there: --front-metrics HOST:PORT)"
            );
        }
    }
    if let Some(worker) = &run.worker {
        process_line(&mut out, "worker", worker, confirmed);
    }
    if confirmed > 0 {
        for (label, cpu) in &run.nats_servers {
            let _ = writeln!(
                out,
                "{label}: CPU {:.1} ms per 1,000 confirmed orders",
                ms_per_thousand(*cpu, confirmed)
            );
        }
    }
    if let Some(cpu) = run.generator_cpu_seconds
        && confirmed > 0
    {
        let _ = writeln!(
            out,
            "load generator: CPU {:.1} ms per 1,000 confirmed orders (it shares the machine)",
            ms_per_thousand(cpu, confirmed)
        );
    }
    if let Some(nats) = &run.nats {
        nats_lines(&mut out, nats, confirmed);
    }
    if let Some(held) = &run.held {
        let _ = write!(
            out,
            "held: {} of {} connections still open after a {} s hold (each idle at most {:.1}–{:.1} s: since it last sent or began to connect)",
            held.open,
            held.lanes,
            held.seconds,
            held.idle_shortest.as_secs_f64(),
            held.idle_longest.as_secs_f64()
        );
        if let (Some(peak), Some(end)) = (
            held.front_peak_resident_bytes,
            held.front_end_resident_bytes,
        ) {
            let _ = write!(
                out,
                "; front RSS {:.1} MiB at the end, {:.1} MiB at the peak since the load ended",
                mib(end),
                mib(peak)
            );
        }
        let _ = writeln!(out);
    }
    match &run.database {
        Some(check) => {
            let _ = writeln!(
                out,
                "database: {} confirmed orders are rows, {} confirmed but missing (must be 0), {} stored twice (must be 0), {} of the pending committed since ({})",
                check.confirmed_found,
                check.confirmed_missing,
                check.doubled,
                check.pending_committed,
                check.database
            );
        }
        None => {
            let _ = writeln!(out, "database: not checked (set DATABASE_URL)");
        }
    }
    out
}

/// The schedule, how many started and how late, and a warning when the generator fell behind.
fn open_loop_lines(out: &mut String, open: &OpenLoop) {
    let schedule = &open.schedule;
    let achieved = schedule.achieved_start_rate(open.started, open.last_start);
    let _ = writeln!(
        out,
        "open loop: {} scheduled at {}/s; {} started, at {}/s; {} started more than {} ms late (the latest {:.1} ms), {} of them waiting for a free connection",
        thousands(schedule.total),
        rate_label(schedule.rate),
        thousands(open.started),
        thousands(achieved.round() as u64),
        thousands(open.late),
        LATE.as_millis(),
        open.most_late.as_secs_f64() * 1e3,
        thousands(open.late_for_a_connection)
    );
    if open.started < schedule.total {
        let _ = writeln!(
            out,
            "warning: {} of the scheduled requests not started: no connection took them before the run gave up on them, {:.0} s after the origin",
            thousands(schedule.total - open.started),
            schedule.give_up_after().as_secs_f64()
        );
    }
    if schedule.fell_behind(open.started, open.last_start) {
        let _ = writeln!(
            out,
            "warning: requests started at {}/s, {:.0} % of the {}/s asked: the generator fell behind (every connection busy, or its CPU short); the latencies include that wait",
            thousands(achieved.round() as u64),
            100.0 * achieved / schedule.rate,
            rate_label(schedule.rate)
        );
    }
}

/// "2,000", or "2.5" for a rate that is not whole.
fn rate_label(rate: f64) -> String {
    if rate.fract() == 0.0 && rate < 1e15 {
        thousands(rate as u64)
    } else {
        format!("{rate}")
    }
}

/// NATS messages and bytes per confirmed order, which servers were counted and which not.
fn nats_lines(out: &mut String, nats: &NatsTraffic, confirmed: u64) {
    for (url, why) in &nats.not_counted {
        let _ = writeln!(out, "nats: {url}/varz not counted: {why}");
    }
    let Some(per) = nats.per_order(confirmed) else {
        if !nats.counted.is_empty() {
            let _ = writeln!(out, "nats: no confirmed orders to divide by");
        }
        return;
    };
    let servers: Vec<String> = nats
        .counted
        .iter()
        .map(|s| format!("{} ({})", s.url, s.server))
        .collect();
    let _ = writeln!(
        out,
        "nats: {:.2} messages per confirmed order (in {:.2} + out {:.2}), {:.0} bytes per order (in + out); /varz of {}{}",
        per.messages,
        per.in_msgs,
        per.out_msgs,
        per.bytes,
        servers.join(", "),
        if nats.includes_routes() {
            ", summed: in a cluster these include the routes' (replication) traffic"
        } else {
            ""
        }
    );
}

/// "name: RSS … at the start, … at the peak, … at the end; CPU … ms per 1,000 confirmed orders".
fn process_line(out: &mut String, name: &str, process: &ProcessUse, confirmed: u64) {
    let _ = write!(
        out,
        "{name}: RSS {:.1} MiB at the start, {:.1} MiB at the peak, {:.1} MiB at the end",
        mib(process.start.resident_bytes),
        mib(process.peak_resident_bytes),
        mib(process.end.resident_bytes),
    );
    if confirmed > 0 {
        let cpu = process.end.cpu_seconds - process.start.cpu_seconds;
        let _ = write!(
            out,
            "; CPU {:.1} ms per 1,000 confirmed orders",
            ms_per_thousand(cpu, confirmed)
        );
    }
    let _ = writeln!(out);
}

/// The report for scripts: the run's settings, the same figures as the text (latencies in ms,
/// memory in MiB, CPU in ms per 1,000 confirmed orders), `null` where a figure was not taken.
pub fn render_json(run: &Run) -> Value {
    let seconds = run.elapsed.as_secs_f64().max(1e-9);
    let confirmed = run.confirmed();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for (_, outcome) in &run.outcomes {
        *outcomes.entry(outcome.label()).or_default() += 1;
    }
    let per_thousand = |cpu: f64| (confirmed > 0).then(|| ms_per_thousand(cpu, confirmed));
    let process = |process: &Option<ProcessUse>| {
        process.as_ref().map(|p| {
            json!({
                "resident_mib": {
                    "start": mib(p.start.resident_bytes),
                    "peak": mib(p.peak_resident_bytes),
                    "end": mib(p.end.resident_bytes),
                },
                "cpu_ms_per_1000_confirmed": per_thousand(p.end.cpu_seconds - p.start.cpu_seconds),
            })
        })
    };
    let corrected = run.corrected().map(|(interval, corrected)| {
        let mut figures = percentiles_json(&corrected);
        figures["expected_interval_ms"] = json!(interval as f64 / 1e3);
        figures
    });
    json!({
        "settings": {
            "mode": if run.open.is_some() { "open" } else { "closed" },
            "rate": run.open.as_ref().map(|open| open.schedule.rate),
            "connections": run.connections,
            "seconds": run.seconds,
            "requests": run.requests,
            "hold": run.hold,
            "body": if run.form { "form" } else { "json" },
        },
        "elapsed_seconds": run.elapsed.as_secs_f64(),
        "posts": run.outcomes.len(),
        "outcomes": outcomes,
        "errors": run.errors,
        "confirmed": confirmed,
        "confirmed_per_second": confirmed as f64 / seconds,
        "pending": run.count(Outcome::Pending),
        "latency_ms": {
            "from": if run.open.is_some() { "scheduled start" } else { "send" },
            "raw": percentiles_json(&run.latency),
            "corrected": corrected,
            "service_time": run.open.as_ref().map(|open| percentiles_json(&open.service)),
        },
        "open_loop": run.open.as_ref().map(|open| {
            let schedule = &open.schedule;
            json!({
                "scheduled": schedule.total,
                "started": open.started,
                "not_started": schedule.total.saturating_sub(open.started),
                "achieved_start_rate": schedule.achieved_start_rate(open.started, open.last_start),
                "fell_behind": schedule.fell_behind(open.started, open.last_start),
                "late_over_ms": LATE.as_millis() as u64,
                "late": open.late,
                "late_for_a_connection": open.late_for_a_connection,
                "most_late_ms": open.most_late.as_secs_f64() * 1e3,
            })
        }),
        "processes": {
            "front": process(&run.front),
            "worker": process(&run.worker),
            "nats_servers": run.nats_servers.iter().map(|(label, cpu)| json!({
                "server": label,
                "cpu_ms_per_1000_confirmed": per_thousand(*cpu),
            })).collect::<Vec<_>>(),
            "load_generator": {
                "cpu_ms_per_1000_confirmed": run.generator_cpu_seconds.and_then(per_thousand),
            },
        },
        "database": run.database.as_ref().map(|check| json!({
            "database": check.database,
            "confirmed_found": check.confirmed_found,
            "confirmed_missing": check.confirmed_missing,
            "doubled": check.doubled,
            "pending_committed": check.pending_committed,
        })),
        "nats": run.nats.as_ref().map(|nats| {
            let per = nats.per_order(confirmed);
            json!({
                "servers": nats.counted.iter().map(|s| json!({
                    "url": s.url,
                    "server": s.server,
                    "in_msgs": s.in_msgs,
                    "out_msgs": s.out_msgs,
                    "in_bytes": s.in_bytes,
                    "out_bytes": s.out_bytes,
                })).collect::<Vec<_>>(),
                "not_counted": nats.not_counted.iter().map(|(url, why)| json!({
                    "url": url,
                    "why": why,
                })).collect::<Vec<_>>(),
                "includes_route_traffic": nats.includes_routes(),
                "in_msgs": nats.in_msgs(),
                "out_msgs": nats.out_msgs(),
                "bytes": nats.bytes(),
                "messages_per_order": per.map(|p| p.messages),
                "in_msgs_per_order": per.map(|p| p.in_msgs),
                "out_msgs_per_order": per.map(|p| p.out_msgs),
                "bytes_per_order": per.map(|p| p.bytes),
            })
        }),
        "held": run.held.as_ref().map(|held| json!({
            "seconds": held.seconds,
            "connections": held.lanes,
            "open": held.open,
            "idle_shortest_seconds": held.idle_shortest.as_secs_f64(),
            "idle_longest_seconds": held.idle_longest.as_secs_f64(),
            "front_peak_resident_mib": held.front_peak_resident_bytes.map(mib),
            "front_end_resident_mib": held.front_end_resident_bytes.map(mib),
        })),
    })
}

fn ms_per_thousand(cpu_seconds: f64, confirmed: u64) -> f64 {
    cpu_seconds * 1e6 / confirmed as f64
}

/// Latency histogram (log scale buckets), confirmed orders per second, and (when the front
/// reported it) the front's RSS over the run and hold.
pub fn render_svg(run: &Run) -> String {
    const W: f64 = 900.0;
    const H: f64 = 260.0;
    let panels = if run.front_samples.is_empty() {
        2.0
    } else {
        3.0
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="12">"##,
        panels * H + 40.0
    );
    let _ = write!(svg, r##"<rect width="100%" height="100%" fill="#fff"/>"##);

    // Latency: buckets doubling from 100 µs.
    let mut buckets: Vec<(u64, u64)> = Vec::new();
    let mut upper = 100u64;
    let mut lower = 0u64;
    while lower <= run.latency.max() && upper <= 120_000_000 {
        let count = run.latency.count_between(lower, upper.saturating_sub(1));
        buckets.push((upper, count));
        lower = upper;
        upper *= 2;
    }
    let peak = buckets.iter().map(|(_, c)| *c).max().unwrap_or(1).max(1) as f64;
    let bar = (W - 80.0) / buckets.len().max(1) as f64;
    let _ = write!(
        svg,
        r##"<text x="10" y="18" font-weight="bold">Latency{} (requests per bucket; bucket upper bound)</text>"##,
        if run.open.is_some() {
            " from the scheduled start"
        } else {
            ""
        }
    );
    let total = buckets.iter().map(|(_, c)| *c).sum::<u64>().max(1) as f64;
    for (i, (upper, count)) in buckets.iter().enumerate() {
        let h = (*count as f64 / peak) * (H - 80.0);
        let x = 60.0 + i as f64 * bar;
        let middle = x + bar / 2.0;
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#0b57d0"/><text x="{middle:.1}" y="{:.1}" font-size="10" text-anchor="middle">≤{}</text>"##,
            H - 40.0 - h,
            bar - 2.0,
            H - 26.0,
            human_micros(*upper)
        );
        if *count > 0 {
            let _ = write!(
                svg,
                r##"<text x="{middle:.1}" y="{:.1}" font-size="10" text-anchor="middle">{:.1}%</text>"##,
                H - 44.0 - h,
                100.0 * *count as f64 / total
            );
        }
    }

    // Throughput per second.
    let top = H + 20.0;
    let _ = write!(
        svg,
        r##"<text x="10" y="{:.1}" font-weight="bold">Confirmed orders per second</text>"##,
        top + 8.0
    );
    // Whole seconds only: the last, partial one would read as a collapse.
    let whole = (run.elapsed.as_secs() as usize).max(1);
    let seconds: Vec<u64> = (0..whole)
        .map(|s| run.confirmed_per_second.get(&s).copied().unwrap_or(0))
        .collect();
    let peak = seconds.iter().copied().max().unwrap_or(0);
    let rate = run.open.as_ref().map(|open| open.schedule.rate);
    let y_max = rate.unwrap_or(0.0).max(peak as f64);
    let plot = Plot::new(top, &ticks(whole as f64, 10), &ticks(y_max, 5), W, H);
    plot.axes(&mut svg, |v| thousands(v.round() as u64));
    if let Some(rate) = rate {
        // The open loop's schedule: confirmed orders below it are orders the front fell behind on.
        let y = plot.y(rate);
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#777" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">scheduled {}/s</text>"##,
            plot.x(0.0),
            plot.x(whole as f64),
            plot.x(whole as f64),
            y - 4.0,
            rate_label(rate)
        );
    }
    // Each second's count at its middle: it is what was confirmed from s to s + 1.
    let points: Vec<String> = seconds
        .iter()
        .enumerate()
        .map(|(i, c)| plot.point(i as f64 + 0.5, *c as f64))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#b3261e" stroke-width="2" points="{}"/><text x="60" y="{:.1}">peak {} /s over {} s</text>"##,
        points.join(" "),
        top + H - 12.0,
        thousands(peak),
        seconds.len()
    );

    if let Some(last) = run.front_samples.last() {
        let top = 2.0 * H + 20.0;
        let _ = write!(
            svg,
            r##"<text x="10" y="{:.1}" font-weight="bold">Front RSS (MiB) over the run{}</text>"##,
            top + 8.0,
            if run.held.is_some() {
                " and the hold"
            } else {
                ""
            }
        );
        let peak = run
            .front_samples
            .iter()
            .map(|sample| sample.resident_bytes)
            .max()
            .unwrap_or(0);
        let span = last.at.as_secs_f64().max(1e-3);
        let plot = Plot::new(top, &ticks(span, 10), &ticks(mib(peak), 5), W, H);
        plot.axes(&mut svg, |v| tick_label(v, plot.y_step));
        let points: Vec<String> = run
            .front_samples
            .iter()
            .map(|sample| plot.point(sample.at.as_secs_f64(), mib(sample.resident_bytes)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#146c2e" stroke-width="2" points="{}"/><text x="60" y="{:.1}">peak {:.1} MiB, last {:.1} MiB, over {:.1} s</text>"##,
            points.join(" "),
            top + H - 12.0,
            mib(peak),
            mib(last.resident_bytes),
            span
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A panel's plot area: x from 60 to 20 short of the width, y from 30 below the panel's top to
/// 40 above its bottom; both axes from 0 to their last tick.
struct Plot {
    top: f64,
    width: f64,
    height: f64,
    x_ticks: Vec<f64>,
    y_ticks: Vec<f64>,
    y_step: f64,
}

impl Plot {
    fn new(top: f64, x_ticks: &[f64], y_ticks: &[f64], width: f64, height: f64) -> Self {
        Self {
            top,
            width,
            height,
            x_ticks: x_ticks.to_vec(),
            y_ticks: y_ticks.to_vec(),
            y_step: y_ticks.get(1).copied().unwrap_or(1.0),
        }
    }

    fn x(&self, value: f64) -> f64 {
        let last = self.x_ticks.last().copied().unwrap_or(1.0).max(1e-9);
        60.0 + value / last * (self.width - 80.0)
    }

    fn y(&self, value: f64) -> f64 {
        let last = self.y_ticks.last().copied().unwrap_or(1.0).max(1e-9);
        self.top + self.height - 40.0 - value / last * (self.height - 70.0)
    }

    fn point(&self, x: f64, y: f64) -> String {
        format!("{:.1},{:.1}", self.x(x), self.y(y))
    }

    /// Grid lines and labels at the y ticks, tick marks and seconds at the x ticks.
    fn axes(&self, svg: &mut String, y_label: impl Fn(f64) -> String) {
        let (left, right) = (
            self.x(0.0),
            self.x(self.x_ticks.last().copied().unwrap_or(1.0)),
        );
        let bottom = self.y(0.0);
        for &value in &self.y_ticks {
            let y = self.y(value);
            let _ = write!(
                svg,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
                left - 5.0,
                y + 3.5,
                y_label(value)
            );
        }
        let x_step = self.x_ticks.get(1).copied().unwrap_or(1.0);
        for &value in &self.x_ticks {
            let x = self.x(value);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 15.0,
                tick_label(value, x_step)
            );
        }
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#444" points="{left:.1},{:.1} {left:.1},{bottom:.1} {right:.1},{bottom:.1}"/><text x="{right:.1}" y="{:.1}" font-size="10" text-anchor="end">seconds since the start</text>"##,
            self.y(self.y_ticks.last().copied().unwrap_or(1.0)),
            bottom + 28.0
        );
    }
}

/// Axis ticks from 0 that cover `max` in at most `most` steps, each step 1, 2 or 5 × 10ⁿ, so the
/// labels are round numbers; the last tick is the axis' top.
pub fn ticks(max: f64, most: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let most = most.max(1);
    let rough = max / most as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        // A hair of slack, so 0.1 × 3 counts as covering 0.3.
        .find(|step| *step * (1.0 + 1e-9) >= rough)
        .unwrap_or(10.0 * magnitude);
    let steps = (max / step - 1e-9).ceil().max(1.0) as usize;
    (0..=steps).map(|i| i as f64 * step).collect()
}

/// A tick's value with as many decimals as its axis' step (1, 2 or 5 × 10ⁿ) needs: "1,500",
/// "2.5", "0.05".
pub fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        return thousands(value.round() as u64);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn human_micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_peak_counts_only_samples_of_the_load() {
        let sample = |ms: u64, mib: u64| ProcessSample {
            at: Duration::from_millis(ms),
            resident_bytes: mib << 20,
            cpu_seconds: ms as f64 / 1000.0,
        };
        let between = [sample(100, 30), sample(250, 50), sample(900, 99)];
        let load = ProcessUse::over_load(Some(sample(0, 10)), Some(sample(500, 20)), &between)
            .expect("both ends sampled");
        assert_eq!(load.peak_resident_bytes, 50 << 20);
        assert_eq!(
            ProcessUse::over_load(None, Some(sample(500, 20)), &between),
            None
        );
    }

    /// A closed-loop run of 10 s over 4 connections: 1,000 orders, 990 confirmed at 2 ms and
    /// 10 answered 503 at 200 ms.
    fn closed_run() -> Run {
        let mut run = Run::new(4, false);
        (run.seconds, run.elapsed) = (Some(10), Duration::from_secs(10));
        for i in 0..1_000u32 {
            let (outcome, micros) = if i < 990 {
                (Outcome::Accepted, 2_000)
            } else {
                (Outcome::Status(503), 200_000)
            };
            run.outcomes.push((Uuid::from_u128(i.into()), outcome));
            run.latency.record(micros).expect("in range");
        }
        run.confirmed_per_second = (0..10).map(|s| (s, 99)).collect();
        let sample = |ms: u64, mib: u64| ProcessSample {
            at: Duration::from_millis(ms),
            resident_bytes: mib << 20,
            cpu_seconds: ms as f64 / 1000.0,
        };
        run.front_samples = vec![sample(0, 10), sample(5_000, 14), sample(10_000, 12)];
        run.front = ProcessUse::over_load(
            Some(sample(0, 10)),
            Some(sample(10_000, 12)),
            &run.front_samples,
        );
        run
    }

    #[test]
    fn the_closed_loop_is_reported_raw_and_corrected() {
        let run = closed_run();
        // 4 connections at 100 requests/s: each meant to send every 40 ms, so each 200 ms
        // answer hid four more requests (at 160, 120, 80 and 40 ms).
        let (interval, corrected) = run.corrected().expect("answers to correct");
        assert_eq!(interval, 40_000);
        assert_eq!(corrected.len(), 1_000 + 10 * 4);
        let text = render_text(&run);
        assert!(
            text.contains("latency ms: p50 2.00  p90 2.00  p99 2.00  p99.9 200.06  max 200.06"),
            "{text}"
        );
        assert!(text.contains("latency ms, corrected for coordinated omission (expected interval 40.00 ms = 4 connections / 100 requests/s): p50 2.00  p90 2.00  p99 160.13  p99.9 200.06  max 200.06"), "{text}");
    }

    #[test]
    fn the_json_report_has_the_settings_counts_and_percentiles() {
        let mut run = closed_run();
        run.nats = Some(NatsTraffic {
            counted: vec![crate::nats::ServerTraffic {
                url: "http://127.0.0.1:8222".into(),
                server: "n1".into(),
                in_msgs: 2_970,
                out_msgs: 3_960,
                in_bytes: 990_000,
                out_bytes: 990_000,
            }],
            not_counted: vec![("http://127.0.0.1:8223".into(), "no answer in 2 s".into())],
        });
        let json = render_json(&run);
        assert_eq!(json["settings"]["mode"], "closed");
        assert_eq!(json["settings"]["rate"], Value::Null);
        assert_eq!(json["settings"]["connections"], 4);
        assert_eq!(json["settings"]["seconds"], 10);
        assert_eq!(json["posts"], 1_000);
        assert_eq!(json["outcomes"]["201 accepted"], 990);
        assert_eq!(json["outcomes"]["503"], 10);
        assert_eq!(json["confirmed"], 990);
        assert_eq!(json["confirmed_per_second"], 99.0);
        assert_eq!(json["latency_ms"]["from"], "send");
        assert_eq!(json["latency_ms"]["raw"]["p50"], 2.0);
        for key in ["p50", "p90", "p99", "p99_9", "max"] {
            assert!(json["latency_ms"]["raw"][key].is_f64(), "{key}");
            assert!(json["latency_ms"]["corrected"][key].is_f64(), "{key}");
        }
        assert_eq!(
            json["latency_ms"]["corrected"]["expected_interval_ms"],
            40.0
        );
        assert_eq!(json["latency_ms"]["service_time"], Value::Null);
        assert_eq!(json["open_loop"], Value::Null);
        assert_eq!(json["processes"]["front"]["resident_mib"]["peak"], 14.0);
        // 10 CPU seconds over 990 orders.
        let front_cpu = json["processes"]["front"]["cpu_ms_per_1000_confirmed"]
            .as_f64()
            .expect("a number");
        assert!((front_cpu - 10_101.01).abs() < 0.01, "{front_cpu}");
        assert_eq!(json["processes"]["worker"], Value::Null);
        assert_eq!(json["database"], Value::Null);
        assert_eq!(json["nats"]["messages_per_order"], 7.0);
        assert_eq!(json["nats"]["in_msgs_per_order"], 3.0);
        assert_eq!(json["nats"]["out_msgs_per_order"], 4.0);
        assert_eq!(json["nats"]["bytes_per_order"], 2_000.0);
        assert_eq!(json["nats"]["includes_route_traffic"], false);
        assert_eq!(
            json["nats"]["not_counted"][0]["url"],
            "http://127.0.0.1:8223"
        );
        let text = render_text(&run);
        assert!(
            text.contains("nats: http://127.0.0.1:8223/varz not counted: no answer in 2 s"),
            "{text}"
        );
        assert!(text.contains("nats: 7.00 messages per confirmed order (in 3.00 + out 4.00), 2000 bytes per order (in + out); /varz of http://127.0.0.1:8222 (n1)\n"), "{text}");
    }

    #[test]
    fn an_open_loop_run_reports_its_schedule_and_falling_behind() {
        let mut run = closed_run();
        let schedule = Schedule::new(200.0, Some(5), None).expect("a schedule");
        run.open = Some(OpenLoop {
            schedule,
            started: 1_000,
            late: 17,
            late_for_a_connection: 15,
            most_late: Duration::from_millis(23),
            // 1,000 started over 10 s: 100/s of the 200/s asked.
            last_start: Duration::from_millis(9_995),
            service: run.latency.clone(),
        });
        assert!(run.corrected().is_none());
        let text = render_text(&run);
        assert!(text.contains("open loop: 1,000 scheduled at 200/s; 1,000 started, at 100/s; 17 started more than 10 ms late (the latest 23.0 ms), 15 of them waiting for a free connection"), "{text}");
        assert!(
            text.contains("warning: requests started at 100/s, 50 % of the 200/s asked"),
            "{text}"
        );
        assert!(
            text.contains("latency ms from the scheduled start: p50 2.00"),
            "{text}"
        );
        assert!(!text.contains("corrected"), "{text}");
        let json = render_json(&run);
        assert_eq!(json["settings"]["mode"], "open");
        assert_eq!(json["settings"]["rate"], 200.0);
        assert_eq!(json["latency_ms"]["from"], "scheduled start");
        assert_eq!(json["latency_ms"]["corrected"], Value::Null);
        assert_eq!(json["latency_ms"]["service_time"]["p50"], 2.0);
        assert_eq!(json["open_loop"]["late"], 17);
        assert_eq!(json["open_loop"]["not_started"], 0);
        assert_eq!(json["open_loop"]["fell_behind"], true);
        assert_eq!(json["open_loop"]["late_for_a_connection"], 15);
        assert!(render_svg(&run).contains(">scheduled 200/s</text>"));
    }

    #[test]
    fn axis_ticks_are_round_and_cover_the_values() {
        assert_eq!(
            ticks(18_684.0, 5),
            [0.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0]
        );
        assert_eq!(ticks(10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            ticks(20.0, 10),
            (0..=10).map(|i| 2.0 * f64::from(i)).collect::<Vec<_>>()
        );
        assert_eq!(ticks(7.0, 10), (0..=7).map(f64::from).collect::<Vec<_>>());
        assert_eq!(ticks(196.7, 5), [0.0, 50.0, 100.0, 150.0, 200.0]);
        // Nothing measured: an axis from 0 to 1 still.
        assert_eq!(ticks(0.0, 5), [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let small = ticks(0.3, 5);
        assert_eq!(small.len(), 4);
        assert!((small[3] - 0.3).abs() < 1e-12);
        assert_eq!(tick_label(15_000.0, 5_000.0), "15,000");
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(0.15, 0.05), "0.15");
    }

    #[test]
    fn the_pictures_panels_have_labelled_axes() {
        let svg = render_svg(&closed_run());
        // Throughput: 0 to 100 orders/s in steps of 20; memory: 0 to 15 MiB in steps of 5.
        for label in [">100</text>", ">80</text>", ">15</text>", ">10</text>"] {
            assert!(svg.contains(label), "{label}");
        }
        assert_eq!(svg.matches("seconds since the start").count(), 2);
        assert!(svg.ends_with("</svg>"));
    }
}
