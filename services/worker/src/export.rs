//! `finalprice-worker export`: every committed order as CSV, streamed a page at a time in
//! commit-time order, so the export of any number of orders runs in constant memory.

use std::io::Write;

use finalprice_db::entity::orders;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

/// Rows read per query.
const PAGE: u64 = 1000;

/// Writes `id,name,phone,created_at` and one line per order; returns the number of orders.
pub async fn write_csv(db: &DatabaseConnection, out: &mut impl Write) -> anyhow::Result<u64> {
    writeln!(out, "id,name,phone,created_at")?;
    let mut written = 0;
    let mut after: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)> = None;
    loop {
        // Keyset pagination: stable and cheap however far in, unlike OFFSET.
        let mut query = orders::Entity::find()
            .order_by_asc(orders::Column::CreatedAt)
            .order_by_asc(orders::Column::Id)
            .limit(PAGE);
        if let Some((created_at, id)) = after {
            query = query.filter(
                Condition::any()
                    .add(orders::Column::CreatedAt.gt(created_at))
                    .add(
                        Condition::all()
                            .add(orders::Column::CreatedAt.eq(created_at))
                            .add(orders::Column::Id.gt(id)),
                    ),
            );
        }
        let page = query.all(db).await?;
        for row in &page {
            writeln!(
                out,
                "{},{},{},{}",
                row.id,
                csv_field(&row.name),
                csv_field(&row.phone),
                row.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as u64 == PAGE => after = Some((last.created_at, last.id)),
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// Quotes a field when CSV needs it. Names are validated (letters, spaces, `-'’.`), so this is
/// a safeguard, not the common path.
fn csv_field(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\"")).into()
    } else {
        value.into()
    }
}
