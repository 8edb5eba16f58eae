//! Validation: a readable bundle checked against the served model's spec before any record is
//! standardized. What fails here fails the whole bundle (the model it names, a missing column, a
//! row without a usable id, seed vectors of the wrong width): it goes to the dead-letter queue
//! with the reason, like an unreadable body.

use super::decode::DecodeError;
use super::message::InputBundle;
use super::table::CellRef;
use crate::spec::{PipelineSpec, Road};

/// A bundle that fits the spec: its record ids, and where the spec's columns sit in its rows.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The record ids, in row order (a seed bundle's subjects).
    pub ids: Vec<String>,
    /// Where the spec's request columns sit; None for a seed bundle (complete vectors).
    pub columns: Option<ColumnIndex>,
}

/// Checks `bundle` against `spec`; the error names the first problem and the bundle.
pub fn validate(spec: &PipelineSpec, bundle: &InputBundle) -> Result<Validated, DecodeError> {
    let refuse = |reason: String| DecodeError {
        bundle_id: Some(bundle.id().to_owned()),
        reason,
    };
    match bundle {
        InputBundle::Seed(seed) => {
            let n = spec.features.len();
            if let Some(row) = seed.features.iter().find(|r| r.len() != n) {
                return Err(refuse(format!(
                    "seed feature vectors have {} values; model {} takes {n} features ({})",
                    row.len(),
                    spec.name,
                    spec.feature_names().join(", ")
                )));
            }
            Ok(Validated {
                ids: seed
                    .subjects
                    .iter()
                    .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_owned))
                    .collect(),
                columns: None,
            })
        }
        InputBundle::Request(req) => {
            if let Some(model) = req.model.as_deref().filter(|m| *m != spec.name) {
                return Err(refuse(format!(
                    "model '{model}' is not served by this worker (it serves {})",
                    spec.name
                )));
            }
            let index = ColumnIndex::new(spec, &req.columns).map_err(refuse)?;
            let ids = req
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let id = row.get(index.id);
                    record_id(id).ok_or_else(|| {
                        refuse(format!(
                            "row {i} has no usable id ({}); every row needs a text or integer id",
                            id.describe()
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Validated {
                ids,
                columns: Some(index),
            })
        }
    }
}

fn record_id(cell: CellRef<'_>) -> Option<String> {
    match cell {
        CellRef::Text(s) if !s.is_empty() => Some(s.to_owned()),
        CellRef::Int(n) => Some(n.to_string()),
        CellRef::UInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Where the columns a spec needs sit in one bundle's rows.
#[derive(Debug, Clone)]
pub struct ColumnIndex {
    /// The position of each lookup's key column.
    pub lookup_keys: Vec<usize>,
    /// The position of the document key column.
    pub doc_key: Option<usize>,
    /// Per feature read from the request: its column's position and name.
    pub features: Vec<Option<(usize, String)>>,
    /// The position of the id column.
    pub id: usize,
}

impl ColumnIndex {
    /// Maps the spec's request columns to positions in `columns`; names the first one missing.
    pub fn new(spec: &PipelineSpec, columns: &[String]) -> Result<Self, String> {
        let find = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .map(|i| (i, name.to_owned()))
                .ok_or_else(|| {
                    format!(
                        "column '{name}' is missing; model {} needs columns {:?}",
                        spec.name,
                        spec.request_columns()
                    )
                })
        };
        let id = find(&spec.id_column)?.0;
        let lookup_keys = spec
            .lookups
            .iter()
            .map(|l| find(&l.key_from).map(|(i, _)| i))
            .collect::<Result<_, _>>()?;
        let doc_key = spec
            .documents
            .as_ref()
            .map(|d| find(&d.key_from).map(|(i, _)| i))
            .transpose()?;
        let features = spec
            .features
            .iter()
            .map(|f| match &f.road {
                Road::Request { column, .. } => find(column).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            lookup_keys,
            doc_key,
            features,
            id,
        })
    }
}
