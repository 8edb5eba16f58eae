//! The model holder: serves one loaded model and swaps in a newly promoted version without a
//! restart.
//!
//! It polls the alias with a conditional GET (an unchanged alias answers 304, no body), loads
//! and validates a new version off the hot path (every check of `ModelArtifact::validate`), and
//! swaps it in atomically. A batch holds an `Arc` of the model it started with, so it finishes on
//! that model.
//!
//! When the reload fails the old version keeps serving, and the failure is counted
//! (`ml_pipeline_model_reload_failures_total`) and logged where it happens, in `poll_once`:
//! - a version that is refused (it does not validate, is another model, or does not exist) is
//!   logged once at ERROR, naming the alias, the version and what is wrong. The alias write that
//!   named it is remembered, so later polls cost a 304 and neither retry, log nor count it again;
//!   a new promote (even of the same version) is tried afresh.
//! - a registry that cannot be read is logged at WARN on each poll, and the next poll retries.

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

impl ModelSource {
    /// The alias, or `pinned`: the `alias` label of `ml_pipeline_model_info`.
    pub fn label(&self) -> &str {
        match self {
            ModelSource::Pinned(_) => "pinned",
            ModelSource::Alias(alias) => alias,
        }
    }
}

/// Serves the current model and reloads it when its alias moves.
#[derive(Debug)]
pub struct ModelHolder {
    registry: Registry,
    name: String,
    source: ModelSource,
    current: ArcSwap<LoadedModel>,
    /// Held for a whole poll, so polls never overlap.
    poll: Mutex<PollState>,
    reloads: AtomicU64,
    failures: AtomicU64,
}

/// What polls remember of the alias.
#[derive(Debug, Default)]
struct PollState {
    /// The ETag of the alias write last acted on (swapped in, or refused): while the alias still
    /// has it, a poll costs a 304 and does nothing.
    etag: Option<String>,
    /// The version that write names, when it was refused.
    refused: Option<u64>,
}

/// Why a poll did not swap.
enum PollFailure {
    /// The version the alias names cannot be served; not tried again until the alias is rewritten.
    Refused {
        /// The version.
        version: u64,
        /// Why.
        error: RegistryError,
    },
    /// The registry could not be read; the next poll tries again.
    Unavailable(RegistryError),
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
            alias = source.label(),
            model_version = version,
            load_ms = started.elapsed().as_secs_f64() * 1e3,
            "model loaded"
        );
        warn_without_reference(name, version, &artifact);
        crate::instruments::model_serving(name, source.label(), version, None);
        Ok(Self {
            registry,
            name: name.to_owned(),
            source,
            current: ArcSwap::from_pointee(LoadedModel::new(version, artifact)),
            poll: Mutex::new(PollState {
                etag,
                refused: None,
            }),
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

    /// Failed reloads so far (the old model kept serving): each refused alias write once, each
    /// poll that could not read the registry once.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The version the alias names that was refused, while the alias still names it.
    pub async fn refused(&self) -> Option<u64> {
        self.poll.lock().await.refused
    }

    /// Checks the alias once and swaps in a new version when it moved. A failure is counted and
    /// logged here (see the module doc); the current model keeps serving.
    pub async fn poll_once(&self) -> Result<PollOutcome, RegistryError> {
        let ModelSource::Alias(alias) = &self.source else {
            return Ok(PollOutcome::Unchanged);
        };
        let mut state = self.poll.lock().await;
        let failure = match self.try_poll(alias, &mut state).await {
            Ok(outcome) => return Ok(outcome),
            Err(failure) => failure,
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        let serving = self.current.load().version;
        match failure {
            PollFailure::Refused { version, error } => {
                crate::instruments::model_reload_failed("refused");
                tracing::error!(model = %self.name, alias = %alias, model_version = version, serving, error = %crate::text::error_chain(&error), "model version refused: the current version keeps serving; point the alias at a version that loads");
                Err(error)
            }
            PollFailure::Unavailable(error) => {
                crate::instruments::model_reload_failed("unavailable");
                tracing::warn!(model = %self.name, alias = %alias, serving, error = %crate::text::error_chain(&error), "model registry unreadable: the current version keeps serving, the next poll tries again");
                Err(error)
            }
        }
    }

    async fn try_poll(
        &self,
        alias: &str,
        state: &mut PollState,
    ) -> Result<PollOutcome, PollFailure> {
        let read = self
            .registry
            .alias_if_changed(&self.name, alias, state.etag.as_deref())
            .await
            .map_err(PollFailure::Unavailable)?;
        let alias_state = match read {
            AliasPoll::Unchanged => return Ok(PollOutcome::Unchanged),
            AliasPoll::Changed(alias_state) => alias_state,
        };
        let from = self.current.load().version;
        let to = alias_state.record.version;
        if to == from {
            *state = PollState {
                etag: Some(alias_state.etag),
                refused: None,
            };
            return Ok(PollOutcome::Unchanged);
        }
        // Loading and validating happen here, off the hot path; only the swap touches `current`.
        let started = std::time::Instant::now();
        let artifact = match self.registry.load(&self.name, to).await {
            Ok(artifact) => artifact,
            Err(error) if error.is_version_fault() => {
                *state = PollState {
                    etag: Some(alias_state.etag),
                    refused: Some(to),
                };
                return Err(PollFailure::Refused { version: to, error });
            }
            // The ETag is not remembered, so the next poll tries again.
            Err(error) => return Err(PollFailure::Unavailable(error)),
        };
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        warn_without_reference(&self.name, to, &artifact);
        self.current.store(Arc::new(LoadedModel::new(to, artifact)));
        *state = PollState {
            etag: Some(alias_state.etag),
            refused: None,
        };
        self.reloads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(model = %self.name, alias = %alias, from, to, load_ms, "model version swapped in");
        crate::instruments::model_serving(&self.name, self.source.label(), to, Some(from));
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
            // Failures were counted and logged by `poll_once`.
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = self.poll_once() => {}
            }
        }
    }
}

/// A version written before reference sets existed passed every check but the one on what it
/// computes: serving it is allowed (backward compatibility), with a warning once per load.
fn warn_without_reference(name: &str, version: u64, artifact: &ModelArtifact) {
    if artifact.reference.is_none() {
        tracing::warn!(
            model = name,
            model_version = version,
            "model version has no reference set (written before they existed): its shapes were checked, its predictions could not be; retrain to get one"
        );
    }
}
