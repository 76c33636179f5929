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

impl Tally {
    /// Adds the answer to order `key`; `committed`: whether it was a row when the answer came.
    fn count(&mut self, key: Uuid, answer: Result<u16, reqwest::Error>, committed: bool) {
        match answer {
            Ok(201) => {
                self.accepted.push(key);
                if !committed {
                    self.accepted_not_committed.push(key);
                }
            }
            Ok(202) => self.pending.push(key),
            Ok(503) => self.unavailable += 1,
            Ok(other) => self.other.push(other.to_string()),
            Err(error) if error.is_connect() => self.refused += 1,
            Err(error) => self.other.push(format!("{error:?}")),
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
        .map(|i| send_one(target, first_phone + i as u64))
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (key, answer, committed) in answers {
        tally.count(key, answer, committed);
    }
    tally
}

/// How a sustained load went: the tally, and when and how long the fronts answered anything
/// but "accepted" or "being saved".
#[derive(Debug, Default)]
pub struct Sustained {
    pub tally: Tally,
    /// How long the load ran.
    pub ran: Duration,
    /// Offsets from the start at which an answer other than 201/202 arrived.
    pub disrupted_at: Vec<Duration>,
    /// The longest any order took to be answered.
    pub slowest: Duration,
}

impl Sustained {
    /// Orders answered per second, on average.
    pub fn rate(&self) -> f64 {
        let answered = self.tally.accepted.len()
            + self.tally.pending.len()
            + self.tally.unavailable
            + self.tally.other.len();
        answered as f64 / self.ran.as_secs_f64().max(0.001)
    }

    /// From the first to the last answer that was neither 201 nor 202; zero when there was none.
    pub fn disruption(&self) -> Duration {
        match (self.disrupted_at.first(), self.disrupted_at.last()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }

    /// One line for a report.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} orders/s over {:.1}s: {} accepted, {} being saved, {} answered 503, {} other; \
             answers other than accepted/being saved: {} over {:.1}s; slowest answer {:.1}s",
            self.rate(),
            self.ran.as_secs_f64(),
            self.tally.accepted.len(),
            self.tally.pending.len(),
            self.tally.unavailable,
            self.tally.other.len(),
            self.disrupted_at.len(),
            self.disruption().as_secs_f64(),
            self.slowest.as_secs_f64(),
        )
    }
}

/// Sends orders from `clients` clients at once, each one after another (client `c` to
/// `targets[c % targets.len()]`), until `stop` is set; phones count up from `first_phone`.
/// Every "accepted" is checked against the database as it arrives.
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
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let phone = next_phone.fetch_add(1, Ordering::Relaxed);
                let sent = tokio::time::Instant::now();
                let (key, answer, committed) = send_one(target, phone).await;
                answers.push((key, answer, committed, sent - started, sent.elapsed()));
            }
            answers
        }
    };
    let answers = futures_util::future::join_all((0..clients).map(one_client)).await;
    let mut sustained = Sustained {
        ran: started.elapsed(),
        ..Sustained::default()
    };
    let mut answers: Vec<_> = answers.into_iter().flatten().collect();
    answers.sort_by_key(|answer| answer.3);
    for (key, answer, committed, at, took) in answers {
        sustained.slowest = sustained.slowest.max(took);
        if !matches!(answer, Ok(201 | 202)) {
            sustained.disrupted_at.push(at);
        }
        sustained.tally.count(key, answer, committed);
    }
    sustained
}

/// Sends one JSON order with a fresh key and phone `+7<phone>`; checks an "accepted" against
/// the database at once.
async fn send_one(target: Target<'_>, phone: u64) -> (Uuid, Result<u16, reqwest::Error>, bool) {
    let key = Uuid::now_v7();
    let body = serde_json::json!({
        "name": "Нагрузка",
        "phone": format!("+7{phone:010}"),
        "key": key,
    });
    let answer = target
        .http
        .post(format!("{}/orders", target.base_url))
        .header("accept", "application/json")
        .json(&body)
        .send()
        .await
        .map(|response| response.status().as_u16());
    let committed = match answer {
        Ok(201) => is_row(target.rows, key).await,
        _ => false,
    };
    (key, answer, committed)
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
