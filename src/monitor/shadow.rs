//! Shadow scoring: a second model version, named by its own alias (`challenger`, say), scores a
//! share of each batch beside the served one. Answers carry the served model's result only.
//!
//! Production is never touched by it:
//! - the shadow model is loaded and polled by its own task; until it loads (or when its alias
//!   names a version that does not validate), nothing is shadowed and the worker serves as usual;
//! - its rows are copied before the served model's call, and scored afterwards on a blocking
//!   thread, one batch at a time (at most one core); when [`QUEUED_JOBS`] batches already wait,
//!   a new one is skipped (and counted), so a slow shadow model costs shadow coverage, never
//!   answer time;
//! - a panic in its prediction is caught and counted as a failure.
//!
//! Which bundles are shadowed is a stable hash of the bundle id, the same one the prediction log
//! samples by, so with equal fractions the logged bundles are the shadowed ones.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ndarray::Array2;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::model::holder::{LoadedModel, ModelHolder, ModelSource};
use crate::model::registry::{Registry, RegistryError};

/// Shadow jobs waiting or scoring before new ones are skipped: a burst of batches is shadowed
/// whole, a shadow model slower than production sheds its excess.
pub const QUEUED_JOBS: usize = 8;

/// What shadow scoring saw for one pair of versions since the last interval.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct Tally {
    /// Records both models scored.
    #[sqlx(try_from = "i64")]
    pub records: u64,
    /// Of those, records given the same class.
    #[sqlx(try_from = "i64")]
    pub agreed: u64,
    /// Sum of |shadow score - served score|.
    pub score_diff_sum: f64,
    /// The largest |shadow score - served score|.
    pub score_diff_max: f64,
    /// Seconds the served model spent on those records (its share of the batch call).
    pub served_seconds: f64,
    /// Seconds the shadow model spent on them.
    pub shadow_seconds: f64,
    /// Records whose shadow prediction failed.
    #[sqlx(try_from = "i64")]
    pub failures: u64,
    /// Records chosen for shadowing but skipped, because the previous batch was still scoring.
    #[sqlx(try_from = "i64")]
    pub skipped: u64,
}

impl Tally {
    /// The share of records both models classed alike (None before any).
    pub fn agreement(&self) -> Option<f64> {
        (self.records > 0).then(|| self.agreed as f64 / self.records as f64)
    }

    /// Mean |shadow score - served score|.
    pub fn mean_score_diff(&self) -> Option<f64> {
        (self.records > 0).then(|| self.score_diff_sum / self.records as f64)
    }

    /// Shadow prediction time over served prediction time, for the same records.
    pub fn latency_ratio(&self) -> Option<f64> {
        (self.served_seconds > 0.0).then(|| self.shadow_seconds / self.served_seconds)
    }

    /// Adds the comparison of one batch's scores.
    pub fn compare(&mut self, served: &[f64], shadow: &[f64]) {
        for (&p, &s) in served.iter().zip(shadow) {
            if !(p.is_finite() && s.is_finite()) {
                self.failures += 1;
                continue;
            }
            self.records += 1;
            self.agreed += u64::from((p >= 0.0) == (s >= 0.0));
            let diff = (s - p).abs();
            self.score_diff_sum += diff;
            self.score_diff_max = self.score_diff_max.max(diff);
        }
    }
}

/// Rows of one batch to score with the shadow model.
#[derive(Debug)]
pub struct ShadowJob {
    /// The served model's version.
    pub served_version: u64,
    /// Canonical features of the chosen rows.
    pub x: Array2<f64>,
    /// The served model's scores of those rows.
    pub served: Vec<f64>,
    /// The served model's time for those rows (its batch time, pro rata).
    pub served_seconds: f64,
    /// Where the shadow's scores go, row by row, when something (the prediction log) wants
    /// them; dropped unsent when the job is skipped or its prediction fails.
    pub scored: Option<oneshot::Sender<ShadowScores>>,
}

/// The shadow model's scores of one job's rows, in the job's row order.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowScores {
    /// The shadow model's version.
    pub version: u64,
    /// Its decision value per row.
    pub scores: Vec<f64>,
    /// Its prediction time over the served model's, for these rows.
    pub latency_ratio: Option<f64>,
}

