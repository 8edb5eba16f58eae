//! One retraining run (`ml-pipeline retrain`), the one-shot job a schedule starts.
//!
//! 1. **Trigger.** It runs when at least `min_new_examples` feedback examples were labelled
//!    since the last retraining job (or, before any, since the champion was trained), or when
//!    that is `max_hours` ago, whichever comes first; `force` runs it anyway. Otherwise it
//!    records nothing and says when it would run.
//! 2. **Data.** The champion's base dataset plus the feedback dataset. A fixed share of each
//!    (`gate_share`, chosen by a hash of dataset and example id, so the same rows every run) is
//!    held out: the challenger never trains on it, and champion and challenger are scored on
//!    exactly those rows. The first champion was trained on all of its dataset, held-out rows
//!    included, which can only favour it: the gate errs towards keeping the champion.
//! 3. **Challenger.** Trained on the rest with the champion's parameters (or a search), through
//!    the same job as `train` (cross-validation, reports, a row in `training_jobs` with
//!    `kind = 'retrain'` and the trigger), and published as a new version.
//! 4. **Gate.** Promoted to the alias only when its held-out accuracy beats the champion's by
//!    `margin` and no class's recall falls. The decision and both sets of scores go into the
//!    job's row (`decision`); the worker picks the new version up without a restart.
//!
//! Only one run per model at a time (a PostgreSQL advisory lock); a second one fails at once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;

use super::sampling::unit_hash;
use crate::db::SessionLock;
use crate::enrich::{DocumentSource, Enricher, ReferenceSource};
use crate::model::holder::LoadedModel;
use crate::model::registry::Registry;
use crate::monitor::store::{sustained_drift, SustainedDrift};
use crate::train::data::{self, TrainingData, LABEL_COLUMN};
use crate::train::search::Grid;
use crate::train::{DataSource, TrainOptions, TrainReport};

/// The share of each dataset held out to compare champion and challenger, unless told otherwise.
pub const DEFAULT_GATE_SHARE: f64 = 0.2;

/// What a retraining run needs besides its connections.
#[derive(Debug, Clone)]
pub struct RetrainOptions {
    /// The model name.
    pub model: String,
    /// The alias whose version is the champion, and which a better challenger takes.
    pub alias: String,
    /// The champion's dataset; None: read from its `data_source`.
    pub base_dataset: Option<String>,
    /// The dataset feedback examples are in.
    pub feedback_dataset: String,
    /// Run when this many feedback examples were labelled since the last run.
    pub min_new_examples: u64,
    /// Run when the last run is this many hours old.
    pub max_hours: f64,
    /// Run when one served feature's PSI has stayed over `drift_threshold` for this many
    /// minutes since the last run; 0: never.
    pub drift_minutes: f64,
    /// The PSI over which a feature has drifted.
    pub drift_threshold: f64,
    /// Point this alias at a challenger that is not promoted, so the workers shadow-score it.
    pub challenger_alias: Option<String>,
    /// Run whatever the trigger says.
    pub force: bool,
    /// How much more accurate the challenger must be, as a fraction.
    pub margin: f64,
    /// The share of each dataset held out for the comparison.
    pub gate_share: f64,
    /// Search this grid for the challenger's parameters; None: the champion's.
    pub search: Option<Grid>,
    /// The kernel-column cache of a Gaussian fit, in bytes.
    pub kernel_cache_bytes: u64,
    /// Where the challenger's HTML training report goes.
    pub html_report: Option<PathBuf>,
}

