//! The prediction log: what the worker predicted, record by record, for feedback and audit
//! (aggregates stay in `prediction_aggregates`).
//!
//! The worker's step hands each answered batch's logged bundles to [`PredictionLog::submit`],
//! which never waits: a bounded channel feeds one writer task ([`start`]) that writes whatever
//! has queued up with one `COPY` (so writes grow with the load, one round trip each), creates
//! the day partitions ahead of the rows and drops those older than the retention. When the
//! channel is full (PostgreSQL slower than the traffic) a batch's log is dropped and counted,
//! never the answer. The rows go in `COPY`'s binary format ([`copy_binary`]), so that neither
//! the worker nor PostgreSQL formats or parses them as text.
//!
//! A bundle both logged and shadow-scored (the same stable hash chooses both) is logged with the
//! shadow model's prediction beside the served one: its batch waits for the shadow's scores
//! ([`PredictionLog::submit_with_shadow`], off the answer's path, at most
//! [`SHADOW_WAIT`]), and is logged without them when the shadow skipped or failed the batch.

pub mod copy_binary;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, Utc};
use ndarray::Array2;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::LogMode;
use crate::batch::{BundlePlan, Slot};
use crate::bundle::{DecodeError, InputBundle};
use crate::monitor::shadow::ShadowScores;
use copy_binary::{CopyBinary, FieldTooLong};

/// What the log needs to know of the model that predicted a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// The model name.
    pub name: String,
    /// The version.
    pub version: u64,
    /// Its features, in matrix order.
    pub features: Vec<String>,
    /// Its class names; class i is `classes[i]`.
    pub classes: Vec<String>,
}

/// One logged record.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRecord {
    /// The record id (a seed bundle's subject).
    pub record_id: String,
    /// Its row in the bundle.
    pub position: u32,
    /// The predicted class (1 when the score is 0 or more).
    pub class: i16,
    /// The SVM decision value.
    pub score: f64,
    /// Canonical features, before the scaler.
    pub features: Vec<f64>,
    /// Its row among those the shadow model scores, when its bundle is shadowed.
    pub shadow_row: Option<u32>,
    /// The shadow model's prediction, once known.
    pub shadow: Option<ShadowPrediction>,
}

/// The shadow model's prediction of a logged record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowPrediction {
    /// The shadow model's version.
    pub version: u64,
    /// Its class (1 when its score is 0 or more).
    pub class: i16,
    /// Its decision value.
    pub score: f64,
    /// Its prediction time over the served model's, for the batch the record was in.
    pub latency_ratio: Option<f64>,
}

/// The logged records of one bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedBundle {
    /// The bundle id (a seed bundle's batch id).
    pub bundle_id: String,
    /// Its predicted records; records answered with an error are not logged.
    pub records: Vec<LoggedRecord>,
}

/// The logged bundles of one answered batch.
#[derive(Debug, Clone)]
pub struct LogBatch {
    /// The model that predicted them.
    pub model: Arc<ModelFacts>,
    /// When the answers were accepted.
    pub predicted_at: DateTime<Utc>,
    /// The bundles, each with its records.
    pub bundles: Vec<LoggedBundle>,
}

impl LogBatch {
    fn records(&self) -> usize {
        self.bundles.iter().map(|b| b.records.len()).sum()
    }

    /// Whether some record waits for a shadow prediction.
    pub fn is_shadowed(&self) -> bool {
        self.bundles
            .iter()
            .flat_map(|b| &b.records)
            .any(|r| r.shadow_row.is_some())
    }

    /// Puts the shadow's prediction beside each shadowed record; a score that is not a number
    /// (the shadow failed on that row) leaves the record without one.
    pub fn attach_shadow(&mut self, shadow: &ShadowScores) {
        for r in self.bundles.iter_mut().flat_map(|b| &mut b.records) {
            let score = r
                .shadow_row
                .and_then(|row| shadow.scores.get(row as usize))
                .copied()
                .filter(|s| s.is_finite());
            r.shadow = score.map(|score| ShadowPrediction {
                version: shadow.version,
                class: i16::from(score >= 0.0),
                score,
                latency_ratio: shadow.latency_ratio,
            });
        }
    }
}

