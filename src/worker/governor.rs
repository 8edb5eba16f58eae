//! The governor: the loops report what they see (receives and their round trips, batch slots,
//! enrichment times, the output backlog), [`super::pacing`] and [`super::batching`] decide the
//! pace, and the governor hands it to the
//! pollers through [`WorkerState::pace`], logs each change once and shows it as metrics.
//!
//! A poller waits for its turn ([`turn`]) before each receive: a parked poller makes no call
//! and wakes the moment the pace lets it receive again. The governor's watch task
//! ([`Governor::watch`]) re-evaluates the time-based rules every quarter second and measures the
//! output backlog, but only while messages arrive or the backlog holds polling back: an idle
//! worker makes no call for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batching::Batching;
use super::pacing::{Changes, Pace, Pacing, PacingConfig, Pressure};
use super::state::WorkerState;
use crate::queue::Queue;

/// How often the time-based rules are looked at.
const TICK: Duration = Duration::from_millis(250);
/// The longest wait for the output queue's depth; past it the measure counts as failed.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);

/// The pace shared by the loops of one run.
#[derive(Debug)]
pub struct Governor {
    pacing: Mutex<Pacing>,
    state: Arc<WorkerState>,
    /// Whether messages arrived since the output backlog was last measured.
    received_since_measure: AtomicBool,
}

impl Governor {
    /// A governor for `pollers` pollers and `slots` batch slots, gathering bundles by
    /// `batching`; every poller may receive.
    pub fn new(
        config: PacingConfig,
        pollers: usize,
        slots: usize,
        batching: Batching,
        state: Arc<WorkerState>,
    ) -> Arc<Self> {
        let pacing = Pacing::new(config, pollers, slots).with_batching(batching);
        let pace = pacing.pace();
        state.pace.send_replace(pace);
        crate::instruments::pace(gauge_name(pace), polling(pace));
        for pressure in Pressure::ALL {
            crate::instruments::pressure(pressure.name(), false);
        }
        Arc::new(Self {
            pacing: Mutex::new(pacing),
            state,
            received_since_measure: AtomicBool::new(true),
        })
    }

    /// A receive that took `rtt` returned `messages` messages.
    pub fn received(&self, messages: usize, rtt: Duration) {
        if messages > 0 {
            self.received_since_measure.store(true, Ordering::Relaxed);
        }
        self.update(|p, now| {
            p.received(messages);
            p.batching_mut().received(now, messages, rtt);
        });
    }

    /// A batch finished whose enrichment stage took `enrich`.
    pub fn enriched(&self, enrich: Duration) {
        self.update(|p, now| p.enriched(now, enrich));
    }

    /// Takes a batch slot until the returned guard is dropped (its batch finished).
    pub fn slot(self: &Arc<Self>) -> SlotHeld {
        let since = Instant::now();
        self.update(|p, now| p.slot_taken(now));
        SlotHeld {
            governor: Arc::clone(self),
            since,
        }
    }

    /// Re-evaluates the rules, measuring the output backlog every check interval while messages
    /// arrive or the backlog holds polling back; ends at `shutdown`.
    pub async fn watch<Q: Queue>(self: Arc<Self>, output: Q, shutdown: CancellationToken) {
        let check = self.config().output_backlog_check.max(TICK);
        let measures = self.config().output_backlog_max.is_some();
        let mut next_measure = Instant::now();
        loop {
            if measures && Instant::now() >= next_measure && self.wants_measure() {
                let visible = tokio::select! {
                    () = shutdown.cancelled() => return,
                    visible = measure(&output) => visible,
                };
                self.update(|p, _| p.output_backlog(visible));
                next_measure = Instant::now() + check;
            }
            self.update(|_, _| {});
            if self.paused_by_choice() {
                // A pause for the output's consumers is the worker deciding, not a stall.
                self.state.beat();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn config(&self) -> PacingConfig {
        self.lock().config().clone()
    }

    /// Whether the backlog is worth a call: messages arrived since the last measure, or the
    /// backlog holds polling back and its end must be seen.
    fn wants_measure(&self) -> bool {
        let arrived = self.received_since_measure.swap(false, Ordering::Relaxed);
        arrived || self.lock().holding().contains(&Pressure::OutputBacklog)
    }

    /// Whether polling is paused by the output backlog (and not by full slots, which `/health`
    /// must still see when no batch ever finishes; a pause for enrichment ends on its own).
    fn paused_by_choice(&self) -> bool {
        let pacing = self.lock();
        pacing.pace() == Pace::Paused
            && pacing.holding().contains(&Pressure::OutputBacklog)
            && !pacing.holding().contains(&Pressure::SlotsFull)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacing> {
        self.pacing
            .lock()
            .expect("no code panics while holding the pacing")
    }

    /// Applies what a loop saw, re-evaluates, and announces what changed.
    fn update(&self, saw: impl FnOnce(&mut Pacing, Instant)) {
        let now = Instant::now();
        let mut pacing = self.lock();
        let before = pacing.pace();
        saw(&mut pacing, now);
        let changes = pacing.evaluate(now);
        if changes != Changes::default() {
            announce(&pacing, &changes, before, now);
        }
        if let Some(pace) = changes.pace {
            self.state.pace.send_replace(pace);
        }
    }
}

/// A batch slot taken; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotHeld {
    governor: Arc<Governor>,
    /// When the slot was taken: how long it was held is the batch's service time.
    since: Instant,
}

impl Drop for SlotHeld {
    fn drop(&mut self) {
        let since = self.since;
        self.governor.update(|p, now| {
            p.slot_freed();
            p.batching_mut()
                .served(now.saturating_duration_since(since));
        });
    }
}

/// Waits until poller `n` may receive; false when shutdown came first. A wait counts from the
/// call: a new pace with another wait (a gathering hold measured again) does not start it over.
pub async fn turn(
    pace: &mut watch::Receiver<Pace>,
    n: usize,
    shutdown: &CancellationToken,
) -> bool {
    let since = Instant::now();
    loop {
        let now = *pace.borrow_and_update();
        match now.turn(n) {
            Some(wait) if wait.is_zero() => return true,
            Some(wait) => tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep_until(since + wait) => return true,
                // A new pace may let it go at once, or not at all.
                changed = pace.changed() => if changed.is_err() { return false },
            },
            None => tokio::select! {
                () = shutdown.cancelled() => return false,
                changed = pace.changed() => if changed.is_err() { return false },
            },
        }
    }
}

/// The output queue's visible messages; `None` when it could not be measured.
async fn measure<Q: Queue>(output: &Q) -> Option<u64> {
    match tokio::time::timeout(MEASURE_TIMEOUT, output.depth()).await {
        Ok(Ok(visible)) => {
            if let Some(visible) = visible {
                crate::instruments::output_backlog(visible);
            }
            visible
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::text::error_chain(&e), "could not measure the output queue's backlog; it does not hold polling back until measured again");
            None
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = MEASURE_TIMEOUT.as_secs(),
                "the output queue's backlog was not measured in time; it does not hold polling back until measured again"
            );
            None
        }
    }
}

