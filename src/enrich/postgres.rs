//! The PostgreSQL reference source: every lookup of a batch in one statement per chunk of keys.

use std::collections::HashMap;

use sqlx::PgPool;

use futures::{StreamExt, TryStreamExt};

use super::source::{within, LookupGate, LookupLimits, ReferenceSource, SourceError};
use crate::instruments;
use crate::spec::LookupSpec;

/// Reference lookups against a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgReference {
    pool: PgPool,
    limits: LookupLimits,
    /// Shared by the clones, so `limits.concurrency` holds over every batch in flight.
    gate: LookupGate,
}

impl PgReference {
    /// A source over this pool, within the default [`LookupLimits`].
    pub fn new(pool: PgPool) -> Self {
        let limits = LookupLimits::default();
        Self {
            pool,
            limits,
            gate: LookupGate::new(limits.concurrency),
        }
    }

    /// The same source within other limits (operation timeout, keys per statement, concurrent
    /// statements).
    pub fn with_limits(self, limits: LookupLimits) -> Self {
        Self {
            limits,
            gate: LookupGate::new(limits.concurrency),
            ..self
        }
    }

    /// One statement over one chunk of (lookup, key) pairs: (lookup, key, value) rows.
    async fn query_chunk(
        &self,
        sql: &str,
        lookups: usize,
        chunk: &[(usize, &String)],
    ) -> Result<Vec<(i32, String, Option<String>)>, SourceError> {
        let mut asked: Vec<Vec<&str>> = vec![Vec::new(); lookups];
        for &(l, k) in chunk {
            asked[l].push(k.as_str());
        }
        let mut query =
            sqlx::query_as::<_, (i32, String, Option<String>)>(sqlx::AssertSqlSafe(sql.to_owned()));
        for keys in asked {
            query = query.bind(keys);
        }
        let _turn = self.gate.turn().await;
        // One round trip per statement: sqlx sends a cached statement's bind, execute and sync
        // together.
        instruments::db_round_trips("postgres", 1);
        Ok(query.fetch_all(&self.pool).await?)
    }
}

/// One `SELECT ... = ANY($n)` per lookup, joined by `UNION ALL` into one round trip.
/// Identifiers come from a validated spec and are quoted as well.
pub fn lookup_sql(lookups: &[LookupSpec]) -> String {
    lookups
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "SELECT {i}::int4 AS lookup, \"{key}\"::text AS key, \"{value}\"::text AS value \
                 FROM \"{table}\" WHERE \"{key}\" = ANY(${n})",
                key = l.key_column,
                value = l.value_column,
                table = l.table,
                n = i + 1
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

impl ReferenceSource for PgReference {
    async fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<Vec<HashMap<String, String>>, SourceError> {
        let mut found = vec![HashMap::new(); lookups.len()];
        if lookups.is_empty() || keys.iter().all(|k| k.is_empty()) {
            return Ok(found);
        }
        // Chunks of at most `chunk_keys` (lookup, key) pairs, in order.
        let pairs: Vec<(usize, &String)> = keys
            .iter()
            .enumerate()
            .flat_map(|(l, keys)| keys.iter().map(move |k| (l, k)))
            .collect();
        // Safe: identifiers come from a validated spec (plain lowercase identifiers) and are quoted.
        let sql = lookup_sql(lookups);
        within("postgres", self.limits.timeout, async {
            // Made before they are streamed, as in `MongoDocuments::fetch`.
            let statements: Vec<_> = pairs
                .chunks(self.limits.chunk_keys.max(1))
                .map(|chunk| self.query_chunk(&sql, lookups.len(), chunk))
                .collect();
            let mut chunks =
                futures::stream::iter(statements).buffer_unordered(self.limits.concurrency.max(1));
            while let Some(rows) = chunks.try_next().await? {
                for (lookup, key, value) in rows {
                    if let (Some(map), Some(value)) = (found.get_mut(lookup as usize), value) {
                        map.insert(key, value);
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok(found)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        instruments::db_round_trips("postgres", 1);
        within("postgres", self.limits.timeout, async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PipelineSpec;

    #[test]
    fn all_lookups_share_one_statement() {
        let sql = lookup_sql(&PipelineSpec::banknote().lookups);
        assert_eq!(sql.matches("UNION ALL").count(), 1);
        assert!(sql.contains("FROM \"scanners\" WHERE \"scanner_id\" = ANY($1)"));
        assert!(sql.contains("FROM \"issuer_aliases\" WHERE \"alias_key\" = ANY($2)"));
    }
}
