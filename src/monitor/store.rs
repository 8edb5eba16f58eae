//! The monitor's figures in PostgreSQL (`drift_observations`, `shadow_observations`): written
//! once per interval by each worker, read by `models compare` and by `retrain`'s drift trigger.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::drift::Drift;
use super::shadow::Tally;

/// Records one interval's drift, one row per feature, in one statement.
pub async fn record_drift(
    pool: &PgPool,
    at: DateTime<Utc>,
    model: &str,
    drift: &Drift,
    worker: &str,
) -> Result<(), sqlx::Error> {
    let features: Vec<&str> = drift.features.iter().map(|f| f.feature.as_str()).collect();
    let psi: Vec<f64> = drift.features.iter().map(|f| f.psi).collect();
    let out: Vec<f64> = drift.features.iter().map(|f| f.out_of_range).collect();
    sqlx::query(
        "INSERT INTO drift_observations (observed_at, model_name, model_version, feature, psi, out_of_range, window_rows, worker)
         SELECT $1, $2, $3, f, p, o, $7, $8 FROM UNNEST($4::text[], $5::float8[], $6::float8[]) AS t(f, p, o)",
    )
    .bind(at)
    .bind(model)
    .bind(drift.version as i64)
    .bind(&features)
    .bind(&psi)
    .bind(&out)
    .bind(drift.rows as i64)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records one interval's shadow scoring for one pair of versions.
pub async fn record_shadow(
    pool: &PgPool,
    at: DateTime<Utc>,
    (model, alias): (&str, &str),
    (served, shadow): (u64, u64),
    tally: &Tally,
    worker: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO shadow_observations (observed_at, model_name, model_version, shadow_alias, shadow_version, records, agreed, score_diff_sum, score_diff_max, served_seconds, shadow_seconds, failures, skipped, worker)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(at)
    .bind(model)
    .bind(served as i64)
    .bind(alias)
    .bind(shadow as i64)
    .bind(tally.records as i64)
    .bind(tally.agreed as i64)
    .bind(tally.score_diff_sum)
    .bind(tally.score_diff_max)
    .bind(tally.served_seconds)
    .bind(tally.shadow_seconds)
    .bind(tally.failures as i64)
    .bind(tally.skipped as i64)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}

/// One feature's drift over a reporting window.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DriftSummary {
    /// The model version the figures are against.
    #[sqlx(try_from = "i64")]
    pub version: u64,
    /// The feature.
    pub feature: String,
    /// Intervals observed.
    #[sqlx(try_from = "i64")]
    pub observations: u64,
    /// The latest PSI.
    pub latest_psi: f64,
    /// The largest PSI.
    pub max_psi: f64,
    /// The mean PSI.
    pub mean_psi: f64,
    /// The mean share out of the training range.
    pub mean_out_of_range: f64,
    /// When it was last observed.
    pub latest_at: DateTime<Utc>,
}

/// Per version and feature, the drift observed since `since`.
pub async fn drift_summary(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
) -> Result<Vec<DriftSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model_version AS version, feature, count(*) AS observations,
                (array_agg(psi ORDER BY observed_at DESC))[1] AS latest_psi, max(psi) AS max_psi,
                avg(psi) AS mean_psi, avg(out_of_range) AS mean_out_of_range,
                max(observed_at) AS latest_at
         FROM drift_observations WHERE model_name = $1 AND observed_at >= $2
         GROUP BY model_version, feature ORDER BY model_version, min(observed_at), feature",
    )
    .bind(model)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// One observation: when, which version and feature, its PSI.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DriftPoint {
    /// When.
    pub at: DateTime<Utc>,
    /// The model version.
    #[sqlx(try_from = "i64")]
    pub version: u64,
    /// The feature.
    pub feature: String,
    /// Its PSI (the largest among the workers that observed it in that minute).
    pub psi: f64,
}

