//! The model holder: serves one loaded model and swaps in a newly promoted version without a
//! restart.
//!
//! It polls the alias with a conditional GET (an unchanged alias answers 304, no body), loads
//! and validates a new version off the hot path, smoke-tests it on the spec's example row, and
//! swaps it in atomically. A batch holds an `Arc` of the model it started with, so it finishes on
//! that model. A version that fails to load is logged and counted, and the old one keeps serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::artifact::ModelArtifact;
use super::classifier::Classifier;
use super::registry::{AliasPoll, Registry, RegistryError};

/// A model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    /// The registry version.
    pub version: u64,
    /// The whole artifact (spec, metrics...).
    pub artifact: ModelArtifact,
    /// The scaler and SVM.
    pub classifier: Classifier,
}

impl LoadedModel {
    /// Wraps a validated artifact.
    pub fn new(version: u64, artifact: ModelArtifact) -> Self {
        let classifier = artifact.classifier();
        Self {
            version,
            artifact,
            classifier,
        }
    }
}

/// Which version to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Exactly this version; no polling.
    Pinned(u64),
    /// Whatever this alias points at, polled.
    Alias(String),
}

/// Serves the current model and reloads it when its alias moves.
#[derive(Debug)]
pub struct ModelHolder {
    registry: Registry,
    name: String,
    source: ModelSource,
    current: ArcSwap<LoadedModel>,
    etag: Mutex<Option<String>>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// What one poll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// The alias did not change (or the version is pinned).
    Unchanged,
    /// A new version is now served.
    Swapped {
        /// The version served before.
        from: u64,
        /// The version served now.
        to: u64,
    },
}

impl ModelHolder {
    /// Loads the initial model; fails when it cannot be loaded and validated.
    pub async fn load(
        registry: Registry,
        name: &str,
        source: ModelSource,
    ) -> Result<Self, RegistryError> {
        let (version, etag) = match &source {
            ModelSource::Pinned(v) => (*v, None),
            ModelSource::Alias(alias) => {
                let state = registry.alias(name, alias).await?.ok_or_else(|| {
                    RegistryError::Invalid(format!(
                        "model {name} has no alias '{alias}': promote a version first (ml-pipeline models promote {name} <version> --alias {alias})"
                    ))
                })?;
                (state.record.version, Some(state.etag))
            }
        };
        let started = std::time::Instant::now();
        let artifact = registry.load(name, version).await?;
        tracing::info!(
            model = name,
            model_version = version,
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "model loaded"
        );
        crate::instruments::model_serving(name, version, None);
        Ok(Self {
            registry,
            name: name.to_owned(),
            source,
            current: ArcSwap::from_pointee(LoadedModel::new(version, artifact)),
            etag: Mutex::new(etag),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The model to use for one batch; the batch keeps it even if a swap happens meanwhile.
    pub fn current(&self) -> Arc<LoadedModel> {
        self.current.load_full()
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Failed reloads so far (the old model kept serving).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Checks the alias once and swaps in a new version when it moved. Any failure (S3
    /// unreachable, a version that does not load) is counted; the current model keeps serving.
    pub async fn poll_once(&self) -> Result<PollOutcome, RegistryError> {
        let outcome = self.try_poll().await;
        if outcome.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            crate::instruments::model_reload_failed();
        }
        outcome
    }

    async fn try_poll(&self) -> Result<PollOutcome, RegistryError> {
        let ModelSource::Alias(alias) = &self.source else {
            return Ok(PollOutcome::Unchanged);
        };
        let mut etag = self.etag.lock().await;
        let state = match self
            .registry
            .alias_if_changed(&self.name, alias, etag.as_deref())
            .await?
        {
            AliasPoll::Unchanged => return Ok(PollOutcome::Unchanged),
            AliasPoll::Changed(state) => state,
        };
        let from = self.current.load().version;
        let to = state.record.version;
        if to == from {
            *etag = Some(state.etag);
            return Ok(PollOutcome::Unchanged);
        }
        // Loading and validating happen here, off the hot path; only the swap touches `current`.
        // On failure the ETag is not remembered, so the next poll tries again.
        let started = std::time::Instant::now();
        let artifact = self.registry.load(&self.name, to).await?;
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        self.current.store(Arc::new(LoadedModel::new(to, artifact)));
        *etag = Some(state.etag);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = %self.name, from, to, load_ms, "model version swapped in");
        crate::instruments::model_serving(&self.name, to, Some(from));
        Ok(PollOutcome::Swapped { from, to })
    }

    /// Polls every `interval` until cancelled; errors are logged and counted, never fatal.
    pub async fn run(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        if matches!(self.source, ModelSource::Pinned(_)) {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            // A poll in flight is abandoned at shutdown: the swap happens only at its end.
            let polled = tokio::select! {
                () = cancel.cancelled() => return,
                polled = self.poll_once() => polled,
            };
            if let Err(e) = polled {
                tracing::error!(model = %self.name, serving = self.current.load().version, error = %crate::text::error_chain(&e), "model reload failed; the current version keeps serving");
            }
        }
    }
}
