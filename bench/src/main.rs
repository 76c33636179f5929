//! `finalprice-load` (`just load`): drives a running FinalPrice with order posts over keep-alive
//! connections, then reports confirmed orders per second, outcomes, latency percentiles, the
//! front's memory and CPU (from its `/metrics`), checks the database for every confirmed order,
//! and draws the run as an SVG.
//!
//! Usage: `finalprice-load [--url http://127.0.0.1:8080] [--connections 256] [--seconds 30 |
//! --requests N] [--hold SECONDS] [--form] [--worker-metrics HOST:PORT]
//! [--nats-cpu] [--report target/load-report.svg]`; `--nats-cpu` adds each local nats-server's
//! CPU per order; `--hold` keeps every connection open and idle until the
//! last is done and then that long, to measure the front holding them; `--worker-metrics` adds
//! that worker's memory and CPU to the report; `DATABASE_URL` names the database to check
//! (unset: no check).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use finalprice_bench::client::connect;
use finalprice_bench::probe::{Probe, ProcessSample, sample_every};
use finalprice_bench::report::{
    Held, Outcome, ProcessUse, Run, check_database, latency_histogram, peak_resident_bytes,
    render_svg, render_text,
};
use finalprice_shared::metrics::{own_cpu_seconds, process_cpu_seconds};
use hdrhistogram::Histogram;
use http::{HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{Barrier, watch};
use uuid::Uuid;

/// jemalloc, as in the front and the worker: the generator shares the two cores it measures, so
/// every instruction it saves is one the order path gets.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    connections: usize,
    seconds: Option<u64>,
    requests: Option<u64>,
    hold: Option<u64>,
    form: bool,
    /// A worker's `/metrics` address (host:port).
    worker_metrics: Option<String>,
    /// Report every local nats-server's CPU over the load.
    nats_cpu: bool,
    report: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        connections: 256,
        seconds: None,
        requests: None,
        hold: None,
        form: false,
        worker_metrics: None,
        report: "target/load-report.svg".into(),
        nats_cpu: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--connections" => args.connections = value()?.parse()?,
            "--seconds" => args.seconds = Some(value()?.parse()?),
            "--requests" => args.requests = Some(value()?.parse()?),
            "--hold" => args.hold = Some(value()?.parse()?),
            "--form" => args.form = true,
            "--worker-metrics" => args.worker_metrics = Some(value()?),
            "--nats-cpu" => args.nats_cpu = true,
            "--report" => args.report = value()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.seconds.is_none() && args.requests.is_none() {
        args.seconds = Some(30);
    }
    Ok(args)
}

/// What one connection saw.
struct Lane {
    latency: Histogram<u64>,
    outcomes: Vec<(Uuid, Outcome)>,
    /// Confirmed orders per second since the start.
    confirmed_per_second: Vec<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let authority = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://host:port")?
        .trim_end_matches('/')
        .to_owned();
    let started = Instant::now();
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    let issued = Arc::new(AtomicU64::new(0));
    // A distinct phone per order, so the database check can find duplicates by phone.
    // Random, so runs against a database kept between runs use different ranges.
    let run_base: u64 = 9_000_000_000 + (Uuid::new_v4().as_u128() % 900) as u64 * 1_000_000;

    // The front's memory and CPU are read from its own /metrics, so the figures need no access
    // to its host: once at each phase boundary, and every 250 ms for the peak and the picture.
    let mut probe = Probe::new(&authority, started);
    let at_start = probe.sample().await;
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_every(
        Probe::new(&authority, started),
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

    // A lane that is done keeps its socket until every lane is, so the front is measured
    // holding all the connections at once, and the hold starts only then.
    let loaded = Arc::new(Barrier::new(args.connections + 1));
    let (release, released) = watch::channel(false);
    let mut lanes = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (authority, issued, args) = (authority.clone(), Arc::clone(&issued), args.clone());
        let (loaded, mut released) = (Arc::clone(&loaded), released.clone());
        lanes.push(tokio::spawn(async move {
            let outcome = lane(&authority, &args, deadline, &issued, run_base, started).await;
            loaded.wait().await;
            let (lane, sender, busy_until) = outcome?;
            let _ = released.wait_for(|released| *released).await;
            anyhow::Ok((lane, !sender.is_closed(), busy_until.elapsed()))
        }));
    }
    loaded.wait().await;
    let mut run = Run::new(args.connections, args.form);
    run.elapsed = started.elapsed();
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
    let held_from = started.elapsed();
    if let Some(hold) = args.hold {
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }
    let at_hold_end = probe.sample().await;
    sampler.abort();
    let _ = release.send(true);
    let (mut held_lanes, mut open_after_hold) = (0, 0);
    let (mut idle_shortest, mut idle_longest) = (Duration::MAX, Duration::ZERO);
    for lane in lanes {
        match lane.await? {
            Ok((lane, open, idle)) => {
                held_lanes += 1;
                open_after_hold += usize::from(open);
                idle_shortest = idle_shortest.min(idle);
                idle_longest = idle_longest.max(idle);
                run.latency.add(&lane.latency)?;
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

    if let Ok(url) = std::env::var("DATABASE_URL") {
        let last = run_base + issued.load(Ordering::Relaxed);
        let phones = format!("+7{run_base}")..format!("+7{last}");
        run.database = Some(check_database(&url, &run.outcomes, phones).await?);
    }
    std::fs::write(&args.report, render_svg(&run))
        .with_context(|| format!("writing {}", args.report))?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", render_text(&run))?;
    writeln!(out, "report: {}", args.report)?;
    Ok(())
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

/// One keep-alive connection posting orders back to back until the run ends; what it saw, and
/// the connection, still open, for the hold, with when it last sent a request (or began to
/// connect): the earliest the front may have seen it go idle. With thousands of connections
/// this task may learn of an answer or a connection seconds after the front gave it.
async fn lane(
    authority: &str,
    args: &Args,
    deadline: Option<Instant>,
    issued: &AtomicU64,
    run_base: u64,
    started: Instant,
) -> anyhow::Result<(Lane, SendRequest<Full<Bytes>>, Instant)> {
    let mut lane = Lane {
        latency: latency_histogram(),
        outcomes: Vec::new(),
        confirmed_per_second: Vec::new(),
    };
    let mut busy_until = Instant::now();
    // Built once per connection, not parsed and hashed again for every request.
    let (content_type, accept) = if args.form {
        ("application/x-www-form-urlencoded", "text/html")
    } else {
        ("application/json", "application/json")
    };
    let headers = http::HeaderMap::from_iter([
        (header::HOST, HeaderValue::from_str(authority)?),
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::ACCEPT, HeaderValue::from_static(accept)),
    ]);
    let mut body = String::with_capacity(128);
    let mut sender = connect(authority).await?;
    loop {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if args.requests.is_some_and(|total| n >= total) {
            break;
        }
        let key = Uuid::now_v7();
        let phone = run_base + n;
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
        *request.headers_mut() = headers.clone();
        let sent = Instant::now();
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
                busy_until = Instant::now();
                sender = connect(authority).await?;
                continue;
            }
        };
        lane.latency.saturating_record(took.as_micros() as u64);
        if matches!(outcome, Outcome::Accepted | Outcome::Answered) {
            let second = started.elapsed().as_secs() as usize;
            if lane.confirmed_per_second.len() <= second {
                lane.confirmed_per_second.resize(second + 1, 0);
            }
            lane.confirmed_per_second[second] += 1;
        }
        lane.outcomes.push((key, outcome));
    }
    Ok((lane, sender, busy_until))
}
