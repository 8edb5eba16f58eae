//! The PostgreSQL reference source: every lookup of a batch in one statement.

use std::collections::HashMap;

use sqlx::PgPool;

use super::source::{within, LookupLimits, ReferenceSource, SourceError};
use crate::instruments;
use crate::spec::LookupSpec;

/// Reference lookups against a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgReference {
    pool: PgPool,
    limits: LookupLimits,
}

impl PgReference {
    /// A source over this pool, within the default [`LookupLimits`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            limits: LookupLimits::default(),
        }
    }

    /// The same source within other limits (operation timeout, keys per statement).
    pub fn with_limits(self, limits: LookupLimits) -> Self {
        Self { limits, ..self }
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
            for chunk in pairs.chunks(self.limits.chunk_keys.max(1)) {
                let mut asked: Vec<Vec<&str>> = vec![Vec::new(); lookups.len()];
                for &(l, k) in chunk {
                    asked[l].push(k.as_str());
                }
                let mut query = sqlx::query_as::<_, (i32, String, Option<String>)>(
                    sqlx::AssertSqlSafe(sql.clone()),
                );
                for keys in asked {
                    query = query.bind(keys);
                }
                // One round trip per statement: sqlx sends a cached statement's bind, execute
                // and sync together.
                instruments::db_round_trips("postgres", 1);
                for (lookup, key, value) in query.fetch_all(&self.pool).await? {
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