/// Why a run started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Trigger {
    /// Enough feedback examples arrived.
    NewExamples {
        /// Feedback examples labelled since `since`.
        new_examples: u64,
        /// The threshold they reached.
        threshold: u64,
        /// The last run's start (or the champion's training).
        since: DateTime<Utc>,
    },
    /// A served feature's PSI has stayed over the threshold (`drift_observations`).
    Drift {
        /// The feature.
        feature: String,
        /// Its latest PSI.
        psi: f64,
        /// The threshold it stayed over.
        threshold: f64,
        /// Since when it has.
        drifting_since: DateTime<Utc>,
        /// The minutes it had to stay over.
        minutes: f64,
        /// Feedback examples labelled since `since`.
        new_examples: u64,
        /// The last run's start (or the champion's training).
        since: DateTime<Utc>,
    },
    /// The last run is old enough.
    Schedule {
        /// Hours since `since`.
        hours_since: f64,
        /// The threshold.
        max_hours: f64,
        /// Feedback examples labelled since `since`.
        new_examples: u64,
        /// The last run's start (or the champion's training).
        since: DateTime<Utc>,
    },
    /// `--force`.
    Forced {
        /// Feedback examples labelled since `since`.
        new_examples: u64,
        /// The last run's start (or the champion's training).
        since: DateTime<Utc>,
    },
}

/// Where the trigger stands: what has accrued since the last run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accrued {
    /// The last retraining job's start, or the champion's training time before any.
    pub since: DateTime<Utc>,
    /// Feedback examples labelled since then.
    pub new_examples: u64,
    /// Hours since then.
    pub hours_since: f64,
    /// A feature of the champion whose PSI has stayed over the threshold since then.
    pub drift: Option<SustainedDrift>,
}

/// Whether a run is due, and why.
pub fn trigger(accrued: &Accrued, opts: &RetrainOptions) -> Option<Trigger> {
    let Accrued {
        since,
        new_examples,
        hours_since,
        ref drift,
    } = *accrued;
    if new_examples >= opts.min_new_examples.max(1) {
        Some(Trigger::NewExamples {
            new_examples,
            threshold: opts.min_new_examples,
            since,
        })
    } else if let Some(drift) = drift {
        Some(Trigger::Drift {
            feature: drift.feature.clone(),
            psi: drift.psi,
            threshold: drift.threshold,
            drifting_since: drift.since,
            minutes: opts.drift_minutes,
            new_examples,
            since,
        })
    } else if hours_since >= opts.max_hours {
        Some(Trigger::Schedule {
            hours_since,
            max_hours: opts.max_hours,
            new_examples,
            since,
        })
    } else if opts.force {
        Some(Trigger::Forced {
            new_examples,
            since,
        })
    } else {
        None
    }
}

/// A model's scores on the held-out rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    /// Held-out rows.
    pub rows: usize,
    /// Share predicted right.
    pub accuracy: f64,
    /// Per class name: the share of its rows predicted as it (absent when none is held out).
    pub recall: BTreeMap<String, f64>,
    /// The held-out rows from feedback.
    pub feedback_rows: usize,
    /// Accuracy on them (None when there are none).
    pub feedback_accuracy: Option<f64>,
}

/// Scores `scores` (decision values; 0 and above is class 1) against `truth`; `from_feedback`
/// marks the rows from the feedback dataset.
pub fn score(scores: &[f64], truth: &[bool], from_feedback: &[bool], classes: [&str; 2]) -> Scores {
    let predicted: Vec<bool> = scores.iter().map(|s| *s >= 0.0).collect();
    let share = |rows: &mut dyn Iterator<Item = (bool, bool)>| {
        let (mut right, mut all) = (0usize, 0usize);
        for (p, t) in rows {
            all += 1;
            right += usize::from(p == t);
        }
        (all > 0).then(|| right as f64 / all as f64)
    };
    let pairs = || predicted.iter().copied().zip(truth.iter().copied());
    let mut recall = BTreeMap::new();
    for (class, name) in [(false, classes[0]), (true, classes[1])] {
        if let Some(r) = share(&mut pairs().filter(|(_, t)| *t == class)) {
            recall.insert(name.to_owned(), r);
        }
    }
    let feedback_rows = from_feedback.iter().filter(|f| **f).count();
    Scores {
        rows: truth.len(),
        accuracy: share(&mut pairs()).unwrap_or(0.0),
        recall,
        feedback_rows,
        feedback_accuracy: share(
            &mut pairs()
                .zip(from_feedback)
                .filter(|(_, f)| **f)
                .map(|(p, _)| p),
        ),
    }
}

