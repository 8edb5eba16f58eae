//! The loop around the one step: pollers long-poll the input queue, a batcher gathers the
//! bundles in hand into one batch, and [`Worker::process`] answers it. The loop owns
//! concurrency, back-off and shutdown.
//!
//! Memory is bounded: the pollers hand messages over a bounded channel, and at most
//! `max_concurrent_batches` batches are processed at once. Messages stay invisible to other
//! workers from receipt until their step returns: a heartbeat starts at the poller.
//!
//! Each poller waits for its turn before a receive: the [`Governor`] parks pollers while the
//! queue is idle, slows or pauses polling while the downstream cannot keep up, and while
//! bundles arrive fast lets one poller receive, after a wait that lets one receive gather
//! several ([`super::batching`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batching::Batching;
use super::gather::{BatchBounds, Gathered, InHand};
use super::governor::{turn, Governor};
use super::heartbeat::Heartbeat;
use super::service::Worker;
use super::step::StepReport;
use crate::enrich::{DocumentSource, ReferenceSource};
use crate::queue::{Queue, ReceiveAttempt};

/// What a whole run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Batches processed.
    pub batches: usize,
    /// Messages handled.
    pub messages: usize,
    /// Answers accepted.
    pub answered: usize,
    /// Messages dead-lettered.
    pub dead_lettered: usize,
    /// Messages left for redelivery.
    pub left: usize,
    /// Whether shutdown finished within the drain timeout.
    pub drained: bool,
}

