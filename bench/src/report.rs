//! What a load run found, as text for the terminal and as an SVG picture: latency histogram,
//! confirmed orders per second and the front's RSS over time; the memory and CPU of the front,
//! the worker and the load generator itself, and connections held.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use crate::probe::ProcessSample;
use finalprice_db::entity::orders;
use hdrhistogram::Histogram;
use sea_orm::{ColumnTrait, Database, EntityTrait, QueryFilter, QuerySelect};
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
    pub elapsed: Duration,
    /// Microseconds from sending a request to its whole answer.
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
        }
    }

    fn count(&self, wanted: Outcome) -> u64 {
        self.outcomes.iter().filter(|(_, o)| *o == wanted).count() as u64
    }
}

/// Microseconds from 1 µs to a minute, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant, valid bounds")
}

/// What the database says about the run's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCheck {
    /// Orders answered 201 (or 303) that are rows.
    pub confirmed_found: u64,
    /// Orders answered 201 that are not rows: must be 0.
    pub confirmed_missing: u64,
    /// Orders answered 202 that are rows by now.
    pub pending_committed: u64,
    /// Rows beyond one per order of this run (each order has a phone of its own): must be 0.
    pub doubled: u64,
    /// Which database was checked (password hidden).
    pub database: String,
}

/// Looks up every answered order (1000 ids per query), and counts the rows of the run's phones
/// (`phones`, all of one length) that are not the first of their phone.
pub async fn check_database(
    url: &str,
    outcomes: &[(Uuid, Outcome)],
    phones: Range<String>,
) -> anyhow::Result<DatabaseCheck> {
    let db = Database::connect(url).await?;
    let mut present = HashSet::new();
    let ids: Vec<Uuid> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Accepted | Outcome::Pending | Outcome::Answered))
        .map(|(id, _)| *id)
        .collect();
    for chunk in ids.chunks(1000) {
        let rows = orders::Entity::find()
            .filter(orders::Column::Id.is_in(chunk.iter().copied()))
            .all(&db)
            .await?;
        present.extend(rows.into_iter().map(|row| row.id));
    }
    let stored: Vec<String> = orders::Entity::find()
        .select_only()
        .column(orders::Column::Phone)
        .filter(orders::Column::Phone.gte(phones.start.as_str()))
        .filter(orders::Column::Phone.lt(phones.end.as_str()))
        .into_tuple()
        .all(&db)
        .await?;
    // Longer numbers sort inside the range too; the run's are all as long as its bounds.
    let mut seen = HashSet::new();
    let doubled = stored
        .into_iter()
        .filter(|phone| phone.len() == phones.start.len())
        .filter(|phone| !seen.insert(phone.clone()))
        .count() as u64;
    let mut check = DatabaseCheck {
        confirmed_found: 0,
        confirmed_missing: 0,
        pending_committed: 0,
        doubled,
        database: finalprice_shared::config::redact_url_password(url),
    };
    for (id, outcome) in outcomes {
        match outcome {
            Outcome::Accepted | Outcome::Answered if present.contains(id) => {
                check.confirmed_found += 1
            }
            Outcome::Accepted => check.confirmed_missing += 1,
            Outcome::Pending if present.contains(id) => check.pending_committed += 1,
            _ => {}
        }
    }
    Ok(check)
}

/// The report for the terminal.
pub fn render_text(run: &Run) -> String {
    let mut out = String::new();
    let seconds = run.elapsed.as_secs_f64().max(1e-9);
    let confirmed = run.count(Outcome::Accepted) + run.count(Outcome::Answered);
    let total = run.outcomes.len() as u64;
    let _ = writeln!(
        out,
        "{} {} posts over {} connections in {:.1} s",
        total,
        if run.form { "form" } else { "JSON" },
        run.connections,
        seconds
    );
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
    let ms = |q: f64| run.latency.value_at_quantile(q) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        run.latency.max() as f64 / 1000.0
    );
    match &run.front {
        Some(front) => process_line(&mut out, "front", front, confirmed),
        None => {
            let _ = writeln!(out, "front: memory and CPU not reported by its /metrics");
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
        r##"<text x="10" y="18" font-weight="bold">Latency (requests per bucket; bucket upper bound)</text>"##
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
    let peak = seconds.iter().copied().max().unwrap_or(1).max(1) as f64;
    let step = (W - 80.0) / seconds.len().max(1) as f64;
    let points: Vec<String> = seconds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{:.1},{:.1}",
                60.0 + i as f64 * step,
                top + H - 40.0 - (*c as f64 / peak) * (H - 70.0)
            )
        })
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#b3261e" stroke-width="2" points="{}"/><text x="60" y="{:.1}">peak {} /s over {} s</text>"##,
        points.join(" "),
        top + H - 20.0,
        peak as u64,
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
            .unwrap_or(1)
            .max(1);
        let span = last.at.as_secs_f64().max(1e-3);
        let points: Vec<String> = run
            .front_samples
            .iter()
            .map(|sample| {
                format!(
                    "{:.1},{:.1}",
                    60.0 + sample.at.as_secs_f64() / span * (W - 80.0),
                    top + H - 40.0 - (sample.resident_bytes as f64 / peak as f64) * (H - 70.0)
                )
            })
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#146c2e" stroke-width="2" points="{}"/><text x="60" y="{:.1}">peak {:.1} MiB, last {:.1} MiB, over {:.1} s</text>"##,
            points.join(" "),
            top + H - 20.0,
            mib(peak),
            mib(last.resident_bytes),
            span
        );
    }
    svg.push_str("</svg>");
    svg
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
    use finalprice_shared::domain::PhoneNumber;
    use finalprice_shared::messages::NewOrder;
    use finalprice_testkit::{Backend, TestDb, order};

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

    #[tokio::test]
    async fn the_check_finds_missing_and_doubled_orders_of_the_run_only() {
        let db = TestDb::new(Backend::Sqlite).await.expect("database");
        let rows = db.connect().await.expect("connect");
        let stored = order("+79000000001");
        let missing = order("+79000000002");
        let pending = order("+79000000003");
        // The same order under another id, and an order of another run.
        let twin = order("+79000000001");
        let other_run = order("+79100000001");
        // Sorts inside the run's range, but is not a phone of the run.
        let longer = NewOrder {
            phone: PhoneNumber::parse_e164("+790000000012").expect("an E.164 phone"),
            ..order("+79000000004")
        };
        orders::Entity::insert_many(
            [&stored, &twin, &other_run, &longer].map(orders::ActiveModel::from),
        )
        .exec(&rows)
        .await
        .expect("insert");
        let outcomes = [
            (stored.id, Outcome::Accepted),
            (missing.id, Outcome::Accepted),
            (pending.id, Outcome::Pending),
        ];

        let check = check_database(
            db.url(),
            &outcomes,
            "+79000000000".to_owned().."+79000000010".to_owned(),
        )
        .await
        .expect("checked");
        assert_eq!(
            (
                check.confirmed_found,
                check.confirmed_missing,
                check.doubled,
                check.pending_committed
            ),
            (1, 1, 1, 0)
        );
    }
}