/// Per bundle of a predicted batch: its logged records when `mode` keeps it, read from the
/// plans, the canonical matrix and the scores. Records with a score that is not a number are
/// answered with an error, and not logged. `shadow_rows[matrix_row]` is the row's place among
/// the rows the shadow model scores (empty when none are).
pub fn capture(
    mode: LogMode,
    bundles: &[InputBundle],
    plans: &[Result<BundlePlan, DecodeError>],
    matrix: &Array2<f64>,
    scores: &[f64],
    shadow_rows: &[Option<u32>],
) -> Vec<Option<LoggedBundle>> {
    bundles
        .iter()
        .zip(plans)
        .map(|(bundle, plan)| {
            let plan = plan.as_ref().ok()?;
            if !mode.keeps(bundle.id()) {
                return None;
            }
            let records = plan
                .ids
                .iter()
                .zip(&plan.slots)
                .enumerate()
                .filter_map(|(position, (id, slot))| {
                    let Slot::Row { matrix_row } = slot else {
                        return None;
                    };
                    let score = scores[*matrix_row];
                    score.is_finite().then(|| LoggedRecord {
                        record_id: id.clone(),
                        position: position as u32,
                        class: i16::from(score >= 0.0),
                        score,
                        features: matrix.row(*matrix_row).to_vec(),
                        shadow_row: shadow_rows.get(*matrix_row).copied().flatten(),
                        shadow: None,
                    })
                })
                .collect();
            Some(LoggedBundle {
                bundle_id: bundle.id().to_owned(),
                records,
            })
        })
        .collect()
}

/// Batches queued for the writer before [`PredictionLog::submit`] drops instead of waiting.
const QUEUED_BATCHES: usize = 64;

/// How long a shadowed batch's log waits for the shadow's scores before it is written without
/// them: the shadow scores queued batches one at a time, so a burst may keep it busy a while.
pub const SHADOW_WAIT: Duration = Duration::from_secs(30);

/// The worker's end of the log: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct PredictionLog {
    mode: LogMode,
    tx: mpsc::Sender<LogBatch>,
    stop: CancellationToken,
    writer: Arc<Mutex<Option<JoinHandle<WriterSummary>>>>,
    /// The facts of the model version last logged, shared by its batches.
    facts: Arc<Mutex<Option<Arc<ModelFacts>>>>,
    /// Batches waiting for their shadow scores; closing waits for them.
    waiting: TaskTracker,
}

impl PredictionLog {
    /// Stops the writer once it has written what is queued, waiting at most until `deadline`;
    /// returns what it did over its life (None when it was closed before, or ran out of time:
    /// the rows still queued are then lost, and counted as dropped by no one).
    pub async fn close(&self, deadline: tokio::time::Instant) -> Option<WriterSummary> {
        self.waiting.close();
        if tokio::time::timeout_at(deadline, self.waiting.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "batches waiting for their shadow scores were not logged before the drain deadline"
            );
        }
        self.stop.cancel();
        let handle = self
            .writer
            .lock()
            .expect("the writer handle's lock is never poisoned")
            .take()?;
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(summary)) => Some(summary),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the prediction log writer panicked");
                None
            }
            Err(_) => {
                tracing::warn!("the prediction log writer did not finish before the drain deadline; the predictions still queued are not logged");
                None
            }
        }
    }

    /// Which bundles are logged.
    pub fn mode(&self) -> LogMode {
        self.mode
    }

    /// The facts of model `name` version `version`: made by `facts` when that is not the
    /// version this log last saw, shared otherwise (a version's facts never change), so a
    /// batch costs no copy of the model's names.
    pub fn model_facts(
        &self,
        name: &str,
        version: u64,
        facts: impl FnOnce() -> ModelFacts,
    ) -> Arc<ModelFacts> {
        let mut last = self
            .facts
            .lock()
            .expect("the model facts' lock is never poisoned");
        match &*last {
            Some(f) if f.version == version && f.name == name => Arc::clone(f),
            _ => {
                let f = Arc::new(facts());
                *last = Some(Arc::clone(&f));
                f
            }
        }
    }

    /// Queues a batch for the writer; when the writer is behind by [`QUEUED_BATCHES`] batches,
    /// the batch's log is dropped and counted instead.
    pub fn submit(&self, batch: LogBatch) {
        let records = batch.records();
        if records == 0 {
            return;
        }
        if let Err(e) = self.tx.try_send(batch) {
            crate::instruments::prediction_log(LogOutcome::Dropped.label(), records);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                tracing::warn!(
                    records,
                    "prediction log behind (PostgreSQL slower than the traffic): this batch's predictions were not logged"
                );
            }
        }
    }
}

