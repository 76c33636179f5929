//! `finalprice-load` (`just load`): drives a running FinalPrice with order posts over keep-alive
//! connections, then reports confirmed orders per second, outcomes, latency percentiles, the
//! front's memory and CPU (from its `/metrics`), NATS messages per order (from `/varz`), checks
//! the database for every confirmed order, and draws the run as an SVG beside a JSON report.
//!
//! `finalprice-load --help` lists its flags; [`LONG_ABOUT`] says how its closed and open loops
//! differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use finalprice_bench::client::connect;
use finalprice_bench::database::{DatabaseError, OrdersDatabase};
use finalprice_bench::nats::{self, NatsTraffic};
use finalprice_bench::probe::{Probe, ProcessSample, sample_every};
use finalprice_bench::progress::{self, Live};
use finalprice_bench::report::{
    Held, OpenLoop, Outcome, ProcessUse, Run, latency_histogram, peak_resident_bytes, render_json,
    render_svg, render_text,
};
use finalprice_bench::schedule::{LATE, Schedule};
use finalprice_shared::metrics::{own_cpu_seconds, process_cpu_seconds};
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{Barrier, watch};
use uuid::Uuid;

/// jemalloc, as in the front and the worker: the generator shares the two cores it measures, so
/// every instruction it saves is one the order path gets.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Loads a running FinalPrice with order posts; reports confirmed orders per second, latency,
/// errors, the front's memory and CPU, and a database check
#[derive(Debug, Clone, Parser)]
#[command(name = "finalprice-load", version, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Args {
    /// The front to load (http only)
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Keep-alive connections, each posting orders
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = at_least_one)]
    connections: usize,
    /// How long to send orders [default: 30 unless --requests]
    #[arg(long, value_name = "SECONDS")]
    seconds: Option<u64>,
    /// How many orders to send in all
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Open loop: R orders per second on a fixed schedule, each one's latency counted from when
    /// it was due [default: the closed loop]
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Keep every connection open and idle this long after the last is done, to measure the
    /// front holding them
    #[arg(long, value_name = "SECONDS")]
    hold: Option<u64>,
    /// Post urlencoded forms as a browser does (answered 303) instead of JSON (201 or 202)
    #[arg(long)]
    form: bool,
    /// Where the front's memory and CPU are read, its /metrics (a front with an admin listener,
    /// as each of `just up-cluster`'s: 127.0.0.1:9464) [default: the URL's host and port]
    #[arg(long, value_name = "HOST:PORT")]
    front_metrics: Option<String>,
    /// Add this worker's memory and CPU, from its /metrics, to the report
    #[arg(long, value_name = "HOST:PORT")]
    worker_metrics: Option<String>,
    /// Add each local nats-server's CPU per order to the report
    #[arg(long)]
    nats_cpu: bool,
    /// nats-servers' monitoring URLs, comma-separated: NATS messages and bytes per order from
    /// their /varz (`just up-cluster`: add :8223 and :8224; an empty value: none)
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8222"
    )]
    nats_monitor: Vec<String>,
    /// Beside the orders, flood the front with GETs on --beside-connections more connections:
    /// `lookups` asks `GET /orders/{id}` for one id nobody ordered (what an attacker would
    /// send), `pages` asks for the form (`GET /`), the cheapest answer, to compare with
    #[arg(long, value_enum, value_name = "KIND")]
    beside: Option<Beside>,
    /// Connections of the --beside flood
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = at_least_one)]
    beside_connections: usize,
    /// Where to draw the run as SVG
    #[arg(long, value_name = "PATH", default_value = "target/load-report.svg")]
    report: String,
    /// Where to write the report as JSON, for scripts [default: the SVG's path, .json]
    #[arg(long, value_name = "PATH")]
    json: Option<String>,
}

/// What `--beside` floods the front with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Beside {
    Lookups,
    Pages,
}

