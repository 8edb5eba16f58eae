//! Aggregates instead of every point: per batch, prediction counts and score sums per minute,
//! model version, issuer and label, and enrichment coverage per source, upserted in PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::batch::Coverage;
use crate::bundle::Answer;

/// Upserts one batch's aggregates in one statement per table.
pub async fn record(
    pool: &PgPool,
    model: &str,
    answers: &[&Answer],
    postgres: Coverage,
    mongo: Coverage,
) -> Result<(), sqlx::Error> {
    let minute = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .expect("a minute divides a day");
    let mut groups: BTreeMap<(String, String, String), (i64, f64)> = BTreeMap::new();
    for answer in answers {
        let Answer::Request(out) = answer else {
            continue;
        };
        let col = |name: &str| out.columns.iter().position(|c| c == name);
        let (label, score, issuer) = (col("label"), col("score"), col("issuer"));
        for row in &out.rows {
            let text = |i: Option<usize>| {
                i.and_then(|i| row.get(i))
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_owned()
            };
            let entry = groups
                .entry((out.model_version.clone(), text(issuer), text(label)))
                .or_default();
            entry.0 += 1;
            entry.1 += score
                .and_then(|i| row.get(i))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
        }
    }
    if !groups.is_empty() {
        let (keys, values): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
        sqlx::query(
            "INSERT INTO prediction_aggregates (minute, model_name, model_version, issuer_code, label, predictions, score_sum) \
             SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::int8[], $7::float8[]) \
             ON CONFLICT (minute, model_name, model_version, issuer_code, label) DO UPDATE SET \
             predictions = prediction_aggregates.predictions + EXCLUDED.predictions, \
             score_sum = prediction_aggregates.score_sum + EXCLUDED.score_sum",
        )
        .bind(minute)
        .bind(model)
        .bind(keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
        .bind(keys.iter().map(|k| k.2.clone()).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.0).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.1).collect::<Vec<_>>())
        .execute(pool)
        .await?;
    }
    sqlx::query(
        "INSERT INTO enrichment_coverage (minute, model_name, source, hits, misses) \
         SELECT $1, $2, * FROM UNNEST($3::text[], $4::int8[], $5::int8[]) \
         ON CONFLICT (minute, model_name, source) DO UPDATE SET \
         hits = enrichment_coverage.hits + EXCLUDED.hits, misses = enrichment_coverage.misses + EXCLUDED.misses",
    )
    .bind(minute)
    .bind(model)
    .bind(vec!["postgres".to_owned(), "mongo".to_owned()])
    .bind(vec![postgres.hits as i64, mongo.hits as i64])
    .bind(vec![postgres.misses as i64, mongo.misses as i64])
    .execute(pool)
    .await?;
    Ok(())
}
