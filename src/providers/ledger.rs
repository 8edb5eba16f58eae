//! The deliveries ledger in PostgreSQL (`provider_deliveries`, migration 0004): one row per
//! ingest or rollback, written when it starts and again when it ends, and a per-provider lock
//! so that two ingests or rollbacks of one provider never interleave their writes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::request::{Outcome as RequestOutcome, RequestRecord};
use crate::db::SessionLock;

/// What a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Rows loaded from a source.
    Ingest,
    /// An earlier ingest undone.
    Rollback,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Rollback => "rollback",
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and not finished: still going, or crashed (running it again resumes it).
    Running,
    /// Finished; every accepted row is in the store.
    Succeeded,
    /// Stopped by a problem named in `error`.
    Failed,
    /// The same content was already delivered; nothing was written.
    Unchanged,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unchanged => "unchanged",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "unchanged" => Self::Unchanged,
            _ => Self::Running,
        }
    }
}

/// The counts of a delivery, as the ledger keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Rows read (blank lines are not rows); for a rollback, documents considered.
    pub rows: u64,
    /// Rows that passed every check.
    pub accepted: u64,
    /// Accepted rows equal to the current document: nothing written.
    pub unchanged: u64,
    /// Accepted rows that replaced a current document (the old one went to history); for a
    /// rollback, documents restored to their previous version.
    pub updated: u64,
    /// Accepted rows for a key that had no current document.
    pub inserted: u64,
    /// Rows refused, with their reasons in the sample.
    pub refused: u64,
    /// Rollback: documents removed because the undone delivery had inserted them.
    pub removed: u64,
    /// Rollback: documents of the undone delivery that a later delivery changed again.
    pub changed_since: u64,
}

/// One refused row in the ledger's sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RefusedRow {
    /// The row's line in the delivery.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The delivery's id (also each written document's `_delivery`).
    pub delivery_id: String,
    /// The provider.
    pub provider: String,
    /// Ingest or rollback.
    pub kind: Kind,
    /// The path or URL read; for a rollback, `rollback of <id>`.
    pub source: String,
    /// `sha256:<hex>` of the delivery's bytes, once known.
    pub content_hash: Option<String>,
    /// Where it stands.
    pub status: Status,
    /// Its counts.
    pub counts: Counts,
    /// The first refused rows.
    pub refused_sample: Vec<RefusedRow>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// For a rollback: the delivery it undid.
    pub rolls_back: Option<String>,
    /// For an undone ingest: the rollback that undid it.
    pub rolled_back_by: Option<String>,
}

/// The ledger over a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
}

const COLUMNS: &str = "delivery_id, provider, kind, source, content_hash, status, rows, accepted, \
    unchanged, updated, inserted, refused, removed, changed_since, refused_sample, error, \
    started_at, finished_at, rolls_back, rolled_back_by";

fn from_row(row: sqlx::postgres::PgRow) -> Result<Delivery, sqlx::Error> {
    use sqlx::Row;
    let count =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)? as u64) };
    let counts = Counts {
        rows: count("rows")?,
        accepted: count("accepted")?,
        unchanged: count("unchanged")?,
        updated: count("updated")?,
        inserted: count("inserted")?,
        refused: count("refused")?,
        removed: count("removed")?,
        changed_since: count("changed_since")?,
    };
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let sample: sqlx::types::Json<Vec<RefusedRow>> = row.try_get("refused_sample")?;
    Ok(Delivery {
        delivery_id: row.try_get("delivery_id")?,
        provider: row.try_get("provider")?,
        kind: if kind == "rollback" {
            Kind::Rollback
        } else {
            Kind::Ingest
        },
        source: row.try_get("source")?,
        content_hash: row.try_get("content_hash")?,
        status: Status::parse(&status),
        counts,
        refused_sample: sample.0,
        error: row.try_get("error")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        rolls_back: row.try_get("rolls_back")?,
        rolled_back_by: row.try_get("rolled_back_by")?,
    })
}

/// A new ledger row.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// Its id.
    pub delivery_id: &'a str,
    /// The provider.
    pub provider: &'a str,
    /// Ingest or rollback.
    pub kind: Kind,
    /// What was read.
    pub source: &'a str,
    /// The content hash, when known.
    pub content_hash: Option<&'a str>,
    /// Its status at insertion.
    pub status: Status,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// For a rollback: the delivery undone.
    pub rolls_back: Option<&'a str>,
}

/// How a delivery ended, written into its row.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// The final status.
    pub status: Status,
    /// The content hash, when known.
    pub content_hash: Option<&'a str>,
    /// The counts.
    pub counts: Counts,
    /// The first refused rows.
    pub refused_sample: &'a [RefusedRow],
    /// Why it failed.
    pub error: Option<&'a str>,
}

