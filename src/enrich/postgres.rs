//! The PostgreSQL reference source: every lookup of a batch in one statement.

use std::collections::HashMap;

use sqlx::PgPool;

use std::time::Duration;

use super::source::{within, ReferenceSource, SourceError, DEFAULT_SOURCE_TIMEOUT};
use crate::spec::LookupSpec;

/// Reference lookups against a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgReference {
    pool: PgPool,
    timeout: Duration,
}

impl PgReference {
    /// A source over this pool, each lookup bounded by [`DEFAULT_SOURCE_TIMEOUT`].
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            timeout: DEFAULT_SOURCE_TIMEOUT,
        }
    }

    /// The same source with each lookup bounded by `timeout` instead.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
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
        // Safe: identifiers come from a validated spec (plain lowercase identifiers) and are quoted.
        let sql = sqlx::AssertSqlSafe(lookup_sql(lookups));
        let mut query = sqlx::query_as::<_, (i32, String, Option<String>)>(sql);
        for &k in keys {
            query = query.bind(k);
        }
        let rows = within("postgres", self.timeout, async {
            Ok(query.fetch_all(&self.pool).await?)
        })
        .await?;
        for (lookup, key, value) in rows {
            if let (Some(map), Some(value)) = (found.get_mut(lookup as usize), value) {
                map.insert(key, value);
            }
        }
        Ok(found)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        within("postgres", self.timeout, async {
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