impl PredictionLog {
    /// Queues `batch` once the shadow's scores come through `scored` (at most [`SHADOW_WAIT`]
    /// later), with them beside its shadowed records; without them when the shadow skipped or
    /// failed the batch. Never waits: the waiting is a task of its own.
    pub fn submit_with_shadow(&self, mut batch: LogBatch, scored: oneshot::Receiver<ShadowScores>) {
        let log = self.clone();
        self.waiting.spawn(async move {
            if let Ok(Ok(shadow)) = tokio::time::timeout(SHADOW_WAIT, scored).await {
                batch.attach_shadow(&shadow);
            }
            log.submit(batch);
        });
    }
}

/// What became of logged records, for the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutcome {
    /// Written to PostgreSQL.
    Written,
    /// Dropped before the writer: it was behind.
    Dropped,
    /// The write failed.
    Failed,
}

impl LogOutcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LogOutcome::Written => "written",
            LogOutcome::Dropped => "dropped",
            LogOutcome::Failed => "failed",
        }
    }
}

/// What the writer did over its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterSummary {
    /// Records written.
    pub written: u64,
    /// Records whose write failed.
    pub failed: u64,
    /// COPY statements run.
    pub copies: u64,
    /// Partitions dropped by the retention.
    pub dropped_partitions: Vec<String>,
}

/// Records gathered into one COPY at most.
const MAX_COPY_RECORDS: usize = 50_000;

/// Starts the writer task on `pool`; it ends, after writing what is queued, on
/// [`PredictionLog::close`] or once every [`PredictionLog`] clone is dropped. `retention_days`
/// of partitions are kept besides today's.
pub fn start(pool: PgPool, mode: LogMode, retention_days: u32) -> PredictionLog {
    let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
    let writer = Writer {
        pool,
        retention_days,
        partitions: BTreeSet::new(),
        models: HashSet::new(),
        pruned_on: None,
        last_model: None,
        buf: Vec::new(),
        summary: WriterSummary::default(),
    };
    let stop = CancellationToken::new();
    let handle = tokio::spawn(writer.run(rx, stop.clone()));
    PredictionLog {
        mode,
        tx,
        stop,
        writer: Arc::new(Mutex::new(Some(handle))),
        facts: Arc::new(Mutex::new(None)),
        waiting: TaskTracker::new(),
    }
}

struct Writer {
    pool: PgPool,
    retention_days: u32,
    /// Days whose partition is known to exist.
    partitions: BTreeSet<NaiveDate>,
    /// Model versions already in `prediction_log_models`.
    models: HashSet<(String, u64)>,
    /// The day the expired partitions were last dropped.
    pruned_on: Option<NaiveDate>,
    /// The facts of the model version last checked against `models`.
    last_model: Option<Arc<ModelFacts>>,
    /// The `COPY` data, reused from one write to the next.
    buf: Vec<u8>,
    summary: WriterSummary,
}

