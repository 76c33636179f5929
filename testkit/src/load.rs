//! Load with bookkeeping, for the guarantees of DESIGN.md §2: send orders, remember how each
//! was answered, and check every answer against the database.

use std::collections::HashSet;
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
            let body = serde_json::json!({
                "name": "Нагрузка",
                "phone": format!("+7{:010}", first_phone + i as u64),
                "key": key,
            });
            let answer = target
                .http
                .post(format!("{}/orders", target.base_url))
                .header("accept", "application/json")
                .json(&body)
                .send()
                .await;
            let answer = answer.map(|response| response.status().as_u16());
            let committed = match answer {
                Ok(201) => Some(is_row(target.rows, key).await),
                _ => None,
            };
            (key, answer, committed)
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut tally = Tally::default();
    for (key, answer, committed) in answers {
        match answer {
            Ok(201) => {
                tally.accepted.push(key);
                if committed != Some(true) {
                    tally.accepted_not_committed.push(key);
                }
            }
            Ok(202) => tally.pending.push(key),
            Ok(503) => tally.unavailable += 1,
            Ok(other) => tally.other.push(other.to_string()),
            Err(error) if error.is_connect() => tally.refused += 1,
            Err(error) => tally.other.push(format!("{error:?}")),
        }
    }
    tally
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
