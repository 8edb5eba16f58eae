//! Training data: labelled rows from the PostgreSQL training table or a CSV/JSON file, in
//! canonical form (feature values by name) or raw form (request-shaped rows). Raw rows go
//! through [`crate::batch::prepare`], the worker's own standardize-enrich-normalize path.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use ndarray::Array2;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::batch::{prepare, Slot};
use crate::bundle::{InputBundle, RequestBundle};
use crate::enrich::{DocumentSource, Enricher, ReferenceSource};
use crate::spec::PipelineSpec;

/// The column holding the class unless told otherwise (`train --label-column`): 1/0,
/// true/false or "real"/"fake".
pub const LABEL_COLUMN: &str = "label";

/// Checks that the rows have the label column; otherwise names the columns they have, so a
/// file with another header (the predecessor's `class`) gets an error to act on.
fn check_label_column(
    rows: &[Map<String, Value>],
    label_column: &str,
    source: &str,
) -> anyhow::Result<()> {
    let Some(first) = rows.first() else {
        bail!("{source} has no rows");
    };
    if !first.contains_key(label_column) {
        let found: Vec<&str> = first.keys().map(String::as_str).collect();
        bail!(
            "{source} has no label column '{label_column}'; its columns are: {}. Name the label column with --label-column (the predecessor's CSV calls it 'class')",
            found.join(", ")
        );
    }
    Ok(())
}

/// Labelled canonical features, ready to fit.
#[derive(Debug, Clone)]
pub struct TrainingData {
    /// Canonical features, one row per example, in the spec's feature order.
    pub x: Array2<f64>,
    /// Classes: true = real.
    pub y: Vec<bool>,
    /// Where the rows came from.
    pub source: String,
    /// Raw rows that preprocessing refused: (row id, reason).
    pub skipped: Vec<(String, String)>,
}

impl TrainingData {
    /// SHA-256 over the feature names, every value's bits and every label, in order.
    pub fn fingerprint(&self, spec: &PipelineSpec) -> String {
        let mut h = Sha256::new();
        for name in spec.feature_names() {
            h.update(name.as_bytes());
            h.update([0]);
        }
        for (row, label) in self.x.outer_iter().zip(&self.y) {
            for v in row {
                h.update(v.to_le_bytes());
            }
            h.update([u8::from(*label)]);
        }
        format!("sha256:{:x}", h.finalize())
    }
}

/// Whether rows hold canonical features or request-shaped values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Form {
    /// Feature values by name, in canonical units.
    Canonical,
    /// Request rows (note, issuer, scanner, raw values): enriched and normalized like the worker does.
    Raw,
}

/// Reads labelled rows from a file: `.csv`, `.json` (an array of objects) or `.jsonl`.
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Map<String, Value>>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    match ext {
        "csv" => {
            let mut reader = csv::Reader::from_path(path)
                .with_context(|| format!("opening {}", path.display()))?;
            let headers = reader.headers()?.clone();
            reader
                .records()
                .map(|r| {
                    let r = r?;
                    Ok(headers
                        .iter()
                        .zip(r.iter())
                        .map(|(h, v)| (h.to_owned(), csv_cell(v)))
                        .collect())
                })
                .collect()
        }
        "json" => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: expected an array of objects", path.display()))
        }
        "jsonl" => crate::fixtures::files::read_lines(path),
        other => bail!(
            "{}: unknown extension '{other}'; use .csv, .json or .jsonl",
            path.display()
        ),
    }
}

fn csv_cell(text: &str) -> Value {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Value::from(v),
        _ => Value::from(text),
    }
}

fn label(row: &Map<String, Value>, i: usize, column: &str) -> anyhow::Result<bool> {
    match row.get(column) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(true),
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(false),
        Some(Value::String(s)) if s == "real" || s == "1" => Ok(true),
        Some(Value::String(s)) if s == "fake" || s == "0" => Ok(false),
        other => {
            bail!("row {i}: '{column}' must be 1/0, true/false or real/fake, got {other:?}")
        }
    }
}

/// Canonical rows: each feature of the spec by name.
pub fn canonical(
    spec: &PipelineSpec,
    rows: &[Map<String, Value>],
    source: &str,
    label_column: &str,
) -> anyhow::Result<TrainingData> {
    check_label_column(rows, label_column, source)?;
    let names = spec.feature_names();
    let mut cells = Vec::with_capacity(rows.len() * names.len());
    let mut y = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        for name in &names {
            let v = row
                .get(*name)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite());
            cells.push(v.with_context(|| {
                format!("{source} row {i}: feature '{name}' is missing or not a finite number")
            })?);
        }
        y.push(label(row, i, label_column)?);
    }
    Ok(TrainingData {
        x: Array2::from_shape_vec((y.len(), names.len()), cells)?,
        y,
        source: source.to_owned(),
        skipped: Vec::new(),
    })
}