/// Bytes of the `COPY` buffer kept between writes (about 60 000 rows of the default model).
const KEPT_BUFFER_BYTES: usize = 8 << 20;

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<LogBatch>,
        stop: CancellationToken,
    ) -> WriterSummary {
        loop {
            let first = tokio::select! {
                received = rx.recv() => match received {
                    Some(batch) => batch,
                    None => break,
                },
                // Closed: what is queued is still received, then `recv` ends the loop.
                () = stop.cancelled(), if !rx.is_closed() => {
                    rx.close();
                    continue;
                }
            };
            let mut batches = vec![first];
            let mut records = batches[0].records();
            // Whatever queued up while the last write ran goes into this one.
            while records < MAX_COPY_RECORDS {
                match rx.try_recv() {
                    Ok(b) => {
                        records += b.records();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            match self.write(&batches).await {
                Ok(()) => {
                    self.summary.written += records as u64;
                    self.summary.copies += 1;
                    crate::instruments::prediction_log(LogOutcome::Written.label(), records);
                }
                Err(e) => {
                    self.summary.failed += records as u64;
                    crate::instruments::prediction_log(LogOutcome::Failed.label(), records);
                    tracing::warn!(records, error = %crate::text::error_chain(e.as_ref()), "predictions not logged");
                }
            }
        }
        self.summary
    }

    async fn write(&mut self, batches: &[LogBatch]) -> anyhow::Result<()> {
        let days: BTreeSet<NaiveDate> = batches
            .iter()
            .map(|b| b.predicted_at.date_naive())
            .collect();
        let today = Utc::now().date_naive();
        if self.pruned_on != Some(today) {
            let dropped = drop_expired(&self.pool, today, self.retention_days).await?;
            self.partitions
                .retain(|d| !dropped.iter().any(|(day, _)| day == d));
            self.summary
                .dropped_partitions
                .extend(dropped.into_iter().map(|(_, name)| name));
            self.pruned_on = Some(today);
        }
        let missing: Vec<NaiveDate> = days
            .into_iter()
            .chain(today.checked_add_days(Days::new(1)))
            .filter(|d| !self.partitions.contains(d))
            .collect();
        if !missing.is_empty() {
            ensure_partitions(&self.pool, &missing).await?;
            self.partitions.extend(missing);
        }
        for batch in batches {
            let m = &batch.model;
            // Batches of one model version share its facts: one pointer comparison per batch.
            if self
                .last_model
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, m))
            {
                continue;
            }
            if self.models.insert((m.name.clone(), m.version)) {
                record_model(&self.pool, m).await?;
            }
            self.last_model = Some(Arc::clone(m));
        }
        encode(&mut self.buf, batches)?;
        let copied = self.copy_buffer().await;
        // A burst's buffer is not kept for ever.
        self.buf.clear();
        self.buf.shrink_to(KEPT_BUFFER_BYTES);
        copied
    }

    /// One `COPY` of what [`encode`] put in the buffer.
    async fn copy_buffer(&self) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let mut copy = conn.copy_in_raw(COPY_STATEMENT).await?;
        copy.send(self.buf.as_slice()).await?;
        copy.finish().await?;
        Ok(())
    }
}

/// The statement that reads what [`encode`] writes.
const COPY_STATEMENT: &str = "COPY prediction_log (predicted_at, bundle_id, record_id, position, \
    model_name, model_version, class, score, features, shadow_version, shadow_class, \
    shadow_score, shadow_latency_ratio) FROM STDIN (FORMAT binary)";