impl Beside {
    fn path(self, unknown: Uuid) -> String {
        match self {
            Self::Lookups => format!("/orders/{unknown}"),
            Self::Pages => "/".to_owned(),
        }
    }
}

/// How the two loops differ, for `--help`.
const LONG_ABOUT: &str = "\
Loads a running FinalPrice with order posts over keep-alive connections; reports confirmed orders
per second, outcomes, latency percentiles, errors, the front's memory and CPU (from its /metrics),
NATS messages per order (from /varz), and checks the database for every confirmed order.

Without --rate the loop is closed: each connection sends its next order when the last is
answered, which hides queueing from the latencies, so the report adds percentiles corrected for
that. With --rate R the loop is open: order i is due i / R seconds after every connection is
open, sent on whichever connection is free, and its latency counts from when it was due; the
report says how many started over 10 ms late.";

/// The database check and the progress line, for `--help`.
const AFTER_HELP: &str = "\
DATABASE_URL names the database to check every answered order against, opened before the load
starts (unset: no check); `just load` sets it to the SQLite file of `just up` unless it is set, so
name the stack's own database when it runs on another: DATABASE_URL=postgres://... just load ...
A progress line goes to stderr once a second.

Example: just load --connections 256 --seconds 30";

/// `--connections`: a run needs at least one.
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

fn parse_args() -> Args {
    let mut args = Args::parse();
    if args.seconds.is_none() && args.requests.is_none() {
        args.seconds = Some(30);
    }
    args.nats_monitor = args
        .nats_monitor
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    args
}

/// What one connection saw.
struct Lane {
    latency: Histogram<u64>,
    outcomes: Vec<(Uuid, Outcome)>,
    /// Confirmed orders per second since the start.
    confirmed_per_second: Vec<u64>,
    /// Open loop only: send to answer, without the wait for a free connection.
    service: Option<Histogram<u64>>,
    /// Open loop only: requests sent more than `LATE` after they were due, the latest of them,
    /// and when this connection last sent one (from the origin).
    late: u64,
    most_late: Duration,
    last_start: Duration,
    /// Of the late: overdue already when this connection came free for them.
    late_for_a_connection: u64,
}