/// Raw request-shaped rows, preprocessed exactly as the worker does it.
pub async fn raw<R: ReferenceSource, D: DocumentSource>(
    spec: &PipelineSpec,
    rows: &[Map<String, Value>],
    source: &str,
    enricher: &Enricher<R, D>,
    label_column: &str,
) -> anyhow::Result<TrainingData> {
    check_label_column(rows, label_column, source)?;
    let columns: Vec<String> = spec
        .request_columns()
        .into_iter()
        .map(String::from)
        .collect();
    let mut labels = Vec::with_capacity(rows.len());
    let mut request_rows = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        labels.push(label(row, i, label_column)?);
        let mut cells: Vec<Value> = columns
            .iter()
            .map(|c| row.get(c).cloned().unwrap_or(Value::Null))
            .collect();
        if cells[0].is_null() {
            cells[0] = Value::from(format!("row-{i}"));
        }
        // CSV cells that look like numbers were read as numbers; keys must stay text.
        for (c, cell) in columns.iter().zip(cells.iter_mut()).skip(1) {
            if let (false, Value::Number(n)) = (is_request_number(spec, c), &cell) {
                *cell = Value::from(n.to_string());
            }
        }
        request_rows.push(cells);
    }
    let bundle = InputBundle::Request(RequestBundle {
        bundle_id: format!("training:{source}"),
        model: None,
        columns,
        rows: request_rows.into(),
    });
    let prepared = prepare(spec, std::slice::from_ref(&bundle), enricher).await;
    if let Some((down, reason)) = prepared.outage() {
        anyhow::bail!("{source}: enrichment needed {down}, which was down ({reason}); train again once it is back");
    }
    let plan = prepared
        .plans
        .into_iter()
        .next()
        .expect("one bundle")
        .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    let mut keep = Vec::new();
    let mut skipped = Vec::new();
    for ((id, slot), label) in plan.ids.into_iter().zip(plan.slots).zip(labels) {
        match slot {
            Slot::Row { matrix_row, .. } => keep.push((matrix_row, label)),
            Slot::Failed(e) => skipped.push((id, e.to_string())),
        }
    }
    let idx: Vec<usize> = keep.iter().map(|(r, _)| *r).collect();
    Ok(TrainingData {
        x: prepared.matrix.select(ndarray::Axis(0), &idx),
        y: keep.into_iter().map(|(_, l)| l).collect(),
        source: source.to_owned(),
        skipped,
    })
}

fn is_request_number(spec: &PipelineSpec, column: &str) -> bool {
    spec.features
        .iter()
        .any(|f| matches!(&f.road, crate::spec::Road::Request { column: c, .. } if c == column))
}

/// Rows of a dataset in the PostgreSQL training table, ordered by example id.
pub async fn postgres_rows(
    pool: &PgPool,
    dataset: &str,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let rows: Vec<(String, i16, Value)> = sqlx::query_as(
        "SELECT example_id, label, features FROM training_examples WHERE dataset = $1 ORDER BY example_id",
    )
    .bind(dataset)
    .fetch_all(pool)
    .await
    .context("reading training_examples")?;
    if rows.is_empty() {
        bail!("training_examples has no rows for dataset '{dataset}': load fixtures (ml-pipeline fixtures load) or give --data FILE");
    }
    Ok(rows
        .into_iter()
        .map(|(id, label, features)| {
            let mut map = match features {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            map.insert("example_id".into(), Value::from(id));
            map.insert(LABEL_COLUMN.into(), Value::from(label));
            map
        })
        .collect())
}

/// Counts of skipped rows by reason kind, for the report.
pub fn skipped_by_kind(skipped: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, reason) in skipped {
        *out.entry(crate::record::reason_kind(reason)).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The predecessor's training CSV, as it was written.
    const SEED_CSV: &str = "variance,skewness,curtosis,entropy,class\n\
                            3.6216,8.6661,-2.8073,-0.44699,0\n\
                            -1.3971,3.3191,-1.3927,-1.9948,1\n";

    fn seed_rows(test: &str) -> Vec<Map<String, Value>> {
        let dir = std::env::temp_dir().join(format!("seed-csv-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data_banknote_authentication.csv");
        std::fs::write(&path, SEED_CSV).unwrap();
        read_rows(&path).unwrap()
    }

    #[test]
    fn the_predecessors_csv_reads_as_it_is_with_its_label_column_named() {
        let data = canonical(
            &PipelineSpec::banknote(),
            &seed_rows("class"),
            "seed",
            "class",
        )
        .unwrap();
        assert_eq!(data.y, [false, true]);
        assert_eq!(data.x.row(1).to_vec(), [-1.3971, 3.3191, -1.3927, -1.9948]);
    }

    #[test]
    fn a_missing_label_column_names_the_columns_found() {
        let err = canonical(
            &PipelineSpec::banknote(),
            &seed_rows("missing"),
            "seed",
            LABEL_COLUMN,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no label column 'label'")
                && err.contains("variance, skewness, curtosis, entropy, class")
                && err.contains("--label-column"),
            "{err}"
        );
    }
}