/// Whether the challenger is better: more accurate by `margin`, no class's recall lower.
/// Returns the decision and its reason in words.
pub fn decide(champion: &Scores, challenger: &Scores, margin: f64) -> (bool, String) {
    const EPSILON: f64 = 1e-12;
    let gain = challenger.accuracy - champion.accuracy;
    let fallen: Vec<String> = champion
        .recall
        .iter()
        .filter_map(|(class, before)| {
            let after = challenger.recall.get(class).copied().unwrap_or(0.0);
            (after + EPSILON < *before).then(|| {
                format!(
                    "{class} recall fell from {:.2}% to {:.2}%",
                    before * 100.0,
                    after * 100.0
                )
            })
        })
        .collect();
    let accuracy = format!(
        "held-out accuracy {:.2}% vs the champion's {:.2}% ({:+.2} points, margin {:.2})",
        challenger.accuracy * 100.0,
        champion.accuracy * 100.0,
        gain * 100.0,
        margin * 100.0
    );
    if !fallen.is_empty() {
        (
            false,
            format!("kept the champion: {}; {accuracy}", fallen.join(", ")),
        )
    } else if gain + EPSILON < margin {
        (
            false,
            format!("kept the champion: not better by the margin: {accuracy}"),
        )
    } else {
        (
            true,
            format!("promoted: {accuracy}, no class's recall fell"),
        )
    }
}

/// The gate's decision, as recorded in the job's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The alias's version when the run started.
    pub champion_version: u64,
    /// The version the run published.
    pub challenger_version: u64,
    /// The alias.
    pub alias: String,
    /// The alias pointed at the challenger when it was not promoted, for shadow scoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenger_alias: Option<String>,
    /// The share of each dataset held out.
    pub gate_share: f64,
    /// The margin asked for.
    pub margin: f64,
    /// The champion on the held-out rows.
    pub champion: Scores,
    /// The challenger on the same rows.
    pub challenger: Scores,
    /// Whether the alias now names the challenger.
    pub promoted: bool,
    /// Why, in words.
    pub reason: String,
}

/// What a run did.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RetrainOutcome {
    /// Not due: nothing was trained or recorded.
    NotDue {
        /// What has accrued since the last run.
        accrued: Accrued,
        /// The thresholds.
        min_new_examples: u64,
        /// The thresholds.
        max_hours: f64,
    },
    /// A challenger was trained, published and judged.
    Ran(Box<RetrainReport>),
}

/// A run that trained.
#[derive(Debug, Serialize)]
pub struct RetrainReport {
    /// Why it ran.
    pub trigger: Trigger,
    /// The base dataset.
    pub base_dataset: String,
    /// Rows it trained on, from the base and from feedback.
    pub train_rows: (usize, usize),
    /// The gate's decision.
    pub decision: Decision,
    /// The challenger's training report.
    pub train: TrainReport,
}