/// What every connection shares.
struct Shared {
    authority: String,
    args: Args,
    /// The open loop's schedule; `None`: the closed loop.
    schedule: Option<Schedule>,
    /// The closed loop's end (`--seconds`).
    deadline: Option<Instant>,
    /// The next order's number: its phone, and in the open loop its place in the schedule.
    issued: AtomicU64,
    run_base: u64,
    /// Built once for the run, not parsed and hashed again for every request.
    headers: HeaderMap,
    live: Arc<Live>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = parse_args();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // In our words, not anyhow's Debug (which adds a backtrace under RUST_BACKTRACE):
            // what failed and why on the first line, then what to do about it if we know.
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "finalprice-load: {error:#}");
            if let Some(database) = error.downcast_ref::<DatabaseError>() {
                let _ = writeln!(stderr, "finalprice-load: {}", database.hint());
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let authority = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://host:port")?
        .trim_end_matches('/')
        .to_owned();
    let schedule = args
        .rate
        .map(|rate| Schedule::new(rate, args.seconds, args.requests))
        .map(|schedule| schedule.context("--rate must be a positive number of requests per second"))
        .transpose()?;
    let (content_type, accept) = if args.form {
        ("application/x-www-form-urlencoded", "text/html")
    } else {
        ("application/json", "application/json")
    };
    let headers = HeaderMap::from_iter([
        (header::HOST, HeaderValue::from_str(&authority)?),
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::ACCEPT, HeaderValue::from_static(accept)),
    ]);
    // Before any load: a database that cannot be checked is found now, not after the run.
    let database = match std::env::var("DATABASE_URL") {
        Ok(url) => Some(OrdersDatabase::open(&url).await?),
        Err(_) => None,
    };
    // Before the clock starts: a monitor that does not answer costs up to 2 s, not load time.
    let varz_at_start = nats::read_all(&args.nats_monitor).await;

    let started = Instant::now();
    // A distinct phone per order, so the database check can find duplicates by phone.
    // Random, so runs against a database kept between runs use different ranges.
    let run_base: u64 = 9_000_000_000 + (Uuid::new_v4().as_u128() % 900) as u64 * 1_000_000;
    let live = Arc::new(Live::default());
    let shared = Arc::new(Shared {
        authority: authority.clone(),
        args: args.clone(),
        schedule,
        deadline: args
            .seconds
            .filter(|_| schedule.is_none())
            .map(|s| started + Duration::from_secs(s)),
        issued: AtomicU64::new(0),
        run_base,
        headers,
        live: Arc::clone(&live),
    });

    // The front's memory and CPU are read from its own /metrics, so the figures need no access
    // to its host: once at each phase boundary, and every 250 ms for the peak and the picture.
    let front_metrics = args.front_metrics.as_deref().unwrap_or(&authority);
    let mut probe = Probe::new(front_metrics, started);
    let at_start = probe.sample().await;
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_every(
        Probe::new(front_metrics, started),
        Duration::from_millis(250),
        Arc::clone(&samples),
    ));
    let mut worker_probe = args
        .worker_metrics
        .as_deref()
        .map(|at| Probe::new(at, started));
    let worker_at_start = sample_if_any(worker_probe.as_mut()).await;
    let worker_samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker_sampler = args.worker_metrics.as_deref().map(|address| {
        tokio::spawn(sample_every(
            Probe::new(address, started),
            Duration::from_millis(250),
            Arc::clone(&worker_samples),
        ))
    });
    let generator_at_start = own_cpu_seconds();
    let nats_at_start = if args.nats_cpu {
        nats_servers()
    } else {
        Vec::new()
    };

    // The open loop's schedule starts once every connection is open: connecting thousands
    // takes a while, and requests due meanwhile would measure that, not the front. The closed
    // loop starts at once, as it always has.
    let (set_origin, origin) = watch::channel(None);
    let connected = schedule.map(|_| Arc::new(Barrier::new(args.connections + 1)));
    if connected.is_none() {
        let _ = set_origin.send(Some(started));
    }
    // A lane that is done keeps its socket until every lane is, so the front is measured
    // holding all the connections at once, and the hold starts only then.
    let loaded = Arc::new(Barrier::new(args.connections + 1));
    let (release, released) = watch::channel(false);
    // The flood beside the orders runs from the start until every order lane is done.
    let flood_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = args
        .beside
        .map(|kind| {
            let path = kind.path(Uuid::now_v7());
            (0..args.beside_connections)
                .map(|_| {
                    let (authority, path) = (authority.clone(), path.clone());
                    tokio::spawn(flood(authority, path, Arc::clone(&flood_stop)))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut lanes = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (shared, connected, origin) = (Arc::clone(&shared), connected.clone(), origin.clone());
        let (loaded, mut released) = (Arc::clone(&loaded), released.clone());
        lanes.push(tokio::spawn(async move {
            let outcome = lane(&shared, connected.as_deref(), origin).await;
            loaded.wait().await;
            let (lane, sender, busy_until) = outcome?;
            let _ = released.wait_for(|released| *released).await;
            anyhow::Ok((lane, !sender.is_closed(), busy_until.elapsed()))
        }));
    }
    if let Some(connected) = &connected {
        connected.wait().await;
        let _ = set_origin.send(Some(Instant::now()));
    }
    let origin = origin.borrow().expect("set above, for either loop");
    let terminal = std::io::stderr().is_terminal();
    let progress = tokio::spawn(progress::print_every_second(
        Arc::clone(&live),
        origin,
        terminal,
    ));
    loaded.wait().await;
    flood_stop.store(true, Ordering::Relaxed);
    let mut flooded: BTreeMap<String, u64> = BTreeMap::new();
    for flood in floods {
        for (answer, count) in flood.await? {
            *flooded.entry(answer).or_default() += count;
        }
    }
    progress.abort();
    progress::finish(terminal);
    let mut run = Run::new(args.connections, args.form);
    (run.seconds, run.requests, run.hold) = (args.seconds, args.requests, args.hold);
    run.elapsed = origin.elapsed();
    let at_load_end = probe.sample().await;
    let generator_at_load_end = own_cpu_seconds();
    let nats_at_load_end = if args.nats_cpu {
        nats_servers()
    } else {
        Vec::new()
    };
    let worker_at_load_end = sample_if_any(worker_probe.as_mut()).await;
    if let Some(sampler) = worker_sampler {
        sampler.abort();
    }
    let varz_at_load_end = nats::read_all(&args.nats_monitor).await;
    let held_from = started.elapsed();
    if let Some(hold) = args.hold {
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    let at_hold_end = probe.sample().await;
    sampler.abort();
    let _ = release.send(true);
    let (mut held_lanes, mut open_after_hold) = (0, 0);
    let (mut idle_shortest, mut idle_longest) = (Duration::MAX, Duration::ZERO);
    let mut open = schedule.map(|schedule| OpenLoop {
        schedule,
        started: 0,
        late: 0,
        late_for_a_connection: 0,
        most_late: Duration::ZERO,
        last_start: Duration::ZERO,
        service: latency_histogram(),
    });
    for lane in lanes {
        match lane.await? {
            Ok((lane, open_connection, idle)) => {
                held_lanes += 1;
                open_after_hold += usize::from(open_connection);
                idle_shortest = idle_shortest.min(idle);
                idle_longest = idle_longest.max(idle);
                run.latency.add(&lane.latency)?;
                if let (Some(open), Some(service)) = (&mut open, &lane.service) {
                    open.started += lane.outcomes.len() as u64;
                    open.late += lane.late;
                    open.late_for_a_connection += lane.late_for_a_connection;
                    open.most_late = open.most_late.max(lane.most_late);
                    open.last_start = open.last_start.max(lane.last_start);
                    open.service.add(service)?;
                }
                run.outcomes.extend(lane.outcomes);
                for (second, count) in lane.confirmed_per_second.into_iter().enumerate() {
                    *run.confirmed_per_second.entry(second).or_default() += count;
                }
            }
            Err(error) => {
                *run.errors
                    .entry(format!("connection: {error:#}"))
                    .or_default() += 1
            }
        }
    }
    run.open = open;
    let mut samples = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    samples.extend([at_start, at_load_end, at_hold_end].into_iter().flatten());
    samples.sort_by_key(|sample| sample.at);
    run.front = ProcessUse::over_load(at_start, at_load_end, &samples);
    let worker_samples = std::mem::take(&mut *worker_samples.lock().expect("not poisoned"));
    run.worker = ProcessUse::over_load(worker_at_start, worker_at_load_end, &worker_samples);
    run.nats_servers = nats_at_start
        .iter()
        .filter_map(|(pid, label, start)| {
            let (_, _, end) = nats_at_load_end.iter().find(|(other, ..)| other == pid)?;
            Some((format!("nats-server {label} (pid {pid})"), end - start))
        })
        .collect();
    if !args.nats_monitor.is_empty() {
        run.nats = Some(NatsTraffic::between(
            &args.nats_monitor,
            varz_at_start,
            varz_at_load_end,
        ));
    }
    run.generator_cpu_seconds = generator_at_start
        .zip(generator_at_load_end)
        .map(|(start, end)| end - start);
    if let Some(seconds) = args.hold {
        run.held = Some(Held {
            seconds,
            lanes: held_lanes,
            open: open_after_hold,
            idle_shortest: idle_shortest.min(idle_longest),
            idle_longest,
            front_peak_resident_bytes: peak_resident_bytes(&samples, held_from..=Duration::MAX),
            front_end_resident_bytes: at_hold_end.map(|sample| sample.resident_bytes),
        });
    }
    run.front_samples = samples;

    if let Some(database) = &database {
        let last = run_base + shared.issued.load(Ordering::Relaxed);
        let phones = format!("+7{run_base}")..format!("+7{last}");
        run.database = Some(database.check(&run.outcomes, phones).await?);
    }
    std::fs::write(&args.report, render_svg(&run))
        .with_context(|| format!("writing {}", args.report))?;
    let json_path = args.json.clone().unwrap_or_else(|| {
        std::path::Path::new(&args.report)
            .with_extension("json")
            .to_string_lossy()
            .into_owned()
    });
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&render_json(&run))? + "\n",
    )
    .with_context(|| format!("writing {json_path}"))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", render_text(&run))?;
    if let Some(kind) = args.beside {
        let total: u64 = flooded.values().sum();
        let answers: Vec<String> = flooded
            .iter()
            .map(|(answer, count)| format!("{answer} × {count}"))
            .collect();
        writeln!(
            out,
            "beside:    {} connections of {kind:?} ({}): {total} answered, {:.0}/s; {}",
            args.beside_connections,
            kind.path(Uuid::nil())
                .replace(&Uuid::nil().to_string(), "<id>"),
            total as f64 / run.elapsed.as_secs_f64().max(1e-9),
            answers.join(", ")
        )?;
    }
    writeln!(out, "report: {}, {json_path}", args.report)?;
    Ok(())
}

/// One connection of the `--beside` flood: GET `path` back to back until `stop`; how many
/// answers of each status (or failure) it got.
async fn flood(
    authority: String,
    path: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> BTreeMap<String, u64> {
    let mut answers = BTreeMap::new();
    let uri: http::Uri = match path.parse() {
        Ok(uri) => uri,
        Err(_) => return answers,
    };
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(connection) = sender.as_mut() else {
            match connect(&authority).await {
                Ok(connection) => sender = Some(connection),
                Err(_) => {
                    *answers.entry("connect failed".to_owned()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        if let Ok(host) = HeaderValue::from_str(&authority) {
            headers.insert(header::HOST, host);
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let answer = async {
            connection.ready().await?;
            let response = connection.send_request(request).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let key = match answer {
            Ok(status) => status.to_string(),
            Err(_) => {
                sender = None;
                "failed".to_owned()
            }
        };
        *answers.entry(key).or_default() += 1;
    }
    answers
}

/// Every nats-server process on this machine (`--nats-cpu`): pid, a label naming its client
/// port as its command line gives it, and its CPU seconds so far. By process name, since the
/// load tool cannot ask nats-server for its own CPU time (`/varz` has only a momentary rate).
fn nats_servers() -> Vec<(u32, String, f64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "nats-server")
        })
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let port = args
                .windows(2)
                .find(|pair| pair[0] == b"-p" || pair[0] == b"--port")
                .map(|pair| String::from_utf8_lossy(pair[1]).into_owned())
                .unwrap_or_else(|| "4222".to_owned());
            Some((pid, format!("port {port}"), process_cpu_seconds(pid)?))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

/// A sample from `probe`, when there is one to ask.
async fn sample_if_any(probe: Option<&mut Probe>) -> Option<ProcessSample> {
    probe?.sample().await
}

/// One keep-alive connection posting orders until the run ends: back to back in the closed loop,
/// in the open loop the next order due whenever it is free. What it saw, and the connection,
/// still open, for the hold, with when it last sent a request (or began to connect): the
/// earliest the front may have seen it go idle. With thousands of connections this task may
/// learn of an answer or a connection seconds after the front gave it.
async fn lane(
    shared: &Shared,
    connected: Option<&Barrier>,
    mut origin: watch::Receiver<Option<Instant>>,
) -> anyhow::Result<(Lane, SendRequest<Full<Bytes>>, Instant)> {
    let (args, authority) = (&shared.args, shared.authority.as_str());
    let mut lane = Lane {
        latency: latency_histogram(),
        outcomes: Vec::new(),
        confirmed_per_second: Vec::new(),
        service: shared.schedule.map(|_| latency_histogram()),
        late: 0,
        late_for_a_connection: 0,
        most_late: Duration::ZERO,
        last_start: Duration::ZERO,
    };
    let mut busy_until = Instant::now();
    let mut body = String::with_capacity(128);
    let connecting = connect(authority).await;
    // Every lane reaches the barrier, connected or not, or the schedule would never start.
    if let Some(connected) = connected {
        connected.wait().await;
    }
    let mut sender = connecting?;
    let origin = origin
        .wait_for(Option::is_some)
        .await?
        .context("the origin is set before it is announced")?;
    loop {
        let n = match &shared.schedule {
            None => {
                if shared
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline)
                {
                    break;
                }
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if args.requests.is_some_and(|total| n >= total) {
                    break;
                }
                n
            }
            Some(schedule) => {
                // Checked before taking a number, so the one taken is sent.
                if origin.elapsed() > schedule.give_up_after() {
                    break;
                }
                let n = shared.issued.fetch_add(1, Ordering::Relaxed);
                if n >= schedule.total {
                    break;
                }
                n
            }
        };
        // A free connection takes the next order in the schedule and waits until it is due; if
        // it is overdue (every connection was busy), it goes at once.
        let due = match &shared.schedule {
            Some(schedule) => {
                let due = origin + schedule.due(n);
                let free = Instant::now();
                tokio::time::sleep_until(due.into()).await;
                Some((due, free))
            }
            None => None,
        };
        let key = Uuid::now_v7();
        let phone = shared.run_base + n;
        body.clear();
        if args.form {
            write!(body, "name=Load+Test&phone=%2B7{phone}&key={key}")?;
        } else {
            write!(
                body,
                r#"{{"name":"Load Test","phone":"+7{phone}","key":"{key}"}}"#
            )?;
        }
        let mut request = Request::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_static("/orders");
        *request.headers_mut() = shared.headers.clone();
        let sent = Instant::now();
        if let Some((due, free)) = due {
            let late = sent.saturating_duration_since(due);
            if late > LATE {
                lane.late += 1;
                // Overdue before a connection was free: the pool was too small for the front's
                // answers at this rate, rather than the generator short of CPU.
                lane.late_for_a_connection += u64::from(free.saturating_duration_since(due) > LATE);
            }
            lane.most_late = lane.most_late.max(late);
            lane.last_start = sent - origin;
        }
        let answer = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let took = sent.elapsed();
        busy_until = sent;
        let outcome = match answer {
            Ok(201) => Outcome::Accepted,
            Ok(202) => Outcome::Pending,
            Ok(303) => Outcome::Answered,
            Ok(status) => Outcome::Status(status),
            Err(_) => {
                // The connection broke: count it, and open a new one.
                lane.outcomes.push((key, Outcome::Failed));
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
                busy_until = Instant::now();
                sender = connect(authority).await?;
                continue;
            }
        };
        // The open loop counts from when the request was due: a wait for a free connection
        // is part of what a shopper arriving then would see.
        let latency = due.map_or(took, |(due, _)| due.elapsed());
        lane.latency.saturating_record(latency.as_micros() as u64);
        shared.live.record(latency.as_micros() as u64);
        if let Some(service) = &mut lane.service {
            service.saturating_record(took.as_micros() as u64);
        }
        match outcome {
            Outcome::Accepted | Outcome::Answered => {
                shared.live.confirmed.fetch_add(1, Ordering::Relaxed);
                let second = (Instant::now() - origin).as_secs() as usize;
                if lane.confirmed_per_second.len() <= second {
                    lane.confirmed_per_second.resize(second + 1, 0);
                }
                lane.confirmed_per_second[second] += 1;
            }
            Outcome::Status(_) => {
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Pending | Outcome::Failed => {}
        }
        lane.outcomes.push((key, outcome));
    }
    Ok((lane, sender, busy_until))
}