/// Replaces `out` with the rows of `batches` as one binary `COPY` stream for
/// [`COPY_STATEMENT`]. `out` is the writer's buffer, reused from one `COPY` to the next.
pub fn encode(out: &mut Vec<u8>, batches: &[LogBatch]) -> Result<(), OutOfRange> {
    let mut copy = CopyBinary::start(out);
    for batch in batches {
        let model = &batch.model;
        let version = i64::try_from(model.version).map_err(|_| OutOfRange {
            column: "model_version",
            value: model.version.to_string(),
        })?;
        for bundle in &batch.bundles {
            for r in &bundle.records {
                let position = i32::try_from(r.position).map_err(|_| OutOfRange {
                    column: "position",
                    value: r.position.to_string(),
                })?;
                let texts = bundle.bundle_id.len() + r.record_id.len() + model.name.len();
                copy.row(
                    13,
                    13 * 4 + 8 + texts + 4 + 8 + 2 + 8 + 20 + 12 * r.features.len() + 26,
                );
                copy.timestamptz(batch.predicted_at);
                let too_long = |column| {
                    move |e: FieldTooLong| OutOfRange {
                        column,
                        value: format!("{} bytes", e.bytes),
                    }
                };
                copy.text(&bundle.bundle_id)
                    .map_err(too_long("bundle_id"))?;
                copy.text(&r.record_id).map_err(too_long("record_id"))?;
                copy.int4(position);
                copy.text(&model.name).map_err(too_long("model_name"))?;
                copy.int8(version);
                copy.int2(r.class);
                copy.float8(r.score);
                copy.float8_array(&r.features)
                    .map_err(too_long("features"))?;
                match &r.shadow {
                    Some(s) => {
                        copy.int8(i64::try_from(s.version).map_err(|_| OutOfRange {
                            column: "shadow_version",
                            value: s.version.to_string(),
                        })?);
                        copy.int2(s.class);
                        copy.float8(s.score);
                        match s.latency_ratio {
                            Some(ratio) => copy.float8(ratio),
                            None => copy.null(),
                        }
                    }
                    None => (0..4).for_each(|_| copy.null()),
                }
            }
        }
    }
    copy.finish();
    Ok(())
}

/// A logged value that its column cannot hold; the whole `COPY` fails, as the text format's
/// did on the same values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a prediction log {column} out of its column's range: {value}")]
pub struct OutOfRange {
    /// The column.
    pub column: &'static str,
    /// The value, or its length.
    pub value: String,
}

/// The partition holding a day's rows.
pub fn partition_name(day: NaiveDate) -> String {
    format!("prediction_log_p{}", day.format("%Y%m%d"))
}

/// The day of a partition, from its name.
fn partition_day(name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(name.strip_prefix("prediction_log_p")?, "%Y%m%d").ok()
}

/// Serializes partition changes between workers: two `CREATE TABLE ... PARTITION OF` of the same
/// name at once would fail.
const PARTITION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('ml_pipeline.prediction_log'))";

/// Creates the day partitions that are missing.
pub async fn ensure_partitions(pool: &PgPool, days: &[NaiveDate]) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(PARTITION_LOCK).execute(&mut *tx).await?;
    for day in days {
        let next = day
            .checked_add_days(Days::new(1))
            .context("a day after the calendar's end")?;
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF prediction_log FOR VALUES FROM ('{day}') TO ('{next}')",
            partition_name(*day)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("creating the prediction log partition of {day}"))?;
    }
    tx.commit().await?;
    Ok(())
}

/// Drops the partitions whose whole day is more than `retention_days` before `today`; returns
/// them.
pub async fn drop_expired(
    pool: &PgPool,
    today: NaiveDate,
    retention_days: u32,
) -> anyhow::Result<Vec<(NaiveDate, String)>> {
    let Some(oldest_kept) = today.checked_sub_days(Days::new(u64::from(retention_days))) else {
        return Ok(Vec::new());
    };
    let mut tx = pool.begin().await?;
    sqlx::query(PARTITION_LOCK).execute(&mut *tx).await?;
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'prediction_log'",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut dropped = Vec::new();
    for (name,) in names {
        let Some(day) = partition_day(&name).filter(|d| *d < oldest_kept) else {
            continue;
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("dropping the expired prediction log partition {name}"))?;
        tracing::info!(
            partition = name,
            retention_days,
            "expired prediction log partition dropped"
        );
        dropped.push((day, name));
    }
    tx.commit().await?;
    Ok(dropped)
}

