//! Aggregates instead of every point: per batch, prediction counts and score sums per minute,
//! model version, issuer and label, and enrichment coverage per source and per provider,
//! upserted in PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DurationRound, TimeDelta, Utc};
use sqlx::PgPool;

use crate::batch::BatchCoverage;
use crate::bundle::Answer;

/// Upserts one batch's aggregates: both tables in one statement.
pub async fn record(
    pool: &PgPool,
    model: &str,
    answers: &[&Answer],
    coverage: &BatchCoverage,
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
    // One coverage row per source (provider ''), one per provider and one for any provider
    // ([`crate::batch::ANY_PROVIDER`]), those with source 'mongo'.
    let sources: Vec<(&str, &str, crate::batch::Coverage)> = [
        ("postgres", "", coverage.postgres),
        ("mongo", "", coverage.mongo),
    ]
    .into_iter()
    .chain(
        coverage
            .providers
            .iter()
            .map(|(p, c)| ("mongo", p.as_str(), *c)),
    )
    .chain((!coverage.providers.is_empty()).then_some((
        "mongo",
        crate::batch::ANY_PROVIDER,
        coverage.any_provider,
    )))
    .collect();
    // Both upserts in one statement, one round trip; an empty UNNEST inserts no row.
    let (keys, values): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
    sqlx::query(
        "WITH predictions AS ( \
           INSERT INTO prediction_aggregates (minute, model_name, model_version, issuer_code, label, predictions, score_sum) \
           SELECT $1, $2, * FROM UNNEST($3::text[], $4::text[], $5::text[], $6::int8[], $7::float8[]) \
           ON CONFLICT (minute, model_name, model_version, issuer_code, label) DO UPDATE SET \
           predictions = prediction_aggregates.predictions + EXCLUDED.predictions, \
           score_sum = prediction_aggregates.score_sum + EXCLUDED.score_sum) \
         INSERT INTO enrichment_coverage (minute, model_name, source, provider, hits, misses) \
         SELECT $1, $2, * FROM UNNEST($8::text[], $9::text[], $10::int8[], $11::int8[]) \
         ON CONFLICT (minute, model_name, source, provider) DO UPDATE SET \
         hits = enrichment_coverage.hits + EXCLUDED.hits, misses = enrichment_coverage.misses + EXCLUDED.misses",
    )
    .bind(minute)
    .bind(model)
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.0).collect::<Vec<_>>())
    .bind(values.iter().map(|v| v.1).collect::<Vec<_>>())
    .bind(sources.iter().map(|s| s.0).collect::<Vec<_>>())
    .bind(sources.iter().map(|s| s.1).collect::<Vec<_>>())
    .bind(sources.iter().map(|s| s.2.hits as i64).collect::<Vec<_>>())
    .bind(sources.iter().map(|s| s.2.misses as i64).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}