/// The PSI of every feature per minute since `since`, for a chart.
pub async fn drift_series(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
) -> Result<Vec<DriftPoint>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT date_trunc('minute', observed_at) AS "at", model_version AS version, feature,
                max(psi) AS psi
         FROM drift_observations WHERE model_name = $1 AND observed_at >= $2
         GROUP BY "at", model_version, feature ORDER BY "at", feature"#,
    )
    .bind(model)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Shadow scoring of one pair of versions over a reporting window.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ShadowSummary {
    /// The served version.
    #[sqlx(try_from = "i64")]
    pub version: u64,
    /// The shadow alias.
    pub alias: String,
    /// The shadow version.
    #[sqlx(try_from = "i64")]
    pub shadow_version: u64,
    /// Intervals observed.
    #[sqlx(try_from = "i64")]
    pub observations: u64,
    /// What was scored, summed.
    #[sqlx(flatten)]
    pub tally: Tally,
    /// The last observation.
    pub latest_at: DateTime<Utc>,
}

/// Both models of a served/shadow pair judged on the same records: those logged with a shadow
/// prediction (`prediction_log`) that feedback has since labelled (`training_examples`).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct JudgedOnFeedback {
    /// The served version.
    pub version: i64,
    /// The shadow version.
    pub shadow_version: i64,
    /// Logged records with a shadow prediction and a label from feedback.
    pub records: i64,
    /// Of those, records the served version classed as labelled.
    pub served_right: i64,
    /// Of those, records the shadow version classed as labelled.
    pub shadow_right: i64,
}

impl JudgedOnFeedback {
    /// The served version's accuracy on these records.
    pub fn served_accuracy(&self) -> Option<f64> {
        (self.records > 0).then(|| self.served_right as f64 / self.records as f64)
    }

    /// The shadow version's accuracy on the same records.
    pub fn shadow_accuracy(&self) -> Option<f64> {
        (self.records > 0).then(|| self.shadow_right as f64 / self.records as f64)
    }
}

/// Per served/shadow pair, both models' accuracy on the shadowed records predicted since `since`
/// that feedback labelled (in any dataset; a record's latest label counts).
pub async fn judged_on_feedback(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
) -> Result<Vec<JudgedOnFeedback>, sqlx::Error> {
    sqlx::query_as(
        "WITH labelled AS (
             SELECT DISTINCT ON (provenance->>'bundle_id', provenance->>'record_id')
                    provenance->>'bundle_id' AS bundle_id, provenance->>'record_id' AS record_id, label
             FROM training_examples
             WHERE provenance ? 'bundle_id' AND provenance->>'model_name' = $1
             ORDER BY provenance->>'bundle_id', provenance->>'record_id', labelled_at DESC)
         SELECT p.model_version AS version, p.shadow_version, count(*) AS records,
                count(*) FILTER (WHERE p.class = l.label) AS served_right,
                count(*) FILTER (WHERE p.shadow_class = l.label) AS shadow_right
         FROM prediction_log p
         JOIN labelled l ON l.bundle_id = p.bundle_id AND l.record_id = p.record_id
         WHERE p.model_name = $1 AND p.predicted_at >= $2 AND p.shadow_version IS NOT NULL
         GROUP BY p.model_version, p.shadow_version ORDER BY p.model_version, p.shadow_version",
    )
    .bind(model)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Per pair of versions, the shadow scoring since `since`.
pub async fn shadow_summary(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
) -> Result<Vec<ShadowSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model_version AS version, shadow_alias AS alias, shadow_version,
                count(*) AS observations, sum(records)::bigint AS records,
                sum(agreed)::bigint AS agreed, sum(score_diff_sum) AS score_diff_sum,
                max(score_diff_max) AS score_diff_max, sum(served_seconds) AS served_seconds,
                sum(shadow_seconds) AS shadow_seconds, sum(failures)::bigint AS failures,
                sum(skipped)::bigint AS skipped, max(observed_at) AS latest_at
         FROM shadow_observations WHERE model_name = $1 AND observed_at >= $2
         GROUP BY model_version, shadow_alias, shadow_version ORDER BY min(observed_at)",
    )
    .bind(model)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Shadow agreement per minute since `since`, for a chart: (minute, shadow version, agreement).
pub async fn shadow_series(
    pool: &PgPool,
    model: &str,
    since: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, u64, f64)>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, i64, f64)> = sqlx::query_as(
        "SELECT date_trunc('minute', observed_at) AS minute, shadow_version,
                sum(agreed)::float8 / sum(records)
         FROM shadow_observations WHERE model_name = $1 AND observed_at >= $2
         GROUP BY minute, shadow_version HAVING sum(records) > 0 ORDER BY minute",
    )
    .bind(model)
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(at, v, a)| (at, v as u64, a))
        .collect())
}