impl std::fmt::Display for RetrainOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetrainOutcome::NotDue {
                accrued,
                min_new_examples,
                max_hours,
            } => writeln!(
                f,
                "retrain not due: {} new feedback examples since {} (runs at {min_new_examples}), {:.1} hours ago (runs at {max_hours}), no feature's PSI over its threshold long enough; nothing trained",
                accrued.new_examples,
                accrued.since.format("%Y-%m-%d %H:%M:%S UTC"),
                accrued.hours_since
            ),
            RetrainOutcome::Ran(r) => {
                let d = &r.decision;
                let trigger = match &r.trigger {
                    Trigger::NewExamples { new_examples, threshold, .. } => {
                        format!("{new_examples} new feedback examples (threshold {threshold})")
                    }
                    Trigger::Schedule { hours_since, max_hours, .. } => {
                        format!("{hours_since:.1} hours since the last run (at most {max_hours})")
                    }
                    Trigger::Drift { feature, psi, threshold, drifting_since, .. } => {
                        format!("drift: feature {feature} has had a PSI over {threshold} since {} (now {psi:.3})", drifting_since.format("%H:%M:%S UTC"))
                    }
                    Trigger::Forced { new_examples, .. } => {
                        format!("forced ({new_examples} new feedback examples)")
                    }
                };
                writeln!(f, "retrain job {} started by {trigger}", r.train.job_id)?;
                writeln!(
                    f,
                    "challenger: version {} trained on {} rows ({} from {}, {} from feedback); {} rows held out ({} from feedback)",
                    d.challenger_version,
                    r.train_rows.0 + r.train_rows.1,
                    r.train_rows.0,
                    r.base_dataset,
                    r.train_rows.1,
                    d.challenger.rows,
                    d.challenger.feedback_rows
                )?;
                writeln!(f, "{:<28} {:>10} {:>12}", "held-out rows", format!("v{}", d.champion_version), format!("v{}", d.challenger_version))?;
                let pct = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{:.2}%", x * 100.0));
                writeln!(f, "{:<28} {:>10} {:>12}", "accuracy", pct(Some(d.champion.accuracy)), pct(Some(d.challenger.accuracy)))?;
                for (class, r) in &d.champion.recall {
                    writeln!(f, "{:<28} {:>10} {:>12}", format!("recall {class}"), pct(Some(*r)), pct(d.challenger.recall.get(class).copied()))?;
                }
                writeln!(f, "{:<28} {:>10} {:>12}", "accuracy on feedback rows", pct(d.champion.feedback_accuracy), pct(d.challenger.feedback_accuracy))?;
                writeln!(f, "decision: {}", d.reason)?;
                if d.promoted {
                    writeln!(f, "alias {} -> version {} (workers switch within their poll interval)", d.alias, d.challenger_version)
                } else if let Some(challenger) = &d.challenger_alias {
                    writeln!(f, "alias {} stays on version {}; alias {challenger} -> version {} (workers with ML_PIPELINE_SHADOW_ALIAS={challenger} shadow-score it)", d.alias, d.champion_version, d.challenger_version)
                } else {
                    writeln!(f, "alias {} stays on version {}; version {} is published for inspection", d.alias, d.champion_version, d.challenger_version)
                }
            }
        }
    }
}

/// Runs one retraining job.
pub async fn retrain<R: ReferenceSource, D: DocumentSource>(
    opts: &RetrainOptions,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
    registry: &Registry,
) -> anyhow::Result<RetrainOutcome> {
    let key = "hashtext('ml_pipeline.retrain/' || $1)";
    let Some(lock) = SessionLock::try_take(pool, key, &opts.model).await? else {
        bail!("another retrain of model {} is running (it holds the PostgreSQL advisory lock); this run did nothing", opts.model);
    };
    let outcome = retrain_locked(opts, pool, enricher, registry).await;
    // Released before returning, whatever the run's outcome: a run started right after this
    // one must find the lock free.
    lock.release().await;
    outcome
}