impl Ledger {
    /// The ledger in this database (migration 0004 applied).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Records a delivery that starts (or, with a final status, one that never ran).
    pub async fn insert(&self, new: &NewDelivery<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO provider_deliveries \
             (delivery_id, provider, kind, source, content_hash, status, started_at, rolls_back) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(new.delivery_id)
        .bind(new.provider)
        .bind(new.kind.as_str())
        .bind(new.source)
        .bind(new.content_hash)
        .bind(new.status.as_str())
        .bind(new.started_at)
        .bind(new.rolls_back)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a delivery running again (a resumed delivery), keeping its id and start time.
    pub async fn resume(&self, delivery_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE provider_deliveries SET status = 'running', error = NULL, finished_at = NULL \
             WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes how a delivery ended; a final status also sets `finished_at`.
    pub async fn finish(
        &self,
        delivery_id: &str,
        outcome: &Outcome<'_>,
    ) -> Result<(), sqlx::Error> {
        let c = &outcome.counts;
        sqlx::query(
            "UPDATE provider_deliveries SET status = $2, content_hash = COALESCE($3, content_hash), \
             rows = $4, accepted = $5, unchanged = $6, updated = $7, inserted = $8, refused = $9, \
             removed = $10, changed_since = $11, refused_sample = $12, error = $13, \
             finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE now() END \
             WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .bind(outcome.status.as_str())
        .bind(outcome.content_hash)
        .bind(c.rows as i64)
        .bind(c.accepted as i64)
        .bind(c.unchanged as i64)
        .bind(c.updated as i64)
        .bind(c.inserted as i64)
        .bind(c.refused as i64)
        .bind(c.removed as i64)
        .bind(c.changed_since as i64)
        .bind(sqlx::types::Json(outcome.refused_sample))
        .bind(outcome.error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks an ingest as undone by a rollback.
    pub async fn mark_rolled_back(&self, delivery_id: &str, by: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE provider_deliveries SET rolled_back_by = $2 WHERE delivery_id = $1")
            .bind(delivery_id)
            .bind(by)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One delivery by id.
    pub async fn get(&self, delivery_id: &str) -> Result<Option<Delivery>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM provider_deliveries WHERE delivery_id = $1"
        )))
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?
        .map(from_row)
        .transpose()
    }

    /// The ingest of this content that succeeded and was not rolled back, if any.
    pub async fn succeeded_with(
        &self,
        provider: &str,
        content_hash: &str,
    ) -> Result<Option<Delivery>, sqlx::Error> {
        self.one_where(
            "provider = $1 AND content_hash = $2 AND kind = 'ingest' AND status = 'succeeded' \
             AND rolled_back_by IS NULL",
            provider,
            content_hash,
        )
        .await
    }

    /// An ingest of this content that started writing and did not finish (it crashed or
    /// failed in its second pass): running it again resumes it.
    pub async fn unfinished_with(
        &self,
        provider: &str,
        content_hash: &str,
    ) -> Result<Option<Delivery>, sqlx::Error> {
        self.one_where(
            "provider = $1 AND content_hash = $2 AND kind = 'ingest' \
             AND status IN ('running', 'failed') AND rolled_back_by IS NULL",
            provider,
            content_hash,
        )
        .await
    }

    /// A rollback of `delivery_id` that did not finish.
    pub async fn unfinished_rollback_of(
        &self,
        delivery_id: &str,
    ) -> Result<Option<Delivery>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM provider_deliveries WHERE rolls_back = $1 \
             AND status IN ('running', 'failed') ORDER BY started_at DESC LIMIT 1"
        )))
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?
        .map(from_row)
        .transpose()
    }

    async fn one_where(
        &self,
        condition: &str,
        provider: &str,
        content_hash: &str,
    ) -> Result<Option<Delivery>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM provider_deliveries WHERE {condition} \
             ORDER BY started_at DESC LIMIT 1"
        )))
        .bind(provider)
        .bind(content_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(from_row)
        .transpose()
    }

    /// Forgets every delivery of these providers and their requests: their documents were
    /// replaced wholesale (`fixtures load`), so no delivery describes the store any more.
    pub async fn forget(&self, providers: &[String]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM provider_requests WHERE provider = ANY($1)")
            .bind(providers)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM provider_deliveries WHERE provider = ANY($1)")
            .bind(providers)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Deliveries, newest first, of one provider or all.
    pub async fn list(
        &self,
        provider: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM provider_deliveries WHERE ($1::text IS NULL OR provider = $1) \
             ORDER BY started_at DESC, delivery_id DESC LIMIT $2"
        )))
        .bind(provider)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(from_row)
        .collect()
    }

    /// Records an HTTP delivery's requests (`provider_requests`, migration 0005) under its
    /// delivery, in chunks of a thousand rows per statement.
    pub async fn record_requests(
        &self,
        delivery_id: &str,
        provider: &str,
        requests: &[RequestRecord],
    ) -> Result<(), sqlx::Error> {
        for chunk in requests.chunks(1000) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO provider_requests (delivery_id, provider, page, attempt, url, \
                 started_at, latency_ms, status, outcome, error) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(delivery_id)
                    .push_bind(provider)
                    .push_bind(r.page as i32)
                    .push_bind(r.attempt as i32)
                    .push_bind(&r.url)
                    .push_bind(r.started_at)
                    .push_bind(r.latency_ms)
                    .push_bind(r.status.map(i32::from))
                    .push_bind(r.outcome.as_str())
                    .push_bind(&r.error);
            });
            insert.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    /// A delivery's recorded requests, in the order they were made.
    pub async fn requests(&self, delivery_id: &str) -> Result<Vec<RequestRecord>, sqlx::Error> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT page, attempt, url, started_at, latency_ms, status, outcome, error \
             FROM provider_requests WHERE delivery_id = $1 ORDER BY id",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome")?;
                Ok(RequestRecord {
                    page: row.try_get::<i32, _>("page")? as u32,
                    attempt: row.try_get::<i32, _>("attempt")? as u32,
                    url: row.try_get("url")?,
                    started_at: row.try_get("started_at")?,
                    latency_ms: row.try_get("latency_ms")?,
                    status: row.try_get::<Option<i32>, _>("status")?.map(|s| s as u16),
                    outcome: RequestOutcome::parse(&outcome),
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    /// Takes the provider's lock, or None when another ingest or rollback holds it. The lock
    /// lives on a connection of its own (a session advisory lock), so a crashed process never
    /// leaves it taken; [`SessionLock::release`] frees it at once.
    pub async fn lock_provider(&self, provider: &str) -> Result<Option<SessionLock>, sqlx::Error> {
        SessionLock::try_take(
            &self.pool,
            "hashtextextended('provider_deliveries:' || $1, 0)",
            provider,
        )
        .await
    }
}