/// How many pollers receive at `pace`.
fn polling(pace: Pace) -> usize {
    match pace {
        Pace::Polling { pollers } => pollers,
        Pace::Slowed { .. } | Pace::Gathering { .. } => 1,
        Pace::Paused => 0,
    }
}

/// The pace's label in the `polling_pace` gauge: gathering is polling, with one poller.
fn gauge_name(pace: Pace) -> &'static str {
    match pace {
        Pace::Gathering { .. } => Pace::Polling { pollers: 1 }.name(),
        other => other.name(),
    }
}

/// Logs and records what changed: each condition that began or ended, and the new pace (logged
/// when its kind changed, not when a gathering hold is measured again).
fn announce(pacing: &Pacing, changes: &Changes, before: Pace, now: Instant) {
    let c = pacing.config();
    for &pressure in &changes.began {
        crate::instruments::pressure(pressure.name(), true);
        match pressure {
            Pressure::OutputBacklog => tracing::warn!(
                condition = pressure.name(),
                visible = pacing.backlog(),
                limit = c.output_backlog_max,
                "back-pressure: the output queue's consumers are behind; polling slows"
            ),
            Pressure::EnrichLatency => tracing::warn!(
                condition = pressure.name(),
                enrich_ms = pacing.enrich_mean_ms(now),
                budget_ms = c.enrich_budget.map(|b| b.as_millis() as u64),
                "back-pressure: enrichment is over its time budget; polling slows"
            ),
            Pressure::SlotsFull => tracing::warn!(
                condition = pressure.name(),
                full_s = pacing.slots_full_for(now).map(|d| d.as_secs_f64()),
                limit_s = c.slots_full_max.map(|d| d.as_secs_f64()),
                "back-pressure: every batch slot has been busy past its limit; polling slows"
            ),
        }
    }
    for &pressure in &changes.ended {
        crate::instruments::pressure(pressure.name(), false);
        tracing::info!(condition = pressure.name(), "back-pressure ended");
    }
    if let Some(pace) = changes.pace {
        crate::instruments::pace(gauge_name(pace), polling(pace));
        if pace.name() == before.name() && !matches!(pace, Pace::Polling { .. }) {
            return;
        }
        if matches!(before, Pace::Gathering { .. }) || matches!(pace, Pace::Gathering { .. }) {
            // Gathering starts and ends with the load, often: not news for an operator.
            let batching = pacing.batching();
            tracing::debug!(
                pace = pace.name(),
                pollers = polling(pace),
                hold_ms = pace.turn(0).map(|d| d.as_millis() as u64),
                arrival_gap_ms = batching.arrival_gap().map(|d| d.as_secs_f64() * 1e3),
                receive_rtt_ms = batching.receive_rtt().map(|d| d.as_secs_f64() * 1e3),
                service_ms = batching.service_time().map(|d| d.as_secs_f64() * 1e3),
                load = batching.load(),
                "adaptive batching: {}",
                if matches!(pace, Pace::Gathering { .. }) {
                    "bundles arrive faster than the worker would serve them one batch each; one poller waits before each receive"
                } else {
                    "every poller receives at once"
                }
            );
            return;
        }
        let holding: Vec<&str> = pacing.holding().iter().map(|p| p.name()).collect();
        match pace {
            Pace::Polling { pollers } => tracing::info!(
                pace = pace.name(),
                pollers,
                "polling with {pollers} poller(s)"
            ),
            Pace::Slowed { delay } => tracing::warn!(
                pace = pace.name(),
                delay_ms = delay.as_millis() as u64,
                conditions = ?holding,
                "polling slowed: one poller, waiting before each receive"
            ),
            Pace::Gathering { .. } => {}
            Pace::Paused => tracing::warn!(
                pace = pace.name(),
                conditions = ?holding,
                after_s = c.pause_after.as_secs_f64(),
                "polling paused until the back-pressure ends"
            ),
        }
    }
}