/// One retraining job, with the model's lock held.
async fn retrain_locked<R: ReferenceSource, D: DocumentSource>(
    opts: &RetrainOptions,
    pool: &PgPool,
    enricher: &Enricher<R, D>,
    registry: &Registry,
) -> anyhow::Result<RetrainOutcome> {
    let name = &opts.model;
    let Some(alias) = registry.alias(name, &opts.alias).await? else {
        bail!("model {name} has no alias {}: train and promote a first version (ml-pipeline train, models promote) before retraining", opts.alias);
    };
    let champion_version = alias.record.version;
    let champion = registry
        .load(name, champion_version)
        .await
        .with_context(|| format!("loading the champion, {name} version {champion_version}"))?;
    let accrued = accrued(pool, opts, (champion_version, champion.created_at)).await?;
    let Some(trigger) = trigger(&accrued, opts) else {
        return Ok(RetrainOutcome::NotDue {
            accrued,
            min_new_examples: opts.min_new_examples,
            max_hours: opts.max_hours,
        });
    };
    let base = match &opts.base_dataset {
        Some(d) => d.clone(),
        None => base_dataset_of(&champion.data_source)
            .with_context(|| format!(
                "the champion ({name} version {champion_version}) was trained from {}, not a training_examples dataset: name its dataset with --base-dataset (ML_PIPELINE_RETRAIN_BASE_DATASET)",
                champion.data_source
            ))?,
    };
    let spec = champion.spec.clone();
    let split = Split::read(pool, &spec, &base, &opts.feedback_dataset, opts.gate_share).await?;
    let train_opts = TrainOptions {
        spec,
        source: DataSource::Loaded(Box::new(split.train)),
        params: champion.params.clone(),
        kernel_cache_bytes: opts.kernel_cache_bytes,
        dry_run: false,
        search: opts.search.clone(),
        html_report: opts.html_report.clone(),
        trigger: Some(serde_json::to_value(&trigger)?),
    };
    let (report, artifact) =
        crate::train::train(&train_opts, pool, enricher, Some(registry)).await?;
    let challenger_version = report
        .version
        .context("a retrain publishes its challenger")?;
    let classes = [class_name(&champion, 0), class_name(&champion, 1)];
    let gate = &split.gate;
    let judge = |model: &LoadedModel| {
        score(
            &model.classifier.decision_values(gate.x.clone()),
            &gate.y,
            &split.gate_from_feedback,
            classes,
        )
    };
    let champion_scores = judge(&LoadedModel::new(champion_version, champion.clone()));
    let challenger_scores = judge(&LoadedModel::new(challenger_version, artifact));
    let (promoted, reason) = decide(&champion_scores, &challenger_scores, opts.margin);
    let moved = match (promoted, &opts.challenger_alias) {
        (true, _) => Some(&opts.alias),
        (false, Some(challenger)) => Some(challenger),
        (false, None) => None,
    };
    if let Some(alias) = moved {
        registry
            .set_alias(name, alias, challenger_version, "retrain")
            .await
            .with_context(|| {
                format!("pointing alias {alias} at the challenger, version {challenger_version}")
            })?;
    }
    let decision = Decision {
        champion_version,
        challenger_version,
        alias: opts.alias.clone(),
        challenger_alias: opts.challenger_alias.clone().filter(|_| !promoted),
        gate_share: opts.gate_share,
        margin: opts.margin,
        champion: champion_scores,
        challenger: challenger_scores,
        promoted,
        reason,
    };
    sqlx::query("UPDATE training_jobs SET decision = $2 WHERE job_id = $1")
        .bind(report.job_id)
        .bind(serde_json::to_value(&decision)?)
        .execute(pool)
        .await
        .context("recording the decision in training_jobs")?;
    crate::instruments::retrain_decision(name, promoted);
    Ok(RetrainOutcome::Ran(Box::new(RetrainReport {
        trigger,
        base_dataset: base,
        train_rows: split.train_rows,
        decision,
        train: report,
    })))
}

/// How `train` names a dataset source, and how a retrain adds the feedback to it.
const DATASET_SOURCE: &str = "postgres:training_examples/";
const FEEDBACK_SEPARATOR: &str = " + training_examples/";

/// The base dataset of a model trained from `data_source`: a `train` on a dataset, or a retrain
/// on a base dataset plus feedback.
pub fn base_dataset_of(data_source: &str) -> Option<String> {
    let rest = data_source.strip_prefix(DATASET_SOURCE)?;
    Some(
        rest.split(FEEDBACK_SEPARATOR)
            .next()
            .unwrap_or(rest)
            .to_owned(),
    )
}

fn class_name(artifact: &crate::model::ModelArtifact, class: u8) -> &str {
    artifact
        .class_names
        .get(&class)
        .map_or(if class == 1 { "real" } else { "fake" }, String::as_str)
}

