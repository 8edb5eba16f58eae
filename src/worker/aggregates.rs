//! Aggregates instead of every point: per batch, prediction counts and score sums per minute,
//! model version, issuer and label, and enrichment coverage per source, upserted in PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

use crate::batch::Coverage;
use crate::bundle::Answer;

/// Upserts one batch's aggregates: both tables in one statement.
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
    let mut groups: BTreeMap<(&str, &str, &str), (i64, f64)> = BTreeMap::new();
    for answer in answers {
        let Answer::Request(out) = answer else {
            continue;
        };
        for row in &out.rows {
            let issuer = row.reported_value(&out.columns, "issuer").unwrap_or("-");
            let key = (out.model_version.as_str(), issuer, &*row.label);
            // Most rows land in a group that exists: look it up without allocating first.
            match groups.get_mut(&key) {
                Some(entry) => {
                    entry.0 += 1;
                    entry.1 += row.score;
                }
                None => {
                    groups.insert(key, (1, row.score));
                }
            }
        }
    }
    // Both upserts in one statement, one round trip; an empty UNNEST inserts no row.
    let (keys, values): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
    sqlx::query(
        "WITH predictions AS ( \
           INSERT INTO prediction_aggregates (minute, model_name, model_version, issuer_code, label, predictions, score_sum) \
           SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::int8[], $7::float8[]) \
           ON CONFLICT (minute, model_name, model_version, issuer_code, label) DO UPDATE SET \
           predictions = prediction_aggregates.predictions + EXCLUDED.predictions, \
           score_sum = prediction_aggregates.score_sum + EXCLUDED.score_sum) \
         INSERT INTO enrichment_coverage (minute, model_name, source, hits, misses) \
         SELECT $1, $2, * FROM UNNEST($8::text[], $9::int8[], $10::int8[]) \
         ON CONFLICT (minute, model_name, source) DO UPDATE SET \
         hits = enrichment_coverage.hits + EXCLUDED.hits, misses = enrichment_coverage.misses + EXCLUDED.misses",
    )
    .bind(minute)
    .bind(model)
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.0).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.1).collect::<Vec<_>>())
    .bind(["postgres", "mongo"].as_slice())
    .bind([postgres.hits as i64, mongo.hits as i64].as_slice())
    .bind([postgres.misses as i64, mongo.misses as i64].as_slice())
    .execute(pool)
    .await?;
    Ok(())
}
