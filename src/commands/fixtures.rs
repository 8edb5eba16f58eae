//! `fixtures load`: a fixture set into PostgreSQL (reference rows, training examples) and
//! MongoDB (provider documents).

use std::path::Path;

use crate::fixtures;
use crate::settings::Settings;
use crate::spec::PipelineSpec;

/// Loads the set in `dir` under training dataset `dataset`; returns what to print.
pub async fn load(
    settings: &Settings,
    dir: &Path,
    dataset: &str,
    migrate: bool,
) -> anyhow::Result<String> {
    let set = fixtures::read_set(dir)?;
    let spec = PipelineSpec::banknote();
    let pool = if migrate {
        crate::startup::postgres_migrated(settings, 2).await?
    } else {
        crate::startup::postgres(settings, 2).await?
    };
    let mongo = crate::startup::mongo(settings).await?;
    let report = fixtures::load::load(&set, &spec, &pool, &mongo, dataset).await?;
    Ok(format!(
        "loaded {} reference rows and {} training examples into PostgreSQL, {} provider documents into MongoDB database {}",
        report.reference_rows, report.training_rows, report.documents, settings.mongodb_database
    ))
}