/// What accrued since the last retraining job of the model (or `champion_trained` before any).
async fn accrued(
    pool: &PgPool,
    opts: &RetrainOptions,
    (champion_version, champion_trained): (u64, DateTime<Utc>),
) -> anyhow::Result<Accrued> {
    let (last,): (Option<DateTime<Utc>>,) = sqlx::query_as(
        "SELECT max(started_at) FROM training_jobs WHERE model_name = $1 AND kind = 'retrain' AND status = 'succeeded'",
    )
    .bind(&opts.model)
    .fetch_one(pool)
    .await
    .context("reading the last retraining job")?;
    let since = last.unwrap_or(champion_trained);
    let (new_examples,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM training_examples WHERE dataset = $1 AND labelled_at > $2",
    )
    .bind(&opts.feedback_dataset)
    .bind(since)
    .fetch_one(pool)
    .await
    .context("counting new feedback examples")?;
    let drift = if opts.drift_minutes > 0.0 {
        let span = chrono::Duration::milliseconds((opts.drift_minutes * 60e3) as i64);
        let model = (opts.model.as_str(), champion_version);
        sustained_drift(pool, model, opts.drift_threshold, span, since)
            .await
            .context("reading drift_observations")?
    } else {
        None
    };
    Ok(Accrued {
        since,
        new_examples: new_examples as u64,
        hours_since: (Utc::now() - since).num_milliseconds() as f64 / 3.6e6,
        drift,
    })
}

/// The rows of a run: what the challenger trains on, and the held-out rows both are scored on.
struct Split {
    train: TrainingData,
    train_rows: (usize, usize),
    gate: TrainingData,
    gate_from_feedback: Vec<bool>,
}

impl Split {
    async fn read(
        pool: &PgPool,
        spec: &crate::spec::PipelineSpec,
        base: &str,
        feedback: &str,
        share: f64,
    ) -> anyhow::Result<Split> {
        let base_rows = data::postgres_rows(pool, base).await?;
        let feedback_rows = match data::postgres_rows(pool, feedback).await {
            Ok(rows) => rows,
            // No feedback yet: the challenger is trained on the base alone.
            Err(_) if count(pool, feedback).await? == 0 => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut base_train: Vec<Map<String, Value>> = Vec::new();
        let mut feedback_train: Vec<Map<String, Value>> = Vec::new();
        let mut gate = Vec::new();
        let mut gate_from_feedback = Vec::new();
        for (dataset, rows, from_feedback) in
            [(base, base_rows, false), (feedback, feedback_rows, true)]
        {
            for row in rows {
                let id = row
                    .get("example_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if unit_hash(&format!("{dataset}/{id}")) < share {
                    gate.push(row);
                    gate_from_feedback.push(from_feedback);
                } else if from_feedback {
                    feedback_train.push(row);
                } else {
                    base_train.push(row);
                }
            }
        }
        let train_rows = (base_train.len(), feedback_train.len());
        if gate.len() < 10 {
            bail!("only {} rows are held out of {base} and {feedback} (share {share}): too few to compare champion and challenger; raise --gate-share or label more examples", gate.len());
        }
        let mut rows = base_train;
        rows.extend(feedback_train);
        let source = format!("{DATASET_SOURCE}{base}{FEEDBACK_SEPARATOR}{feedback} (less the {:.0}% held out to compare with the champion)", share * 100.0);
        Ok(Split {
            train: data::canonical(spec, &rows, &source, LABEL_COLUMN)?,
            train_rows,
            gate: data::canonical(spec, &gate, "the held-out rows", LABEL_COLUMN)?,
            gate_from_feedback,
        })
    }
}

async fn count(pool: &PgPool, dataset: &str) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM training_examples WHERE dataset = $1")
        .bind(dataset)
        .fetch_one(pool)
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(accuracy: f64, fake: f64, real: f64) -> Scores {
        Scores {
            rows: 100,
            accuracy,
            recall: [("fake".to_owned(), fake), ("real".to_owned(), real)].into(),
            feedback_rows: 0,
            feedback_accuracy: None,
        }
    }