impl<R, D, Q> Worker<R, D, Q>
where
    R: ReferenceSource + 'static,
    D: DocumentSource + 'static,
    Q: Queue + Clone + 'static,
{
    /// Runs until `shutdown` is cancelled, then drains what it holds within the drain timeout.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> RunSummary {
        let (tx, rx) = mpsc::channel::<InHand>(self.config.pollers.max(1) * 2);
        let governor = Governor::new(
            self.config.pacing.clone(),
            self.config.pollers.max(1),
            self.config.max_concurrent_batches.max(1),
            Batching::new(
                self.config.batch_latency_budget,
                self.config.receive_max.max(1) as usize,
            ),
            Arc::clone(&self.state),
        );
        let watch =
            tokio::spawn(Arc::clone(&governor).watch(self.output.clone(), shutdown.clone()));
        let stop_deletes = CancellationToken::new();
        let deletes = tokio::spawn(Arc::clone(&self.state.deletes).flush_until(
            self.input.clone(),
            self.config.retry(),
            self.config.delete_delay,
            stop_deletes.clone(),
        ));
        let mut pollers = JoinSet::new();
        for n in 0..self.config.pollers.max(1) {
            let governor = Arc::clone(&governor);
            pollers.spawn(Arc::clone(&self).poll(n, tx.clone(), governor, shutdown.clone()));
        }
        drop(tx);
        let batcher = tokio::spawn(Arc::clone(&self).batch_loop(rx, governor));
        shutdown.cancelled().await;
        watch.abort();
        self.state.stopping.cancel();
        tracing::info!(
            drain_timeout_s = self.config.drain_timeout.as_secs_f64(),
            "shutting down: receiving stopped, draining batches in hand"
        );
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        // A poller may be waiting to hand over messages to a batcher stuck on a slow source:
        // the deadline bounds that wait too. Messages it still held stay on the queue.
        let handed_over = tokio::time::timeout_at(deadline, async {
            while pollers.join_next().await.is_some() {}
        })
        .await;
        if handed_over.is_err() {
            pollers.abort_all();
            tracing::warn!(
                "drain timeout reached while pollers were handing over messages; those stay on the queue for redelivery"
            );
        }
        let abort = batcher.abort_handle();
        let finished = tokio::time::timeout_at(deadline, batcher).await;
        // Answered inputs whose deletes wait are deleted before the run returns, even after
        // the drain timeout: their answers are out.
        stop_deletes.cancel();
        if let Err(e) = deletes.await {
            tracing::error!(error = %e, "deferred deletes failed; those inputs will be answered again");
        }
        match finished {
            Ok(Ok(mut summary)) => {
                summary.drained = true;
                tracing::info!(?summary, "worker stopped");
                summary
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "batch loop failed");
                RunSummary::default()
            }
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    "drain timeout reached: unfinished batches stay on the queue for redelivery"
                );
                RunSummary {
                    drained: false,
                    ..RunSummary::default()
                }
            }
        }
    }

    async fn poll(
        self: Arc<Self>,
        n: usize,
        tx: mpsc::Sender<InHand>,
        governor: Arc<Governor>,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0;
        // Each poller has its own attempt: a retried receive asks for what its lost one took.
        let mut attempt = ReceiveAttempt::new();
        let mut pace = self.state.pace.subscribe();
        loop {
            if !turn(&mut pace, n, &shutdown).await {
                return;
            }
            // On tokio's clock, which tests pause: the round trip feeds the batching rule.
            let started = tokio::time::Instant::now();
            let (max, wait) = (self.config.receive_max, self.config.wait_secs);
            let received = tokio::select! {
                // Cancelling drops the in-flight long poll instead of waiting it out.
                () = shutdown.cancelled() => return,
                r = self.input.receive_attempt(max, wait, attempt.id()) => r,
            };
            attempt.after(&received);
            self.state.beat();
            match received {
                Ok(messages) if messages.is_empty() => {
                    failures = 0;
                    crate::instruments::received(0, started.elapsed());
                    governor.received(0, started.elapsed());
                }
                Ok(messages) => {
                    failures = 0;
                    crate::instruments::received(messages.len(), started.elapsed());
                    // Parked pollers wake now, not after the hand-over.
                    governor.received(messages.len(), started.elapsed());
                    let in_flight = self.state.hold(messages.len());
                    // Visibility is kept from receipt on: messages may wait behind a slow batch.
                    let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
                    let heartbeat = Heartbeat::start(
                        self.input.clone(),
                        receipts,
                        self.config.visibility_timeout_secs,
                        self.config.heartbeat_fraction,
                    );
                    // Offloaded bodies are read here, so the batcher's bounds count their
                    // records; each within the body limit.
                    let offloaded = crate::payload::fetch_all(
                        self.payloads.as_ref(),
                        &messages,
                        self.config.limits.max_body_bytes,
                    )
                    .await;
                    // Messages in hand are always handed over, even during shutdown.
                    if tx
                        .send(InHand {
                            messages,
                            offloaded,
                            heartbeat,
                            in_flight,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let delay = self.config.backoff(failures);
                    failures += 1;
                    crate::instruments::receive_failed();
                    tracing::warn!(poller = n, error = %crate::text::error_chain(&e), retry_in_ms = delay.as_millis() as u64, "receive failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Gathers received messages into batches and processes them, at most
    /// `max_concurrent_batches` at once; ends when the pollers are gone and all is processed.
    async fn batch_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<InHand>,
        governor: Arc<Governor>,
    ) -> RunSummary {
        let permits = Arc::new(Semaphore::new(self.config.max_concurrent_batches.max(1)));
        let mut running: JoinSet<StepReport> = JoinSet::new();
        let mut summary = RunSummary::default();
        let mut failures = 0u32;
        let bounds = BatchBounds {
            records: self.config.max_batch_records,
            cells: self.config.max_batch_cells,
        };
        let mut carried: Option<InHand> = None;
        loop {
            // Finished batches are accounted as soon as they finish, not when the next arrives.
            let first = if let Some(carried) = carried.take() {
                carried
            } else {
                tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    failures = self.account(&mut summary, done, failures, &governor);
                    continue;
                }
                received = rx.recv() => match received {
                    Some(first) => first,
                    None => break,
                },
                }
            };
            let limits = &self.config.limits;
            let mut gathered = Gathered::default();
            gathered.add(first, &bounds, limits);
            // What is already in hand, then (if configured) a short wait for more.
            let deadline = tokio::time::Instant::now() + self.config.max_batch_wait;
            gathered
                .take_in_hand(&mut rx, &bounds, limits, Some(deadline))
                .await;
            // While every batch slot is busy, keep gathering: batches grow with the load and
            // a lone bundle at low load starts at once.
            let permit = loop {
                if let Ok(permit) = Arc::clone(&permits).try_acquire_owned() {
                    break permit;
                }
                tokio::select! {
                    permit = Arc::clone(&permits).acquire_owned() => {
                        break permit.expect("the semaphore is never closed");
                    }
                    Some(more) = rx.recv(), if !gathered.is_full(&bounds) && gathered.carried.is_none() => {
                        gathered.add(more, &bounds, limits);
                    }
                }
            };
            // A slot is free: take what arrived meanwhile too.
            gathered.take_in_hand(&mut rx, &bounds, limits, None).await;
            carried = gathered.carried.take();
            crate::instruments::decoded(gathered.decoding);
            while let Some(done) = running.try_join_next() {
                failures = self.account(&mut summary, done, failures, &governor);
            }
            if failures > 0 {
                let delay = self.config.backoff(failures - 1);
                tracing::info!(
                    retry_in_ms = delay.as_millis() as u64,
                    "backing off after a dependency failure"
                );
                tokio::time::sleep(delay).await;
            }
            let worker = Arc::clone(&self);
            let slot = governor.slot();
            running.spawn(async move {
                let report = worker.process(gathered.batch).await;
                drop((permit, slot, gathered.held));
                report
            });
        }
        while let Some(done) = running.join_next().await {
            self.account(&mut summary, done, 0, &governor);
        }
        summary
    }

    fn account(
        &self,
        summary: &mut RunSummary,
        done: Result<StepReport, tokio::task::JoinError>,
        failures: u32,
        governor: &Governor,
    ) -> u32 {
        self.state.beat();
        let Ok(report) = done else {
            tracing::error!("a batch task panicked; its messages stay on the queue for redelivery");
            return failures + 1;
        };
        report.record_metrics();
        let enrich = report.timing_ms.get("enrich");
        if let Some(Ok(enrich)) = enrich.map(|ms| Duration::try_from_secs_f64(ms / 1e3)) {
            governor.enriched(enrich);
        }
        summary.batches += 1;
        summary.messages += report.messages;
        summary.answered += report.answered;
        summary.dead_lettered += report.dead_lettered;
        summary.left += report.left;
        tracing::info!(
            model_version = report.model_version,
            messages = report.messages,
            records = report.records,
            predicted = report.predicted,
            record_errors = report.record_errors,
            answered = report.answered,
            dead_lettered = report.dead_lettered,
            deleted = report.deleted,
            deletes_deferred = report.deferred,
            left = report.left,
            "batch done"
        );
        if report.retryable.is_some() {
            failures + 1
        } else {
            0
        }
    }
}
