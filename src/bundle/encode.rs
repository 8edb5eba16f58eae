//! Encoding: the model's scores become one answer per input bundle ([`answers`]), and each
//! answer becomes a message body in the configured compression.

use std::collections::BTreeMap;

use serde::Serialize;
use smallvec::SmallVec;

use super::compression::{compress, ContentEncoding};
use super::decode::DecodeError;
use super::message::{InputBundle, OutputBundle, OutputRow, SeedAnswer};
use crate::batch::{PreparedBatch, Slot};
use crate::model::class_name;
use crate::record::{RecordError, RecordErrorKind, Stage};
use crate::spec::PipelineSpec;

/// The answer to one input bundle, in the format of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The answer to a v1 bundle.
    Request(OutputBundle),
    /// The answer to a seed-format bundle.
    Seed(SeedAnswer),
}

impl Answer {
    /// The id of the bundle it answers.
    pub fn bundle_id(&self) -> &str {
        match self {
            Answer::Request(b) => &b.bundle_id,
            Answer::Seed(b) => &b.batch_id,
        }
    }

    /// Records it answers: predicted rows and errors.
    pub fn records(&self) -> usize {
        match self {
            Answer::Request(b) => b.rows.len() + b.errors.len(),
            Answer::Seed(b) => b.output.len(),
        }
    }

    /// Records answered with an error.
    pub fn errors(&self) -> usize {
        match self {
            Answer::Request(b) => b.errors.len(),
            Answer::Seed(_) => 0,
        }
    }

    /// The message body in the given encoding.
    pub fn encode(&self, encoding: ContentEncoding) -> String {
        match self {
            Answer::Request(b) => encode(b, encoding),
            Answer::Seed(b) => encode(b, encoding),
        }
    }
}

/// Serializes a value to JSON and compresses it.
pub fn encode<T: Serialize>(value: &T, encoding: ContentEncoding) -> String {
    const SERIALIZES: &str = "answers serialize: finite floats, string keys";
    match encoding {
        // The JSON text is the body: no second pass to check its UTF-8, no copy.
        ContentEncoding::Identity => serde_json::to_string(value).expect(SERIALIZES),
        _ => compress(encoding, &serde_json::to_vec(value).expect(SERIALIZES)),
    }
}

/// The answers of a predicted batch, one per input bundle, in input order.
pub fn answers(
    spec: &PipelineSpec,
    bundles: &[InputBundle],
    mut prepared: PreparedBatch,
    scores: &[f64],
    model_version: &str,
    timing_ms: &BTreeMap<String, f64>,
) -> Vec<Result<Answer, DecodeError>> {
    let mut columns: Vec<String> = ["id", "label", "score"].map(String::from).to_vec();
    columns.extend(spec.lookups.iter().filter_map(|l| l.output_column.clone()));
    // The plans are consumed: record ids move into the answers.
    let plans = std::mem::take(&mut prepared.plans);
    let reported = |row: usize| {
        prepared
            .reported(row)
            .iter()
            .cloned()
            .collect::<SmallVec<_>>()
    };
    bundles
        .iter()
        .zip(plans)
        .map(|(bundle, plan)| {
            let plan = plan?;
            Ok(match bundle {
                InputBundle::Seed(seed) => Answer::Seed(SeedAnswer {
                    batch_id: seed.batch_id.clone(),
                    subjects: seed.subjects.clone(),
                    input: seed.features.clone(),
                    output: plan
                        .slots
                        .iter()
                        .map(|s| match s {
                            Slot::Row { matrix_row } => class_name(scores[*matrix_row]).to_owned(),
                            Slot::Failed(_) => unreachable!("seed records cannot fail"),
                        })
                        .collect(),
                }),
                InputBundle::Request(req) => {
                    let mut rows = Vec::with_capacity(plan.ids.len());
                    let mut errors = Vec::new();
                    for (id, slot) in plan.ids.into_iter().zip(plan.slots) {
                        match slot {
                            Slot::Row { matrix_row } if !scores[matrix_row].is_finite() => {
                                errors.push((id, unscorable(scores[matrix_row]).to_string()));
                            }
                            Slot::Row { matrix_row } => {
                                let score = scores[matrix_row];
                                rows.push(OutputRow {
                                    id,
                                    label: class_name(score).into(),
                                    score,
                                    reported: reported(matrix_row),
                                });
                            }
                            Slot::Failed(e) => errors.push((id, e.to_string())),
                        }
                    }
                    Answer::Request(OutputBundle {
                        bundle_id: req.bundle_id.clone(),
                        model: spec.name.clone(),
                        model_version: model_version.to_owned(),
                        columns: columns.clone(),
                        rows,
                        errors,
                        timing_ms: timing_ms.clone(),
                    })
                }
            })
        })
        .collect()
}

/// The error of a record whose features are finite but overflow once scaled for the model: its
/// score is not a number, and it must not be answered (nor counted) as if it were one.
fn unscorable(score: f64) -> RecordError {
    RecordError::new(
        Stage::Normalize,
        RecordErrorKind::Overflow {
            feature: "a feature".into(),
        },
        format!(
            "a feature overflows once scaled for the model (the score is {score}); a value is out of any real range"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BundlePlan;
    use crate::bundle::message::RequestBundle;

    #[test]
    fn a_record_whose_score_is_not_a_number_is_answered_with_an_error() {
        let spec = PipelineSpec::banknote();
        let bundle = InputBundle::Request(RequestBundle {
            bundle_id: "b-1".into(),
            model: None,
            columns: vec!["id".into()],
            rows: vec![
                vec![serde_json::json!("r-1")],
                vec![serde_json::json!("r-2")],
            ]
            .into(),
        });
        let prepared = PreparedBatch {
            matrix: ndarray::Array2::zeros((2, 4)),
            plans: vec![Ok(BundlePlan {
                ids: vec!["r-1".into(), "r-2".into()],
                slots: vec![Slot::Row { matrix_row: 0 }, Slot::Row { matrix_row: 1 }],
            })],
            reported: Vec::new(),
            reported_columns: 0,
            coverage: Default::default(),
            timing_ms: Default::default(),
            outages: Vec::new(),
        };
        let scores = [0.5, f64::INFINITY];
        let answer = answers(&spec, &[bundle], prepared, &scores, "1", &BTreeMap::new())
            .remove(0)
            .unwrap();
        let Answer::Request(out) = answer else {
            panic!("a v1 answer")
        };
        assert_eq!(out.rows.len(), 1);
        assert_eq!(out.rows[0].id, "r-1");
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].0, "r-2");
        assert!(out.errors[0]
            .1
            .starts_with("normalize: a feature overflows once scaled"));
    }
}
