//! What operators watch, proven against the real thing: the alert rules pass `promtool`'s checks
//! and unit tests and name their runbook sections (which name them back); and a real Prometheus
//! scraping a running production-shaped stack (three nats-servers, streams at R3, two fronts on
//! their admin listeners, two workers, PostgreSQL) under load finds series for every dashboard
//! panel and every rule, reads both services' scrapes as valid Prometheus text, and fires "no
//! worker" and "lag growing" once the workers are gone.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use finalprice_testkit::load::{self, Target};
use finalprice_testkit::{
    Backend, NatsCluster, Service, TestDb, clean_command, eventually, free_port, repository, tool,
};

const RULES: &str = "deploy/prometheus/rules/finalprice.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests/finalprice.test.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/finalprice.json";

/// How long a step waits for what it needs (a cluster forming, a scrape, an alert).
const WAIT: Duration = Duration::from_secs(90);

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new(tool("promtool").expect("promtool (scripts/tools promtool)"))
        .args(args)
        .current_dir(repository())
        .output()
        .expect("promtool runs")
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_rules_pass_promtools_checks_and_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.status.success(), "{}", text(&checked));
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.status.success(), "{}", text(&tested));
    assert!(text(&tested).contains("SUCCESS"), "{}", text(&tested));
    // Compose's Prometheus configuration, as its container reads it.
    let config = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(config.status.success(), "{}", text(&config));
}

/// Every alert of the rule file, with the runbook anchor its annotation names.
fn alerts() -> Vec<(String, String)> {
    let rules = std::fs::read_to_string(repository().join(RULES)).expect("rule file");
    let mut alerts = Vec::new();
    let mut current = None;
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            current = Some(name.to_owned());
        } else if let Some(anchor) = line.strip_prefix("runbook: runbook.md#") {
            let name = current
                .take()
                .expect("a runbook annotation belongs to an alert");
            alerts.push((name, anchor.to_owned()));
        }
    }
    alerts
}

/// GitHub's anchor for a heading: lower case, spaces to hyphens, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_names_its_runbook_section_and_the_runbook_names_every_alert() {
    let alerts = alerts();
    let rules = std::fs::read_to_string(repository().join(RULES)).expect("rule file");
    assert_eq!(
        alerts.len(),
        rules.matches("- alert: ").count(),
        "every alert carries a runbook annotation"
    );
    let runbook = std::fs::read_to_string(repository().join("runbook.md")).expect("runbook");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect();
    for (alert, section) in &alerts {
        assert!(
            anchors.contains(section),
            "{alert}: runbook.md has no section #{section}"
        );
        assert_eq!(
            section,
            &alert.to_lowercase(),
            "{alert}: its section is the one named after it"
        );
    }
    // And back: each alert section of the runbook (a heading that is an alert's name) is a
    // rule's, and the runbook names every alert in its table too.
    let named: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    for heading in runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### FinalPrice"))
    {
        let alert = format!("FinalPrice{}", heading.trim());
        assert!(
            named.contains(alert.as_str()),
            "runbook.md section {alert} names no alert of {RULES}"
        );
    }
    for (alert, section) in &alerts {
        assert!(
            runbook.contains(&format!("[{alert}](#{section})")),
            "runbook.md's alert table does not link {alert}"
        );
    }
}

