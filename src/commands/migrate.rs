//! `migrate`: the PostgreSQL schema and the MongoDB indexes, both idempotent.

use anyhow::Context;

use crate::settings::Settings;
use crate::spec::PipelineSpec;

/// Applies the migrations and creates the indexes; returns what to print.
pub async fn migrate(settings: &Settings) -> anyhow::Result<String> {
    crate::startup::postgres_migrated(settings, 2).await?;
    let mongo = crate::startup::mongo(settings).await?;
    crate::mongo::ensure_indexes(&mongo, &PipelineSpec::banknote())
        .await
        .context("creating MongoDB indexes")?;
    Ok("PostgreSQL migrations applied; MongoDB indexes in place".into())
}