/// The shadow model and what it has scored.
#[derive(Debug)]
pub struct Shadow {
    registry: Registry,
    name: String,
    alias: String,
    fraction: f64,
    holder: OnceLock<Arc<ModelHolder>>,
    /// Jobs submitted and not finished, at most [`QUEUED_JOBS`].
    queued: Arc<Semaphore>,
    /// Held while a job scores: one at a time, so shadowing takes at most one core.
    scoring: Mutex<()>,
    /// Per (served version, shadow version).
    tallies: Mutex<BTreeMap<(u64, u64), Tally>>,
    /// The shadow version last found incompatible with the served one (warned once).
    incompatible: AtomicU64,
    /// Whether the last (served, shadow) pair of versions read the same features: a version's
    /// features never change, so they are compared once per pair, not per batch.
    checked: Mutex<Option<((u64, u64), bool)>>,
}

impl Shadow {
    /// Shadows `fraction` of the bundles with the version alias `alias` of model `name` names.
    pub fn new(registry: Registry, name: &str, alias: &str, fraction: f64) -> Self {
        Self {
            registry,
            name: name.to_owned(),
            alias: alias.to_owned(),
            fraction: fraction.clamp(0.0, 1.0),
            holder: OnceLock::new(),
            queued: Arc::new(Semaphore::new(QUEUED_JOBS)),
            scoring: Mutex::new(()),
            tallies: Mutex::default(),
            incompatible: AtomicU64::new(u64::MAX),
            checked: Mutex::new(None),
        }
    }

    /// The alias it follows.
    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// Whether a bundle is shadowed.
    pub fn keeps(&self, bundle_id: &str) -> bool {
        crate::sample::keeps(bundle_id, self.fraction)
    }

    /// The shadow model to score `served`'s batch with: None until it loads, or when its
    /// features are not the served model's (it could not read the same matrix; warned once per
    /// version).
    pub fn model_for(&self, served: &LoadedModel) -> Option<Arc<LoadedModel>> {
        let shadow = self.holder.get()?.current();
        let pair = (served.version, shadow.version);
        let same = {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            match *checked {
                Some((p, same)) if p == pair => same,
                _ => {
                    let same = shadow.artifact.spec.feature_names()
                        == served.artifact.spec.feature_names();
                    *checked = Some((pair, same));
                    same
                }
            }
        };
        if same {
            return Some(shadow);
        }
        if self.incompatible.swap(shadow.version, Ordering::Relaxed) != shadow.version {
            tracing::warn!(
                model = %self.name,
                alias = %self.alias,
                shadow_version = shadow.version,
                model_version = served.version,
                shadow_features = ?shadow.artifact.spec.feature_names(),
                served_features = ?served.artifact.spec.feature_names(),
                "shadow model not scored: its features are not the served model's"
            );
        }
        None
    }

