//! Labelled canonical rows from a CSV in the `notes.csv` layout, read straight into a matrix.
//!
//! `train` reads files with [`ml_pipeline::train::data::read_rows`], which keeps every row as a
//! JSON object: several hundred bytes a row, which at 100 000 rows would sit in the peak RSS
//! the benchmark reports as the fit's. This reader keeps only the matrix and the labels (33
//! bytes a row), reads the first `limit` rows only, and puts the features in the spec's order
//! by name; a test checks that it gives what `read_rows` + `canonical` give.

use std::path::Path;

use anyhow::Context;
use ndarray::Array2;

use ml_pipeline::spec::PipelineSpec;

/// Features in the spec's order and classes (true = real).
#[derive(Debug, Clone)]
pub struct Rows {
    /// Canonical features, one row per note.
    pub x: Array2<f64>,
    /// Classes: true = real.
    pub y: Vec<bool>,
}

/// Reads the first `limit` rows (all when `None`) of a canonical CSV with a label column.
/// Fewer rows than asked for is an error: a benchmark must not quietly run on less.
pub fn read_prefix(
    path: &Path,
    spec: &PipelineSpec,
    label_column: &str,
    limit: Option<usize>,
) -> anyhow::Result<Rows> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let position = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column '{name}'; its columns are: {}",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(", ")
            )
        })
    };
    let columns = spec
        .feature_names()
        .into_iter()
        .map(position)
        .collect::<anyhow::Result<Vec<usize>>>()?;
    let label_at = position(label_column)?;
    let mut cells = Vec::with_capacity(limit.unwrap_or(0) * columns.len());
    let mut y = Vec::with_capacity(limit.unwrap_or(0));
    let mut record = csv::StringRecord::new();
    while limit.is_none_or(|n| y.len() < n) && reader.read_record(&mut record)? {
        let line = y.len() + 2;
        for &c in &columns {
            let v: f64 = record[c]
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .with_context(|| {
                    format!(
                        "{} line {line}: '{}' is not a finite number",
                        path.display(),
                        &record[c]
                    )
                })?;
            cells.push(v);
        }
        y.push(parse_label(&record[label_at]).with_context(|| {
            format!(
                "{} line {line}: label '{}'",
                path.display(),
                &record[label_at]
            )
        })?);
    }
    if let Some(n) = limit {
        anyhow::ensure!(
            y.len() == n,
            "{} has {} rows, {n} were asked for; generate a larger set (fixtures generate --notes {n})",
            path.display(),
            y.len()
        );
    }
    Ok(Rows {
        x: Array2::from_shape_vec((y.len(), columns.len()), cells)?,
        y,
    })
}

/// A class as `train` reads it: 1/0, true/false or real/fake.
fn parse_label(text: &str) -> anyhow::Result<bool> {
    match text.trim() {
        "1" | "1.0" | "true" | "real" => Ok(true),
        "0" | "0.0" | "false" | "fake" => Ok(false),
        other => anyhow::bail!("'{other}' is not 1/0, true/false or real/fake"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_pipeline::train::data::{canonical, read_rows, LABEL_COLUMN};

    /// Columns in another order than the spec's, as a predecessor's file might have them.
    const CSV: &str = "note_id,label,entropy,variance,curtosis,skewness,issuer_code\n\
                       SN-1,1,-0.44699,3.6216,-2.8073,8.6661,EU\n\
                       SN-2,0,-1.9948,-1.3971,-1.3927,3.3191,EU\n\
                       SN-3,1,0.5,1.25,2.5,-3.75,US\n";

    fn csv_file(test: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("train-bench-rows-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notes.csv");
        std::fs::write(&path, CSV).unwrap();
        path
    }

    #[test]
    fn rows_match_what_train_reads_in_the_spec_order() {
        let spec = PipelineSpec::banknote();
        let path = csv_file("same");
        let ours = read_prefix(&path, &spec, LABEL_COLUMN, None).unwrap();
        let train = canonical(&spec, &read_rows(&path).unwrap(), "t", LABEL_COLUMN).unwrap();
        assert_eq!(ours.x, train.x);
        assert_eq!(ours.y, train.y);
        assert_eq!(ours.x.row(0).to_vec(), [3.6216, 8.6661, -2.8073, -0.44699]);
    }

    #[test]
    fn a_prefix_is_the_first_rows_and_too_few_rows_is_an_error() {
        let spec = PipelineSpec::banknote();
        let path = csv_file("prefix");
        let two = read_prefix(&path, &spec, LABEL_COLUMN, Some(2)).unwrap();
        assert_eq!(two.y, [true, false]);
        let err = read_prefix(&path, &spec, LABEL_COLUMN, Some(4)).unwrap_err();
        assert!(
            err.to_string().contains("has 3 rows, 4 were asked for"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_column_names_the_columns_found() {
        let err = read_prefix(&csv_file("label"), &PipelineSpec::banknote(), "class", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no column 'class'") && err.contains("note_id, label"),
            "{err}"
        );
    }
}