/// A Prometheus of the test's own on a free port, scraping `fronts` and `workers` every second
/// and evaluating the shipped rules every second, with their `for:` cut to a few seconds.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(fronts: &[String], workers: &[String]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fp-prometheus-")
            .tempdir()
            .expect("temp dir");
        let rules = std::fs::read_to_string(repository().join(RULES)).expect("rule file");
        std::fs::write(dir.path().join("rules.yml"), short_for(&rules)).expect("rules copy");
        let targets = |addresses: &[String]| {
            addresses
                .iter()
                .map(|address| format!("'{address}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n\
             \x20 - job_name: finalprice-front\n    static_configs: [{{targets: [{fronts}]}}]\n\
             \x20 - job_name: finalprice-worker\n    static_configs: [{{targets: [{workers}]}}]\n",
            rules = dir.path().join("rules.yml").display(),
            fronts = targets(fronts),
            workers = targets(workers),
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("config");
        let port = free_port().expect("a free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = clean_command(Path::new(
            &tool("prometheus").expect("prometheus (scripts/tools prometheus)"),
        ))
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's result vector; `Err` with Prometheus' error for a query it refused.
    async fn query(
        &self,
        http: &reqwest::Client,
        expr: &str,
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut url = reqwest::Url::parse(&format!("{}/api/v1/query", self.url))
            .map_err(|error| error.to_string())?;
        url.query_pairs_mut().append_pair("query", expr);
        let answer: serde_json::Value = http
            .get(url)
            .send()
            .await
            .map_err(|error| error.to_string())?
            .json()
            .await
            .map_err(|error| error.to_string())?;
        if answer["status"] != "success" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Names of the alerts in state `firing` now.
    async fn firing(&self, http: &reqwest::Client) -> BTreeSet<String> {
        let Ok(answer) = http.get(format!("{}/api/v1/alerts", self.url)).send().await else {
            return BTreeSet::new();
        };
        let answer: serde_json::Value = answer.json().await.unwrap_or_default();
        answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["state"] == "firing")
            .filter_map(|alert| alert["labels"]["alertname"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rule file with every `for:` cut to 3 s, so that alerts fire within a test; thresholds
/// and expressions stay as shipped.
fn short_for(rules: &str) -> String {
    rules
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 3s"),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every query of the dashboard with its panel's title, `$__rate_interval` filled as Grafana
/// would at this scrape interval.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join(DASHBOARD)).expect("dashboard"),
    )
    .expect("dashboard JSON");
    fn walk(panels: &serde_json::Value, into: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    into.push((title.clone(), expr.replace("$__rate_interval", "1m")));
                }
            }
            walk(&panel["panels"], into);
        }
    }
    let mut queries = Vec::new();
    walk(&dashboard["panels"], &mut queries);
    queries
}

/// The series selectors an expression reads (of our metrics, the process metrics and `up`),
/// each with its label matchers: `up{job="finalprice-worker"}`.
fn selectors(expr: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find(is_name) {
        let word = &rest[start..];
        let end = word.find(|c: char| !is_name(c)).unwrap_or(word.len());
        let (name, after) = word.split_at(end);
        let matchers = after
            .strip_prefix('{')
            .and_then(|inner| Some(&after[..inner.find('}')? + 2]))
            .unwrap_or("");
        if name.starts_with("finalprice_") || name.starts_with("process_") || name == "up" {
            found.insert(format!("{name}{matchers}"));
        }
        rest = &after[matchers.len()..];
    }
    found
}

#[test]
fn selectors_keep_their_label_matchers() {
    let found = selectors(
        "sum by (kind) (rate(finalprice_front_publish_failures_total{kind=\"refused\"}[5m])) \
         / process_max_fds and absent(up{job=\"finalprice-worker\"} == 1) > finalprice:x",
    );
    let expected: BTreeSet<String> = [
        "finalprice_front_publish_failures_total{kind=\"refused\"}",
        "process_max_fds",
        "up{job=\"finalprice-worker\"}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
}

/// `promtool check metrics` on one scrape, as a plain `curl` would take it (classic text).
async fn check_metrics(http: &reqwest::Client, url: &str) {
    let scrape = http
        .get(url)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape text");
    let mut check = Command::new(tool("promtool").expect("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin
            .write_all(scrape.as_bytes())
            .expect("scrape to promtool");
    }
    let checked = check.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success() && text(&checked).trim().is_empty(),
        "promtool check metrics on {url}:\n{}\n---- the scrape:\n{scrape}",
        text(&checked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_finds_every_panel_and_rule_and_alerts_when_the_workers_stop() {
    let cluster = NatsCluster::start().await.expect("a three-node cluster");
    let db = TestDb::new(Backend::Postgres).await.expect("database");
    let rows = db.connect().await.expect("connect");
    let env = |extra: Vec<(&'static str, String)>| {
        [
            vec![
                ("NATS_URL", cluster.urls()),
                ("FINALPRICE_NATS__STREAM_REPLICAS", "3".to_owned()),
                ("DATABASE_URL", db.url().to_owned()),
                // Orders pile up fast once the workers are gone: each waits this long.
                ("FINALPRICE_HTTP__REPLY_TIMEOUT", "300ms".to_owned()),
                ("FINALPRICE_DB__MAX_CONNECTIONS", "4".to_owned()),
            ],
            extra,
        ]
        .concat()
    };
    let mut workers = Vec::new();
    let mut worker_addresses = Vec::new();
    for _ in 0..2 {
        let address = format!("127.0.0.1:{}", free_port().expect("port"));
        let worker = Service::start(
            "finalprice-worker",
            &env(vec![("FINALPRICE_WORKER__METRICS_ADDR", address.clone())]),
        )
        .expect("worker starts");
        workers.push(worker);
        worker_addresses.push(address);
    }
    let mut fronts = Vec::new();
    let mut front_urls = Vec::new();
    let mut admin_addresses = Vec::new();
    for _ in 0..2 {
        let port = free_port().expect("port");
        let admin = format!("127.0.0.1:{}", free_port().expect("port"));
        let front = Service::start(
            "finalprice-front",
            &env(vec![
                ("FINALPRICE_HTTP__ADDR", format!("127.0.0.1:{port}")),
                ("FINALPRICE_HTTP__ADMIN_ADDR", admin.clone()),
            ]),
        )
        .expect("front starts");
        fronts.push(front);
        front_urls.push(format!("http://127.0.0.1:{port}"));
        admin_addresses.push(admin);
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    for worker in &workers {
        worker
            .wait_for_log("worker pulling orders", WAIT)
            .await
            .expect("worker pulling");
    }
    for (front, url) in fronts.iter().zip(&front_urls) {
        let ready = eventually(WAIT, || async {
            let answer = http.get(format!("{url}/readyz")).send().await;
            answer.is_ok_and(|answer| answer.status() == 200)
        });
        assert!(ready.await, "front not ready:\n{}", front.log());
    }

    let prometheus = Prometheus::start(&admin_addresses, &worker_addresses);
    let ready = eventually(WAIT, || async {
        http.get(format!("{}/-/ready", prometheus.url))
            .send()
            .await
            .is_ok_and(|answer| answer.status() == 200)
    });
    assert!(ready.await, "prometheus not ready:\n{}", prometheus.log());

    // Orders from 16 clients, half to each front, for the whole test.
    let stop = AtomicBool::new(false);
    let targets: Vec<Target<'_>> = front_urls
        .iter()
        .map(|base_url| Target {
            base_url,
            http: &http,
            rows: &rows,
        })
        .collect();
    let load = load::sustain(&targets, 16, 9_000_000_000, &stop);
    let checks = async {
        // Each service's scrape is valid Prometheus text, names and help included.
        for address in admin_addresses.iter().chain(&worker_addresses) {
            check_metrics(&http, &format!("http://{address}/metrics")).await;
        }
        // Every target up, and rates over a minute need two scrapes of orders flowing.
        let scraped = eventually(WAIT, || async {
            let up = prometheus.query(&http, "sum(up)").await.unwrap_or_default();
            let committed = prometheus
                .query(
                    &http,
                    "sum(rate(finalprice_worker_orders_committed_total[1m])) > 0",
                )
                .await
                .unwrap_or_default();
            up.first().and_then(|sample| sample["value"][1].as_str()) == Some("4")
                && !committed.is_empty()
        });
        assert!(
            scraped.await,
            "targets not up or no orders seen:\n{}",
            prometheus.log()
        );
        // Give every rate window and every follower's report a few more scrapes.
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut empty = Vec::new();
        let queries = dashboard_queries();
        assert!(queries.len() > 40, "{DASHBOARD}: {queries:?}");
        for (title, expr) in queries {
            match prometheus.query(&http, &expr).await {
                Err(error) => panic!("panel {title:?}: {expr} failed: {error}"),
                Ok(result) if result.is_empty() => empty.push(format!("{title}: {expr}")),
                Ok(_) => {}
            }
        }
        assert!(
            empty.is_empty(),
            "panels without data:\n{}",
            empty.join("\n")
        );

        // The rules as Prometheus evaluated them: none in error, every recording with series,
        // and every metric an alert reads present.
        let rules: serde_json::Value = http
            .get(format!("{}/api/v1/rules", prometheus.url))
            .send()
            .await
            .expect("rules")
            .json()
            .await
            .expect("rules JSON");
        let mut alert_selectors = BTreeSet::new();
        let mut evaluated = 0;
        for rule in rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        {
            evaluated += 1;
            let name = rule["name"].as_str().unwrap_or_default();
            assert_eq!(rule["health"], "ok", "rule {name}: {rule}");
            let query = rule["query"].as_str().unwrap_or_default();
            if rule["type"] == "recording" {
                let result = prometheus.query(&http, name).await.expect("recorded");
                assert!(
                    !result.is_empty(),
                    "recording {name} ({query}) has no series"
                );
            } else {
                alert_selectors.extend(selectors(query));
            }
        }
        assert_eq!(evaluated, 18, "every rule of {RULES} loaded: {rules}");
        // An alert is quiet on a healthy stack, so its whole expression returns nothing; each
        // series it reads must exist, its label values included (a typo or a rename would
        // leave it quiet forever).
        assert!(alert_selectors.len() > 15, "{alert_selectors:?}");
        for selector in &alert_selectors {
            let result = prometheus
                .query(&http, &format!("count({selector})"))
                .await
                .expect("count");
            assert!(
                !result.is_empty(),
                "an alert reads {selector}, which no target exports"
            );
        }
        // The stream's gauges are refreshed every 5 s, so one snapshot of a follower a moment
        // behind outlasts the test copy's 3 s `for:` (the shipped 2 m needs two dozen in a
        // row). A healthy stack is one where every alert falls quiet within a few refreshes;
        // an expression that holds all the time still fails here.
        let quiet = eventually(Duration::from_secs(20), || async {
            prometheus.firing(&http).await.is_empty()
        })
        .await;
        let firing = prometheus.firing(&http).await;
        assert!(quiet, "a healthy stack under load keeps firing {firing:?}");
    };
    // The load runs beside the checks; it stops once the alerts fired or the wait ran out.
    let alerting = async {
        checks.await;
        for worker in &mut workers {
            worker.kill();
        }
        let wanted = ["FinalPriceNoWorker", "FinalPriceOrdersLagGrowing"];
        let fired = eventually(WAIT, || async {
            let firing = prometheus.firing(&http).await;
            wanted.iter().all(|alert| firing.contains(*alert))
        })
        .await;
        let firing = prometheus.firing(&http).await;
        let waiting = prometheus
            .query(&http, "finalprice:orders_waiting:max")
            .await
            .unwrap_or_default();
        stop.store(true, Ordering::Relaxed);
        (fired, firing, waiting)
    };
    let (sustained, (fired, firing, waiting)) = tokio::join!(load, alerting);
    assert!(
        fired,
        "with both workers gone, firing: {firing:?}; orders waiting: {waiting:?}; load: {}",
        sustained.summary()
    );
    drop(fronts);
    drop(cluster);
}

#[test]
fn the_test_copy_of_the_rules_changes_only_their_for() {
    let rules = std::fs::read_to_string(repository().join(RULES)).expect("rule file");
    let short = short_for(&rules);
    let changed: Vec<(&str, &str)> = rules
        .lines()
        .zip(short.lines())
        .filter(|(shipped, copy)| shipped != copy)
        .collect();
    assert!(!changed.is_empty());
    for (shipped, copy) in changed {
        assert!(shipped.trim().starts_with("for: "), "{shipped}");
        assert_eq!(copy.trim(), "for: 3s");
    }
}