    /// Scores `job` with `shadow` on a blocking thread, after the jobs before it (one at a
    /// time); when [`QUEUED_JOBS`] are already waiting or scoring, its records are counted as
    /// skipped instead. Never waits.
    pub fn submit(self: &Arc<Self>, shadow: Arc<LoadedModel>, job: ShadowJob) {
        let rows = job.x.nrows() as u64;
        if rows == 0 {
            return;
        }
        let Ok(permit) = Arc::clone(&self.queued).try_acquire_owned() else {
            self.tallies
                .lock()
                .expect("shadow tallies")
                .entry((job.served_version, shadow.version))
                .or_default()
                .skipped += rows;
            crate::instruments::shadow_records("skipped", rows);
            return;
        };
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _one_at_a_time = me.scoring.lock().unwrap_or_else(|e| e.into_inner());
            me.score(&shadow, job);
        });
    }

    /// Scores one job now, on this thread.
    pub fn score(&self, shadow: &LoadedModel, job: ShadowJob) {
        self.score_with(shadow.version, job, |x| {
            shadow.classifier.decision_values(x)
        });
    }

    /// Scores one job with `predict`, the decision values of shadow version `version`.
    fn score_with(
        &self,
        version: u64,
        job: ShadowJob,
        predict: impl FnOnce(Array2<f64>) -> Vec<f64>,
    ) {
        let rows = job.x.nrows() as u64;
        let started = Instant::now();
        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| predict(job.x)));
        let scored_to = job.scored;
        let seconds = started.elapsed().as_secs_f64();
        let mut tallies = self.tallies.lock().expect("shadow tallies");
        let tally = tallies.entry((job.served_version, version)).or_default();
        match scored {
            Ok(scores) => {
                let before = (tally.agreed, tally.records, tally.failures);
                tally.compare(&job.served, &scores);
                tally.served_seconds += job.served_seconds;
                tally.shadow_seconds += seconds;
                crate::instruments::shadow_scored(
                    tally.agreed - before.0,
                    tally.records - before.1 - (tally.agreed - before.0),
                    tally.failures - before.2,
                    job.served_seconds,
                    seconds,
                );
                if let Some(to) = scored_to {
                    // The receiver may have given up waiting: nothing to do then.
                    let _ = to.send(ShadowScores {
                        version,
                        scores,
                        latency_ratio: (job.served_seconds > 0.0)
                            .then(|| seconds / job.served_seconds),
                    });
                }
            }
            Err(_) => {
                tally.failures += rows;
                crate::instruments::shadow_records("failed", rows);
                tracing::warn!(
                    model = %self.name,
                    alias = %self.alias,
                    shadow_version = version,
                    records = rows,
                    "shadow model failed to predict; production answers are not affected"
                );
            }
        }
    }

    /// What was scored since the last call, per (served version, shadow version).
    pub fn take(&self) -> BTreeMap<(u64, u64), Tally> {
        std::mem::take(&mut *self.tallies.lock().expect("shadow tallies"))
    }

    /// Loads the shadow model, retrying every `interval` until it loads, then polls its alias
    /// like the served model's, until `cancel`. Failures are logged, never fatal.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Some(holder) = self.holder.get() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = holder.poll_once() => {}
                }
                continue;
            }
            let loaded = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.load() => r,
            };
            if let Err(e) = loaded {
                let error = crate::text::error_chain(&e);
                if error != last_error {
                    tracing::warn!(model = %self.name, alias = %self.alias, %error, "shadow model not loaded; production serves as usual, and loading is tried again");
                    last_error = error;
                }
            }
        }
    }

    /// Loads the version the alias names, once; later calls return the loaded version (the
    /// alias is then followed by [`Shadow::run`]'s polls).
    pub async fn load(&self) -> Result<u64, RegistryError> {
        if let Some(holder) = self.holder.get() {
            return Ok(holder.current().version);
        }
        let source = ModelSource::Alias(self.alias.clone());
        let holder = ModelHolder::load(self.registry.clone(), &self.name, source).await?;
        let version = holder.current().version;
        tracing::info!(
            model = %self.name,
            alias = %self.alias,
            shadow_version = version,
            fraction = self.fraction,
            "shadow model loaded: scoring a share of each batch beside production"
        );
        let _ = self.holder.set(Arc::new(holder));
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::artifact::test_artifact;
    use crate::model::memory_store::MemoryStore;

    fn shadow() -> Shadow {
        let registry = Registry::with_store(Arc::new(MemoryStore::new("models")));
        Shadow::new(registry, "banknote", "challenger", 1.0)
    }

    fn job(x: Array2<f64>) -> (ShadowJob, oneshot::Receiver<ShadowScores>) {
        let (tx, rx) = oneshot::channel();
        let rows = x.nrows();
        let job = ShadowJob {
            served_version: 1,
            x,
            served: vec![1.0; rows],
            served_seconds: 0.001,
            scored: Some(tx),
        };
        (job, rx)
    }

    #[test]
    fn a_scored_job_sends_its_scores_row_by_row_and_is_tallied() {
        let shadow = shadow();
        let model = LoadedModel::new(2, test_artifact());
        let x = ndarray::array![[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]];
        let (job, mut rx) = job(x);
        shadow.score(&model, job);
        let scores = rx.try_recv().expect("the scores were sent");
        assert_eq!((scores.version, scores.scores.len()), (2, 2));
        assert!(scores.scores[0] >= 0.0 && scores.scores[1] < 0.0);
        assert!(scores.latency_ratio.is_some_and(|r| r > 0.0));
        let tally = &shadow.take()[&(1, 2)];
        assert_eq!((tally.records, tally.agreed, tally.failures), (2, 1, 0));
    }

    #[test]
    fn a_panicking_shadow_prediction_is_caught_and_counted_and_sends_nothing() {
        let shadow = shadow();
        let (job, mut rx) = job(Array2::ones((5, 4)));
        shadow.score_with(2, job, |_| {
            panic!("a shadow model that breaks at predict time")
        });
        assert!(
            matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "no scores for a failed job: its records are logged without them"
        );
        let tally = &shadow.take()[&(1, 2)];
        assert_eq!((tally.records, tally.failures), (0, 5));
    }

    #[test]
    fn a_tally_counts_agreement_score_differences_and_unscorable_rows() {
        let mut t = Tally::default();
        t.compare(&[1.0, -1.0, 0.5, 2.0], &[0.5, 1.0, f64::NAN, 2.0]);
        assert_eq!((t.records, t.agreed, t.failures), (3, 2, 1));
        assert!((t.score_diff_sum - 2.5).abs() < 1e-12);
        assert_eq!(t.score_diff_max, 2.0);
        assert!((t.agreement().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(Tally::default().agreement(), None);
    }
}