/// A feature whose PSI has stayed over the threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SustainedDrift {
    /// The feature.
    pub feature: String,
    /// Its latest PSI.
    pub psi: f64,
    /// The threshold it stayed over.
    pub threshold: f64,
    /// Since when it has.
    pub since: DateTime<Utc>,
    /// Observations over the threshold since then.
    pub observations: u64,
}

/// The feature of `observations` (time, feature, PSI; any order) whose PSI has been over
/// `threshold` in every observation for at least `span` up to `now`; of several, the one with
/// the largest latest PSI. A feature last observed more than `span` ago does not count.
pub fn sustained(
    observations: &[(DateTime<Utc>, String, f64)],
    threshold: f64,
    span: Duration,
    now: DateTime<Utc>,
) -> Option<SustainedDrift> {
    let mut sorted: Vec<&(DateTime<Utc>, String, f64)> = observations.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut best: Option<SustainedDrift> = None;
    for feature in sorted.chunk_by(|a, b| a.1 == b.1) {
        // The run of observations over the threshold that ends with the latest one.
        let run_start = feature
            .iter()
            .rposition(|(_, _, psi)| *psi <= threshold)
            .map_or(0, |i| i + 1);
        let run = &feature[run_start..];
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        if now - first.0 < span || now - last.0 > span {
            continue;
        }
        if best.as_ref().is_none_or(|b| last.2 > b.psi) {
            best = Some(SustainedDrift {
                feature: last.1.clone(),
                psi: last.2,
                threshold,
                since: first.0,
                observations: run.len() as u64,
            });
        }
    }
    best
}

/// The feature of `model` version `version` whose PSI has stayed over `threshold` for `span`,
/// counting only what was observed after `after` (the last retraining run).
pub async fn sustained_drift(
    pool: &PgPool,
    (model, version): (&str, u64),
    threshold: f64,
    span: Duration,
    after: DateTime<Utc>,
) -> Result<Option<SustainedDrift>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, String, f64)> = sqlx::query_as(
        "SELECT observed_at, feature, psi FROM drift_observations
         WHERE model_name = $1 AND model_version = $2 AND observed_at > $3",
    )
    .bind(model)
    .bind(version as i64)
    .bind(after)
    .fetch_all(pool)
    .await?;
    Ok(sustained(&rows, threshold, span, Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes_ago: i64, now: DateTime<Utc>) -> DateTime<Utc> {
        now - Duration::minutes(minutes_ago)
    }

    #[test]
    fn drift_is_sustained_only_when_every_observation_for_the_span_is_over_the_threshold() {
        let now = Utc::now();
        let obs = |feature: &str, psis: &[(i64, f64)]| -> Vec<(DateTime<Utc>, String, f64)> {
            psis.iter()
                .map(|&(m, p)| (at(m, now), feature.to_owned(), p))
                .collect()
        };
        let span = Duration::minutes(30);
        // Over for 40 minutes, after an ordinary start.
        let mut rows = obs("variance", &[(60, 0.05), (40, 0.3), (20, 0.35), (1, 0.4)]);
        // Another feature, over only for the last 10 minutes.
        rows.extend(obs("entropy", &[(50, 0.5), (30, 0.1), (10, 0.9), (1, 0.9)]));
        let found = sustained(&rows, 0.2, span, now).unwrap();
        assert_eq!(found.feature, "variance");
        assert_eq!((found.psi, found.observations), (0.4, 3));
        assert_eq!(found.since, at(40, now));

        // A dip under the threshold restarts the clock.
        let dipped = obs("variance", &[(40, 0.3), (20, 0.1), (1, 0.4)]);
        assert!(sustained(&dipped, 0.2, span, now).is_none());
        // Observations that stopped long ago do not count.
        let stale = obs("variance", &[(120, 0.3), (80, 0.3)]);
        assert!(sustained(&stale, 0.2, span, now).is_none());
        assert!(sustained(&[], 0.2, span, now).is_none());
    }
}
