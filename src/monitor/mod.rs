//! Watching the served model in production, without touching its answers:
//! - [`drift`]: the canonical features served over a rolling window, against the statistics
//!   stored with the model at training (population stability index and out-of-range share per
//!   feature);
//! - [`shadow`]: a second model version, named by its own alias, scoring a share of each batch
//!   beside the served one.
//!
//! The step hands each batch to [`Monitor::observe`] (a bin count per value) and its shadowed
//! rows to [`shadow::Shadow::submit`]. Once per interval, [`Monitor::report`] turns what
//! accrued into Prometheus gauges, CloudWatch EMF lines ([`emf`]) and one row per feature and
//! per shadow pair in PostgreSQL ([`store`]), which `models compare` and `retrain` read.

pub mod drift;
pub mod emf;
pub mod shadow;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::ArrayView2;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use self::drift::{Counts, Drift, DriftWindow};
use self::shadow::{Shadow, Tally};
use crate::model::holder::{LoadedModel, ModelHolder};

/// How the monitor reports.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// How often figures are reported (`ML_PIPELINE_MONITOR_INTERVAL_SECS`).
    pub interval: Duration,
    /// The drift window's span (`ML_PIPELINE_DRIFT_WINDOW_SECS`).
    pub drift_window: Duration,
    /// Fewer records than this in the window report no drift: a PSI of a handful of values
    /// says nothing (`ML_PIPELINE_DRIFT_MIN_RECORDS`).
    pub drift_min_records: u64,
    /// The PSI over which a feature is logged as drifted (`ML_PIPELINE_DRIFT_PSI_THRESHOLD`).
    pub psi_threshold: f64,
    /// The CloudWatch namespace of EMF lines on stdout; None writes none
    /// (`ML_PIPELINE_EMF_NAMESPACE`).
    pub emf_namespace: Option<String>,
    /// This worker's name in the observation rows.
    pub worker: String,
}

/// One interval's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interval {
    /// The drift window, when it held enough records of the served version.
    pub drift: Option<Drift>,
    /// Shadow scoring since the last interval, per (served version, shadow version).
    pub shadow: BTreeMap<(u64, u64), Tally>,
}

/// The worker's monitor.
#[derive(Debug)]
pub struct Monitor {
    config: MonitorConfig,
    model: String,
    window: Mutex<DriftWindow>,
    shadow: Option<Arc<Shadow>>,
    pool: Option<PgPool>,
    /// Features over the threshold at the last report, to log crossings once.
    over: Mutex<BTreeSet<String>>,
}

impl Monitor {
    /// A monitor of model `model`; `shadow` scores beside it, `pool` keeps the figures.
    pub fn new(
        config: MonitorConfig,
        model: &str,
        shadow: Option<Arc<Shadow>>,
        pool: Option<PgPool>,
    ) -> Self {
        Self {
            window: Mutex::new(DriftWindow::new(config.drift_window)),
            config,
            model: model.to_owned(),
            shadow,
            pool,
            over: Mutex::default(),
        }
    }

    /// The shadow model, when one is configured.
    pub fn shadow(&self) -> Option<&Arc<Shadow>> {
        self.shadow.as_ref()
    }

    /// Counts one batch's canonical rows, served by `model`, into the drift window (nothing
    /// for a version without training statistics).
    pub fn observe(&self, model: &LoadedModel, x: ArrayView2<f64>) {
        let Some(stats) = &model.artifact.training_stats else {
            return;
        };
        let counts = Counts::of(stats, x);
        self.window
            .lock()
            .expect("drift window")
            .add(model.version, counts, Instant::now());
    }

    /// Reports one interval for `served`, the version now served: gauges, log lines on
    /// threshold crossings, EMF lines, and rows in PostgreSQL (a failed write is logged and
    /// the figures are still returned).
    pub async fn report(&self, served: &LoadedModel) -> Interval {
        let at = chrono::Utc::now();
        let drift = served.artifact.training_stats.as_ref().and_then(|stats| {
            self.window
                .lock()
                .expect("drift window")
                .drift(served.version, stats, Instant::now())
        });
        crate::instruments::drift_window(drift.as_ref().map_or(0, |d| d.rows));
        let drift = drift.filter(|d| d.rows >= self.config.drift_min_records.max(1));
        let shadow = self.shadow.as_ref().map(|s| s.take()).unwrap_or_default();
        let mut lines = Vec::new();
        if let Some(d) = &drift {
            self.log_crossings(d);
            for f in &d.features {
                crate::instruments::feature_drift(&f.feature, f.psi, f.out_of_range);
            }
            if let Some(ns) = &self.config.emf_namespace {
                lines.extend(emf::drift_lines(ns, at, &self.model, d));
            }
        }
        let alias = self.shadow.as_ref().map_or("", |s| s.alias());
        for (versions, tally) in &shadow {
            if let (Some(a), Some(d)) = (tally.agreement(), tally.mean_score_diff()) {
                crate::instruments::shadow_interval(a, d, tally.latency_ratio());
            }
            if let Some(ns) = &self.config.emf_namespace {
                lines.push(emf::shadow_line(
                    ns,
                    at,
                    &self.model,
                    alias,
                    *versions,
                    tally,
                ));
            }
        }
        if !lines.is_empty() {
            // One write of whole lines, so no other output lands inside one.
            let mut out = lines.join("\n");
            out.push('\n');
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
        }
        if let Some(pool) = &self.pool {
            self.store(pool, at, drift.as_ref(), alias, &shadow).await;
        }
        Interval { drift, shadow }
    }

    async fn store(
        &self,
        pool: &PgPool,
        at: chrono::DateTime<chrono::Utc>,
        drift: Option<&Drift>,
        alias: &str,
        shadow: &BTreeMap<(u64, u64), Tally>,
    ) {
        let worker = &self.config.worker;
        if let Some(d) = drift {
            if let Err(e) = store::record_drift(pool, at, &self.model, d, worker).await {
                tracing::warn!(error = %crate::text::error_chain(&e), "drift figures not recorded in PostgreSQL for this interval");
            }
        }
        for (versions, tally) in shadow {
            let stored =
                store::record_shadow(pool, at, (&self.model, alias), *versions, tally, worker);
            if let Err(e) = stored.await {
                tracing::warn!(error = %crate::text::error_chain(&e), "shadow figures not recorded in PostgreSQL for this interval");
            }
        }
    }

    /// Logs each feature that crossed the threshold since the last report, once per crossing.
    fn log_crossings(&self, drift: &Drift) {
        let threshold = self.config.psi_threshold;
        let mut over = self.over.lock().expect("drift crossings");
        for f in &drift.features {
            let was = over.contains(&f.feature);
            if f.psi > threshold && !was {
                tracing::warn!(model = %self.model, model_version = drift.version, feature = %f.feature, psi = f.psi, threshold, out_of_range = f.out_of_range, window_records = drift.rows, "feature drifted: its PSI against the training data is over the threshold");
                over.insert(f.feature.clone());
            } else if f.psi <= threshold && was {
                tracing::info!(model = %self.model, model_version = drift.version, feature = %f.feature, psi = f.psi, threshold, "feature back under the drift threshold");
                over.remove(&f.feature);
            }
        }
    }

    /// Reports every interval until `cancel`, then once more, for the version `models` serves.
    pub async fn run(self: Arc<Self>, models: Arc<ModelHolder>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            self.report(&models.current()).await;
        }
        self.report(&models.current()).await;
    }
}
