//! Load with bookkeeping, for the guarantees of DESIGN.md §2: send orders, remember how each
//! was answered, and check every answer against the database.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use finalprice_db::entity::orders;
use futures_util::StreamExt;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use uuid::Uuid;

/// Where a burst goes, and where its answers are checked.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `http://127.0.0.1:<port>`.
    pub base_url: &'a str,
    pub http: &'a reqwest::Client,
    pub rows: &'a DatabaseConnection,
}

/// How a burst of orders was answered, and what the database said about each answer.
#[derive(Default)]
pub struct Tally {
    /// 201: the front said "accepted".
    pub accepted: Vec<Uuid>,
    /// 202: durable, not yet confirmed.
    pub pending: Vec<Uuid>,
    /// 503: not taken (the shopper tries again).
    pub unavailable: usize,
    /// No connection could be made (the front was stopped): nothing was sent.
    pub refused: usize,
    /// Any other answer, or a failure after the request was sent.
    pub other: Vec<String>,
    /// Answered "accepted" but not a row at the moment the answer arrived: must stay empty.
    pub accepted_not_committed: Vec<Uuid>,
}

/// Counts, not ids: a failing assertion stays readable.
impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("accepted", &self.accepted.len())
            .field("pending", &self.pending.len())
            .field("unavailable", &self.unavailable)
            .field("refused", &self.refused)
            .field("other", &self.other)
            .field("accepted_not_committed", &self.accepted_not_committed.len())
            .finish()
    }
}

/// How the front answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// An HTTP status; for 201 and 202 the body named the order's own key.
    Status(u16),
    /// A 201 or 202 whose body named another id than the key sent.
    OtherId(String),
    /// No connection could be made.
    Refused,
    /// The request failed after it was sent.
    Failed(String),
}

impl Answer {
    fn acknowledged(&self) -> bool {
        matches!(self, Self::Status(201 | 202))
    }
}

impl Tally {
    /// Adds the answer to order `key`; `committed`: whether it was a row when the answer came.
    fn count(&mut self, key: Uuid, answer: Answer, committed: bool) {
        match answer {
            Answer::Status(201) => {
                self.accepted.push(key);
                if !committed {
                    self.accepted_not_committed.push(key);
                }
            }
            Answer::Status(202) => self.pending.push(key),
            Answer::Status(503) => self.unavailable += 1,
            Answer::Status(other) => self.other.push(other.to_string()),
            Answer::OtherId(id) => self.other.push(format!("{key} answered as {id}")),
            Answer::Refused => self.refused += 1,
            Answer::Failed(error) => self.other.push(error),
        }
    }

    /// Every order the queue acknowledged (accepted or pending).
    pub fn acknowledged(&self) -> impl Iterator<Item = &Uuid> {
        self.accepted.iter().chain(&self.pending)
    }
}

/// Whether order `id` is a committed row.
pub async fn is_row(rows: &DatabaseConnection, id: Uuid) -> bool {
    orders::Entity::find_by_id(id)
        .one(rows)
        .await
        .map(|row| row.is_some())
        .unwrap_or(false)
}

/// Sends `count` JSON orders, `concurrency` at a time, each with its own key and phone (phones
/// start at `first_phone`), and checks every "accepted" against the database at once.
pub async fn burst(
    target: Target<'_>,
    count: usize,
    concurrency: usize,
    first_phone: u64,
) -> Tally {
    let answers = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let key = Uuid::now_v7();
            let (answer, committed) = send_one(target, key, first_phone + i as u64).await;
            (key, answer, committed)
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (key, answer, committed) in answers {
        tally.count(key, answer, committed);
    }
    tally
}

/// How many times a client of [`sustain`] sends an order that was not acknowledged (503, or no
/// answer), with the same key, as a shopper presses the button again.
const TRIES: usize = 4;

/// A shopper's pause before trying again.
const PAUSE_BEFORE_TRYING_AGAIN: Duration = Duration::from_millis(250);

/// How a sustained load went: the tally (each order by its last answer), and when and how long
/// the fronts answered anything but "accepted" or "being saved".
#[derive(Debug, Default)]
pub struct Sustained {
    pub tally: Tally,
    /// How long the load ran.
    pub ran: Duration,
    /// Offsets from the start at which each request was sent, tries again included.
    pub sent_at: Vec<Duration>,
    /// Offsets from the start at which a request was sent whose answer was neither 201 nor 202.
    pub disrupted_at: Vec<Duration>,
    /// Requests that were an order sent again with its key after it was not acknowledged.
    pub tried_again: usize,
    /// The longest any request took to be answered.
    pub slowest: Duration,
}

impl Sustained {
    /// Requests answered per second, on average.
    pub fn rate(&self) -> f64 {
        self.sent_at.len() as f64 / self.ran.as_secs_f64().max(0.001)
    }

    /// From the first to the last answer that was neither 201 nor 202; zero when there was none.
    pub fn disruption(&self) -> Duration {
        match (self.disrupted_at.first(), self.disrupted_at.last()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }

    /// Requests sent within `window` (offsets from the start).
    pub fn sent_within(&self, window: std::ops::Range<Duration>) -> usize {
        self.sent_at
            .iter()
            .filter(|at| window.contains(*at))
            .count()
    }

    /// One line for a report.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} requests/s over {:.1}s: {} orders accepted, {} being saved, {} still refused \
             after {TRIES} tries, {} other; answers other than accepted/being saved: {} over \
             {:.1}s ({} tries again with the same key); slowest answer {:.1}s",
            self.rate(),
            self.ran.as_secs_f64(),
            self.tally.accepted.len(),
            self.tally.pending.len(),
            self.tally.unavailable,
            self.tally.other.len(),
            self.disrupted_at.len(),
            self.disruption().as_secs_f64(),
            self.tried_again,
            self.slowest.as_secs_f64(),
        )
    }
}