    #[test]
    fn the_gate_promotes_only_a_better_model_whose_recalls_hold() {
        let champion = scores(0.95, 0.94, 0.96);
        let (yes, why) = decide(&champion, &scores(0.97, 0.96, 0.98), 0.005);
        assert!(yes, "{why}");
        let (no, why) = decide(&champion, &scores(0.952, 0.95, 0.96), 0.005);
        assert!(!no && why.contains("not better by the margin"), "{why}");
        let (no, why) = decide(&champion, &scores(0.99, 0.93, 1.0), 0.005);
        assert!(
            !no && why.contains("fake recall fell from 94.00% to 93.00%"),
            "{why}"
        );
        let (yes, why) = decide(&champion, &champion.clone(), 0.0);
        assert!(yes, "a zero margin promotes an equal model: {why}");
    }

    #[test]
    fn scores_count_accuracy_and_recall_per_class() {
        let s = score(
            &[1.0, -1.0, 0.5, -0.2, 0.0],
            &[true, false, false, false, true],
            &[false, false, true, true, false],
            ["fake", "real"],
        );
        assert_eq!(s.rows, 5);
        assert!((s.accuracy - 0.8).abs() < 1e-12);
        assert!((s.recall["real"] - 1.0).abs() < 1e-12);
        assert!((s.recall["fake"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.feedback_rows, 2);
        assert_eq!(s.feedback_accuracy, Some(0.5));
    }

    fn opts() -> RetrainOptions {
        RetrainOptions {
            model: "banknote".into(),
            alias: "production".into(),
            base_dataset: None,
            feedback_dataset: "feedback".into(),
            min_new_examples: 500,
            max_hours: 24.0,
            drift_minutes: 0.0,
            drift_threshold: 0.2,
            challenger_alias: None,
            force: false,
            margin: 0.005,
            gate_share: DEFAULT_GATE_SHARE,
            search: None,
            kernel_cache_bytes: 1 << 20,
            html_report: None,
        }
    }

    #[test]
    fn the_base_dataset_survives_retraining() {
        assert_eq!(
            base_dataset_of("postgres:training_examples/default").as_deref(),
            Some("default")
        );
        assert_eq!(
            base_dataset_of("postgres:training_examples/first-labels + training_examples/feedback (less the 20% held out to compare with the champion)").as_deref(),
            Some("first-labels")
        );
        assert_eq!(base_dataset_of("file:notes.csv"), None);
    }

    #[test]
    fn the_trigger_is_new_examples_or_time_whichever_comes_first() {
        let since = Utc::now();
        let at = |new_examples, hours_since| Accrued {
            since,
            new_examples,
            hours_since,
            drift: None,
        };
        assert!(matches!(
            trigger(&at(500, 1.0), &opts()),
            Some(Trigger::NewExamples {
                new_examples: 500,
                ..
            })
        ));
        assert!(matches!(
            trigger(&at(3, 30.0), &opts()),
            Some(Trigger::Schedule { .. })
        ));
        assert_eq!(trigger(&at(499, 23.9), &opts()), None);
        let forced = RetrainOptions {
            force: true,
            ..opts()
        };
        assert!(matches!(
            trigger(&at(0, 0.0), &forced),
            Some(Trigger::Forced { .. })
        ));
        let json = serde_json::to_value(trigger(&at(600, 1.0), &opts()).unwrap()).unwrap();
        assert_eq!(json["reason"], "new_examples");
        assert_eq!(json["new_examples"], 600);

        // Sustained drift starts a run before the schedule would, and says which feature.
        let drifted = Accrued {
            drift: Some(SustainedDrift {
                feature: "variance".into(),
                psi: 0.4,
                threshold: 0.2,
                since,
                observations: 12,
            }),
            ..at(3, 1.0)
        };
        let json = serde_json::to_value(trigger(&drifted, &opts()).unwrap()).unwrap();
        assert_eq!(json["reason"], "drift");
        assert_eq!(json["feature"], "variance");
        assert_eq!(json["psi"], 0.4);
    }
}