/// How many predictions of these bundles were logged since `since` (redeliveries included).
pub async fn logged_records(
    pool: &PgPool,
    bundle_ids: &[String],
    since: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM prediction_log WHERE bundle_id = ANY($1) AND predicted_at >= $2",
    )
    .bind(bundle_ids)
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// Names a model version's features and classes, once.
async fn record_model(pool: &PgPool, m: &ModelFacts) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO prediction_log_models (model_name, model_version, features, classes) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&m.name)
    .bind(m.version as i64)
    .bind(&m.features)
    .bind(&m.classes)
    .execute(pool)
    .await
    .context("recording the model's feature names in prediction_log_models")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::SeedBundle;

    fn facts() -> Arc<ModelFacts> {
        Arc::new(ModelFacts {
            name: "banknote".into(),
            version: 3,
            features: vec!["a".into(), "b".into()],
            classes: vec!["fake".into(), "real".into()],
        })
    }

    #[test]
    fn capture_keeps_the_predicted_records_of_the_sampled_bundles() {
        let seed = |id: &str| {
            InputBundle::Seed(SeedBundle {
                batch_id: id.into(),
                subjects: vec![],
                features: vec![],
            })
        };
        let bundles = [seed("b-1"), seed("b-2")];
        let plans = vec![
            Ok(BundlePlan {
                ids: vec!["x".into(), "y".into(), "z".into()],
                slots: vec![
                    Slot::Row { matrix_row: 0 },
                    Slot::Failed(crate::record::RecordError::new(
                        crate::record::Stage::EnrichMongo,
                        crate::record::RecordErrorKind::Overflow {
                            feature: "a".into(),
                        },
                        "gone",
                    )),
                    Slot::Row { matrix_row: 1 },
                ],
            }),
            Ok(BundlePlan {
                ids: vec!["w".into()],
                slots: vec![Slot::Row { matrix_row: 2 }],
            }),
        ];
        let matrix = ndarray::array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let scores = [0.5, -0.25, f64::NAN];
        // Matrix rows 1 and 2 are shadowed, as the shadow job's rows 0 and 1.
        let shadow_rows = [None, Some(0), Some(1)];
        let got = capture(
            LogMode::All,
            &bundles,
            &plans,
            &matrix,
            &scores,
            &shadow_rows,
        );
        let first = got[0].as_ref().unwrap();
        assert_eq!(first.bundle_id, "b-1");
        assert_eq!(
            first.records,
            vec![
                LoggedRecord {
                    record_id: "x".into(),
                    position: 0,
                    class: 1,
                    score: 0.5,
                    features: vec![1.0, 2.0],
                    shadow_row: None,
                    shadow: None,
                },
                LoggedRecord {
                    record_id: "z".into(),
                    position: 2,
                    class: 0,
                    score: -0.25,
                    features: vec![3.0, 4.0],
                    shadow_row: Some(0),
                    shadow: None,
                },
            ]
        );
        assert!(
            got[1].as_ref().unwrap().records.is_empty(),
            "a NaN score is not logged"
        );
        assert!(
            capture(LogMode::Off, &bundles, &plans, &matrix, &scores, &[])
                .iter()
                .all(Option::is_none)
        );
    }

    fn logged(record_id: &str, features: Vec<f64>) -> LogBatch {
        LogBatch {
            model: facts(),
            predicted_at: "2026-12-01T10:00:00.123456Z".parse().unwrap(),
            bundles: vec![LoggedBundle {
                bundle_id: "b\t1".into(),
                records: vec![LoggedRecord {
                    record_id: record_id.into(),
                    position: 4,
                    class: 1,
                    score: 1.5,
                    features,
                    shadow_row: None,
                    shadow: None,
                }],
            }],
        }
    }

    #[test]
    fn a_logged_row_decodes_by_hand_in_the_statements_column_order() {
        let mut out = Vec::new();
        let batch = logged("r\\1\n", vec![0.25, -3.0]);
        let mut shadowed = batch.clone();
        shadowed.bundles[0].records[0].shadow_row = Some(0);
        shadowed.attach_shadow(&ShadowScores {
            version: 4,
            scores: vec![-0.75],
            latency_ratio: Some(2.5),
        });
        encode(&mut out, &[batch.clone(), shadowed]).unwrap();
        let mut s = copy_binary::Stream(&out);
        s.header();
        for shadowed in [false, true] {
            assert_eq!(s.i16(), 13, "one field per column of COPY_STATEMENT");
            let since_2000 =
                batch.predicted_at - "2000-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap();
            assert_eq!(
                s.i64_field(),
                since_2000.num_microseconds().unwrap(),
                "predicted_at"
            );
            assert_eq!(s.field(), b"b\t1", "bundle_id, unescaped");
            assert_eq!(s.field(), b"r\\1\n", "record_id, unescaped");
            assert_eq!(s.field(), 4_i32.to_be_bytes(), "position");
            assert_eq!(s.field(), b"banknote", "model_name");
            assert_eq!(s.i64_field(), 3, "model_version");
            assert_eq!(s.field(), 1_i16.to_be_bytes(), "class");
            assert_eq!(s.f64_field(), 1.5, "score");
            let array = s.field();
            let mut a = copy_binary::Stream(&array);
            assert_eq!(
                (a.i32(), a.i32(), a.i32(), a.i32(), a.i32()),
                (1, 0, 701, 2, 1)
            );
            assert_eq!((a.f64_field(), a.f64_field()), (0.25, -3.0), "features");
            if shadowed {
                assert_eq!(s.i64_field(), 4, "shadow_version");
                assert_eq!(s.field(), 0_i16.to_be_bytes(), "shadow_class");
                assert_eq!(s.f64_field(), -0.75, "shadow_score");
                assert_eq!(s.f64_field(), 2.5, "shadow_latency_ratio");
            } else {
                (0..4).for_each(|_| s.null());
            }
        }
        assert_eq!(s.i16(), -1, "the trailer");
        assert!(s.0.is_empty());
    }

    #[test]
    fn shadow_scores_land_beside_the_shadowed_records_only() {
        let mut batch = logged("r-1", vec![1.0]);
        let record = batch.bundles[0].records[0].clone();
        batch.bundles[0].records = vec![
            LoggedRecord {
                shadow_row: Some(1),
                ..record.clone()
            },
            LoggedRecord {
                shadow_row: None,
                ..record.clone()
            },
            LoggedRecord {
                shadow_row: Some(0),
                ..record
            },
        ];
        assert!(batch.is_shadowed());
        batch.attach_shadow(&ShadowScores {
            version: 7,
            scores: vec![f64::NAN, 0.5],
            latency_ratio: None,
        });
        let shadows: Vec<_> = batch.bundles[0].records.iter().map(|r| r.shadow).collect();
        assert_eq!(
            shadows,
            vec![
                Some(ShadowPrediction {
                    version: 7,
                    class: 1,
                    score: 0.5,
                    latency_ratio: None
                }),
                None,
                None,
            ],
            "a shadow score that is not a number is left out"
        );
        assert!(!logged("r-2", vec![1.0]).is_shadowed());
    }

    #[test]
    fn values_outside_their_column_are_refused_not_wrapped() {
        let mut out = Vec::new();
        let mut far = logged("r-1", vec![1.0]);
        far.bundles[0].records[0].position = u32::MAX;
        assert_eq!(encode(&mut out, &[far]).unwrap_err().column, "position");
        let mut huge = logged("r-1", vec![1.0]);
        Arc::make_mut(&mut huge.model).version = u64::MAX;
        assert_eq!(
            encode(&mut out, &[huge]).unwrap_err().column,
            "model_version"
        );
    }

    #[tokio::test]
    async fn a_model_versions_facts_are_made_once_and_shared() {
        // Nothing is logged: the pool never connects.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let log = start(pool, LogMode::All, 30);
        let first = log.model_facts("banknote", 3, || (*facts()).clone());
        let again = log.clone().model_facts("banknote", 3, || {
            unreachable!("version 3's facts are known")
        });
        assert!(Arc::ptr_eq(&first, &again));
        let next = log.model_facts("banknote", 4, || ModelFacts {
            version: 4,
            ..(*facts()).clone()
        });
        assert_eq!(next.version, 4);
        let other = log.model_facts("other", 4, || ModelFacts {
            name: "other".into(),
            version: 4,
            ..(*facts()).clone()
        });
        assert_eq!(other.name, "other");
    }

    #[test]
    fn partition_names_give_back_their_day() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(partition_name(day), "prediction_log_p20261201");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("prediction_log_default"), None);
    }
}