/// Sends orders from `clients` clients at once, each one after another (client `c` to
/// `targets[c % targets.len()]`), until `stop` is set; phones count up from `first_phone`.
/// An order that is not acknowledged is sent again with its key, up to [`TRIES`] times, as a
/// shopper would. Every "accepted" is checked against the database as it arrives, and every
/// acknowledgement must name the order's own key.
pub async fn sustain(
    targets: &[Target<'_>],
    clients: usize,
    first_phone: u64,
    stop: &AtomicBool,
) -> Sustained {
    let started = tokio::time::Instant::now();
    let next_phone = AtomicU64::new(first_phone);
    let one_client = |client: usize| {
        let target = targets[client % targets.len()];
        let next_phone = &next_phone;
        async move {
            let mut orders = Vec::new();
            let mut requests = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let key = Uuid::now_v7();
                let phone = next_phone.fetch_add(1, Ordering::Relaxed);
                let mut tries = 0;
                let (answer, committed) = loop {
                    tries += 1;
                    let sent = tokio::time::Instant::now();
                    let (answer, committed) = send_one(target, key, phone).await;
                    requests.push((sent - started, sent.elapsed(), answer.acknowledged()));
                    if answer.acknowledged() || tries == TRIES {
                        break (answer, committed);
                    }
                    tokio::time::sleep(PAUSE_BEFORE_TRYING_AGAIN).await;
                };
                orders.push((key, answer, committed, tries - 1));
            }
            (orders, requests)
        }
    };
    let per_client = futures_util::future::join_all((0..clients).map(one_client)).await;
    let mut sustained = Sustained {
        ran: started.elapsed(),
        ..Sustained::default()
    };
    let mut requests = Vec::new();
    for (orders, sent) in per_client {
        for (key, answer, committed, again) in orders {
            sustained.tried_again += again;
            sustained.tally.count(key, answer, committed);
        }
        requests.extend(sent);
    }
    requests.sort_by_key(|request| request.0);
    for (at, took, acknowledged) in requests {
        sustained.slowest = sustained.slowest.max(took);
        sustained.sent_at.push(at);
        if !acknowledged {
            sustained.disrupted_at.push(at);
        }
    }
    sustained
}

/// Sends one JSON order with `key` and phone `+7<phone>`; checks that an acknowledgement names
/// `key` and that an "accepted" is a row at once.
async fn send_one(target: Target<'_>, key: Uuid, phone: u64) -> (Answer, bool) {
    let body = serde_json::json!({
        "name": "Нагрузка",
        "phone": format!("+7{phone:010}"),
        "key": key,
    });
    let response = target
        .http
        .post(format!("{}/orders", target.base_url))
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await;
    let answer = match response {
        Err(error) if error.is_connect() => Answer::Refused,
        Err(error) => Answer::Failed(format!("{error:?}")),
        Ok(response) => {
            let status = response.status().as_u16();
            if matches!(status, 201 | 202) {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                match body["id"].as_str() {
                    Some(id) if id == key.to_string() => Answer::Status(status),
                    other => Answer::OtherId(format!("{other:?}")),
                }
            } else {
                Answer::Status(status)
            }
        }
    };
    let committed = match answer {
        Answer::Status(201) => is_row(target.rows, key).await,
        _ => false,
    };
    (answer, committed)
}

/// Waits until every acknowledged order of `tally` is a row; returns those that never became one.
pub async fn acknowledged_not_committed(
    rows: &DatabaseConnection,
    tally: &Tally,
    within: Duration,
) -> Vec<Uuid> {
    let deadline = tokio::time::Instant::now() + within;
    let mut missing: Vec<Uuid> = tally.acknowledged().copied().collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for id in missing {
            if !is_row(rows, id).await {
                still.push(id);
            }
        }
        missing = still;
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    missing
}

/// Rows in the orders table.
pub async fn row_count(rows: &DatabaseConnection) -> u64 {
    orders::Entity::find()
        .count(rows)
        .await
        .expect("the orders table can be read")
}

/// Rows whose phone appears more than once: each test order has its own phone, so any is one
/// order stored twice.
pub async fn duplicate_rows(rows: &DatabaseConnection) -> u64 {
    let all = orders::Entity::find()
        .all(rows)
        .await
        .expect("the orders table can be read");
    let distinct: HashSet<&str> = all.iter().map(|row| row.phone.as_str()).collect();
    (all.len() - distinct.len()) as u64
}

/// "N order(s), e.g. [first few]": readable failure messages for long id lists.
pub fn few(ids: &[Uuid]) -> String {
    format!(
        "{} order(s), e.g. {:?}",
        ids.len(),
        &ids[..ids.len().min(5)]
    )
}

/// The three numbers of DESIGN.md §2, asserted zero: no unexpected answer, nothing answered
/// "accepted" before its commit, every acknowledged order a row within `within`, no order
/// stored twice.
pub async fn assert_guarantees(rows: &DatabaseConnection, tally: &Tally, within: Duration) {
    assert!(
        tally.other.is_empty(),
        "unexpected answers: {:?}",
        tally.other
    );
    assert!(
        tally.accepted_not_committed.is_empty(),
        "accepted before commit: {}",
        few(&tally.accepted_not_committed)
    );
    let lost = acknowledged_not_committed(rows, tally, within).await;
    assert!(
        lost.is_empty(),
        "acknowledged, never committed: {}",
        few(&lost)
    );
    assert_eq!(duplicate_rows(rows).await, 0, "orders stored twice");
}
