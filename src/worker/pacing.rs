//! How fast the pollers receive, decided from what the worker sees: plain types and no I/O, so
//! the rules are tested on their own. [`super::governor`] feeds them and tells the pollers.
//!
//! Two rules:
//! - **Idle cost.** Every receive that comes back empty adds to an idle streak; after
//!   `idle_empty_receives` of them in a row one poller fewer long-polls, down to one, which
//!   keeps the first message's latency at one long poll. The first receive that returns
//!   messages ends the streak and every poller polls again at once.
//! - **Back-pressure.** Three conditions say the downstream cannot keep up: the output queue's
//!   visible messages over a limit (its consumers are behind), the enrichment stage over its
//!   time budget (the databases are suffering), every batch slot busy for longer than a limit.
//!   While any holds, polling slows to one poller waiting `slow_delay` before each receive;
//!   when one has held for `pause_after`, polling pauses. When none holds, polling is back to
//!   full speed at once. Each condition ends by itself: the backlog is measured again while it
//!   holds, a slot frees when a batch finishes, and an enrichment time older than
//!   `pause_after` is forgotten, so a pause that stopped new batches also ends.
//!
//! Without back-pressure, while bundles arrive faster than the latency budget
//! ([`super::batching`]), one poller receives, waiting before each receive so that it gathers
//! several bundles ([`Pace::Gathering`]).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::batching::Batching;

/// The rules' limits; `None` turns a condition off.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingConfig {
    /// Empty receives in a row after which one poller fewer long-polls; 0 keeps every poller
    /// polling.
    pub idle_empty_receives: u32,
    /// Visible messages on the output queue above which polling slows.
    pub output_backlog_max: Option<u64>,
    /// How often the output queue's visible messages are measured, while the worker receives
    /// messages or the backlog holds polling back (an idle worker makes no such call).
    pub output_backlog_check: Duration,
    /// The enrichment stage time (a moving mean over batches) above which polling slows.
    pub enrich_budget: Option<Duration>,
    /// How long every batch slot may stay busy, no batch finishing, before polling slows.
    pub slots_full_max: Option<Duration>,
    /// While slowed, the one poller waits this long before each receive.
    pub slow_delay: Duration,
    /// A condition that has held this long pauses polling; an enrichment time older than this
    /// is forgotten.
    pub pause_after: Duration,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            idle_empty_receives: 3,
            output_backlog_max: Some(50_000),
            output_backlog_check: Duration::from_secs(15),
            enrich_budget: Some(Duration::from_secs(2)),
            slots_full_max: Some(Duration::from_secs(20)),
            slow_delay: Duration::from_secs(1),
            pause_after: Duration::from_secs(10),
        }
    }
}

/// A reason to hold polling back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pressure {
    /// The output queue holds more visible messages than its limit.
    OutputBacklog,
    /// Enrichment takes longer than its budget.
    EnrichLatency,
    /// Every batch slot has been busy for longer than its limit.
    SlotsFull,
}

impl Pressure {
    /// Every condition, for metrics that show each one.
    pub const ALL: [Pressure; 3] = [
        Pressure::OutputBacklog,
        Pressure::EnrichLatency,
        Pressure::SlotsFull,
    ];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Pressure::OutputBacklog => "output_backlog",
            Pressure::EnrichLatency => "enrich_latency",
            Pressure::SlotsFull => "slots_full",
        }
    }
}

/// How the pollers receive now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Pollers `0..pollers` receive one long poll after another (fewer than configured while
    /// the queue is idle).
    Polling {
        /// How many pollers receive.
        pollers: usize,
    },
    /// Poller 0 alone receives, waiting `delay` before each receive.
    Slowed {
        /// The wait before each receive.
        delay: Duration,
    },
    /// Bundles arrive faster than the latency budget: poller 0 alone receives, waiting `delay`
    /// before each receive so that one receive gathers several ([`super::batching`]).
    Gathering {
        /// The wait before each receive.
        delay: Duration,
    },
    /// No poller receives.
    Paused,
}

impl Pace {
    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Pace::Polling { .. } => "polling",
            Pace::Slowed { .. } => "slowed",
            Pace::Gathering { .. } => "gathering",
            Pace::Paused => "paused",
        }
    }

    /// Whether poller `n` may receive now, and after what wait; `None`: it waits for the next
    /// pace.
    pub fn turn(self, n: usize) -> Option<Duration> {
        match self {
            Pace::Polling { pollers } if n < pollers => Some(Duration::ZERO),
            Pace::Slowed { delay } | Pace::Gathering { delay } if n == 0 => Some(delay),
            _ => None,
        }
    }
}

/// What changed at an evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Conditions that began to hold.
    pub began: Vec<Pressure>,
    /// Conditions that ended.
    pub ended: Vec<Pressure>,
    /// The new pace, when it changed.
    pub pace: Option<Pace>,
}

/// The rules' state: what the worker has seen, and the pace it calls for.
#[derive(Debug, Clone)]
pub struct Pacing {
    config: PacingConfig,
    pollers: usize,
    slots: usize,
    empty_streak: u32,
    backlog: Option<u64>,
    /// The moving mean of the enrichment stage time, in milliseconds, and when it last moved.
    enrich_ms: Option<(f64, Instant)>,
    busy_slots: usize,
    slots_full_since: Option<Instant>,
    /// Since when some condition has held without a break.
    pressed_since: Option<Instant>,
    holding: BTreeSet<Pressure>,
    /// The adaptive batching rule, which may gather when no condition holds.
    batching: Batching,
    pace: Pace,
}

/// How much the latest batch weighs in the moving mean of enrichment times.
const ENRICH_WEIGHT: f64 = 0.5;

impl Pacing {
    /// The rules for `pollers` pollers and `slots` batch slots; every poller polls at first.
    pub fn new(config: PacingConfig, pollers: usize, slots: usize) -> Self {
        let pollers = pollers.max(1);
        Self {
            config,
            pollers,
            slots: slots.max(1),
            empty_streak: 0,
            backlog: None,
            enrich_ms: None,
            busy_slots: 0,
            slots_full_since: None,
            pressed_since: None,
            holding: BTreeSet::new(),
            // No gathering unless given a budget.
            batching: Batching::new(Duration::ZERO, 1),
            pace: Pace::Polling { pollers },
        }
    }

    /// The same rules, gathering bundles by `batching` while no condition holds.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// The adaptive batching rule, to feed it receives.
    pub fn batching_mut(&mut self) -> &mut Batching {
        &mut self.batching
    }

    /// The adaptive batching rule's measures.
    pub fn batching(&self) -> &Batching {
        &self.batching
    }

    /// The rules' limits.
    pub fn config(&self) -> &PacingConfig {
        &self.config
    }

    /// The pace of the last evaluation.
    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// The conditions that held at the last evaluation.
    pub fn holding(&self) -> &BTreeSet<Pressure> {
        &self.holding
    }

    /// A receive returned `messages` messages.
    pub fn received(&mut self, messages: usize) {
        if messages == 0 {
            self.empty_streak = self.empty_streak.saturating_add(1);
        } else {
            self.empty_streak = 0;
        }
    }

    /// The output queue's visible messages, as just measured; `None` when the measure failed,
    /// which lifts the condition (a queue that cannot be measured does not hold polling back).
    pub fn output_backlog(&mut self, visible: Option<u64>) {
        self.backlog = visible;
    }

    /// The last measured output backlog.
    pub fn backlog(&self) -> Option<u64> {
        self.backlog
    }

    /// A batch finished whose enrichment stage took `enrich`.
    pub fn enriched(&mut self, now: Instant, enrich: Duration) {
        let ms = enrich.as_secs_f64() * 1e3;
        // A forgotten mean does not weigh on the new one.
        let mean = match self.enrich_mean_ms(now) {
            Some(mean) => ENRICH_WEIGHT * ms + (1.0 - ENRICH_WEIGHT) * mean,
            None => ms,
        };
        self.enrich_ms = Some((mean, now));
    }

    /// The moving mean of the enrichment stage time, in milliseconds, unless forgotten.
    pub fn enrich_mean_ms(&self, now: Instant) -> Option<f64> {
        let (ms, at) = self.enrich_ms?;
        (now.saturating_duration_since(at) < self.config.pause_after).then_some(ms)
    }

    /// A batch slot was taken.
    pub fn slot_taken(&mut self, now: Instant) {
        self.busy_slots += 1;
        if self.busy_slots >= self.slots && self.slots_full_since.is_none() {
            self.slots_full_since = Some(now);
        }
    }

    /// A batch slot was freed: its batch finished.
    pub fn slot_freed(&mut self) {
        self.busy_slots = self.busy_slots.saturating_sub(1);
        self.slots_full_since = None;
    }

    /// How long every slot has been busy.
    pub fn slots_full_for(&self, now: Instant) -> Option<Duration> {
        self.slots_full_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// How many pollers the idle streak leaves polling.
    fn idle_pollers(&self) -> usize {
        let per_step = self.config.idle_empty_receives;
        if per_step == 0 {
            return self.pollers;
        }
        let parked = (self.empty_streak / per_step) as usize;
        self.pollers.saturating_sub(parked).max(1)
    }

    /// The conditions that hold at `now`.
    fn conditions(&self, now: Instant) -> BTreeSet<Pressure> {
        let c = &self.config;
        let mut holding = BTreeSet::new();
        if let (Some(max), Some(visible)) = (c.output_backlog_max, self.backlog) {
            if visible > max {
                holding.insert(Pressure::OutputBacklog);
            }
        }
        if let (Some(budget), Some(mean)) = (c.enrich_budget, self.enrich_mean_ms(now)) {
            if mean > budget.as_secs_f64() * 1e3 {
                holding.insert(Pressure::EnrichLatency);
            }
        }
        if let (Some(max), Some(full)) = (c.slots_full_max, self.slots_full_for(now)) {
            if full > max {
                holding.insert(Pressure::SlotsFull);
            }
        }
        holding
    }

    /// Decides the pace at `now`, and says what changed since the last evaluation.
    pub fn evaluate(&mut self, now: Instant) -> Changes {
        let holding = self.conditions(now);
        let began = holding.difference(&self.holding).copied().collect();
        let ended = self.holding.difference(&holding).copied().collect();
        self.pressed_since = match (holding.is_empty(), self.pressed_since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(now),
        };
        let pace = match (self.pressed_since, self.batching.hold()) {
            (None, Some(delay)) => Pace::Gathering { delay },
            (None, None) => Pace::Polling {
                pollers: self.idle_pollers(),
            },
            (Some(since), _) if now.saturating_duration_since(since) < self.config.pause_after => {
                Pace::Slowed {
                    delay: self.config.slow_delay,
                }
            }
            (Some(_), _) => Pace::Paused,
        };
        self.holding = holding;
        let changed = pace != self.pace;
        self.pace = pace;
        Changes {
            began,
            ended,
            pace: changed.then_some(pace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(config: PacingConfig) -> Pacing {
        Pacing::new(config, 4, 2)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn an_idle_queue_sheds_pollers_down_to_one_and_the_first_message_brings_all_back() {
        let mut p = rules(PacingConfig {
            idle_empty_receives: 2,
            ..PacingConfig::default()
        });
        let now = Instant::now();
        let mut paces = Vec::new();
        for _ in 0..8 {
            p.received(0);
            p.evaluate(now);
            paces.push(p.pace());
        }
        let pollers: Vec<usize> = paces
            .iter()
            .map(|pace| match pace {
                Pace::Polling { pollers } => *pollers,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(pollers, [4, 3, 3, 2, 2, 1, 1, 1]);
        p.received(3);
        assert_eq!(p.evaluate(now).pace, Some(Pace::Polling { pollers: 4 }));
    }

    #[test]
    fn no_idle_rule_keeps_every_poller() {
        let mut p = rules(PacingConfig {
            idle_empty_receives: 0,
            ..PacingConfig::default()
        });
        for _ in 0..100 {
            p.received(0);
        }
        assert_eq!(p.evaluate(Instant::now()).pace, None);
        assert_eq!(p.pace(), Pace::Polling { pollers: 4 });
    }

    #[test]
    fn an_output_backlog_slows_then_pauses_and_its_end_restores_full_speed() {
        let config = PacingConfig {
            output_backlog_max: Some(10),
            slow_delay: Duration::from_millis(500),
            pause_after: secs(5),
            ..PacingConfig::default()
        };
        let mut p = rules(config);
        let t0 = Instant::now();
        p.output_backlog(Some(10));
        assert_eq!(
            p.evaluate(t0),
            Changes::default(),
            "at the limit is not over it"
        );
        p.output_backlog(Some(11));
        let changes = p.evaluate(t0);
        assert_eq!(changes.began, [Pressure::OutputBacklog]);
        let slowed = Pace::Slowed {
            delay: Duration::from_millis(500),
        };
        assert_eq!(changes.pace, Some(slowed));
        assert_eq!(slowed.turn(0), Some(Duration::from_millis(500)));
        assert_eq!(slowed.turn(1), None);
        assert_eq!(p.evaluate(t0 + secs(4)).pace, None, "still slowed");
        assert_eq!(p.evaluate(t0 + secs(5)).pace, Some(Pace::Paused));
        assert_eq!(Pace::Paused.turn(0), None);
        p.output_backlog(Some(3));
        let changes = p.evaluate(t0 + secs(60));
        assert_eq!(changes.ended, [Pressure::OutputBacklog]);
        assert_eq!(changes.pace, Some(Pace::Polling { pollers: 4 }));
    }

    #[test]
    fn a_failed_backlog_measure_does_not_hold_polling_back() {
        let mut p = rules(PacingConfig {
            output_backlog_max: Some(10),
            ..PacingConfig::default()
        });
        let now = Instant::now();
        p.output_backlog(Some(50));
        p.evaluate(now);
        p.output_backlog(None);
        assert_eq!(p.evaluate(now).ended, [Pressure::OutputBacklog]);
        assert_eq!(p.pace(), Pace::Polling { pollers: 4 });
    }

    #[test]
    fn slow_enrichment_pauses_and_is_forgotten_when_no_batch_measures_it_again() {
        let config = PacingConfig {
            enrich_budget: Some(Duration::from_millis(100)),
            pause_after: secs(10),
            ..PacingConfig::default()
        };
        let mut p = rules(config);
        let t0 = Instant::now();
        p.enriched(t0, Duration::from_millis(80));
        assert_eq!(p.evaluate(t0).pace, None);
        // The mean of 80 and 400 ms, each weighing half: 240 ms.
        p.enriched(t0, Duration::from_millis(400));
        assert_eq!(p.enrich_mean_ms(t0), Some(240.0));
        assert_eq!(p.evaluate(t0).began, [Pressure::EnrichLatency]);
        // Batches finishing while slowed keep it: the pause comes.
        p.enriched(t0 + secs(9), Duration::from_millis(300));
        assert_eq!(p.evaluate(t0 + secs(10)).pace, Some(Pace::Paused));
        // Paused, no batch measures it again: after `pause_after` it is forgotten.
        assert_eq!(p.evaluate(t0 + secs(18)).pace, None);
        let changes = p.evaluate(t0 + secs(19));
        assert_eq!(changes.ended, [Pressure::EnrichLatency]);
        assert_eq!(changes.pace, Some(Pace::Polling { pollers: 4 }));
        // A new slow batch starts a new mean (the forgotten one weighs nothing), and fast
        // batches bring it back under budget: 900, 450.5, 225.75, 113.4, 57.2 ms.
        p.enriched(t0 + secs(20), Duration::from_millis(900));
        assert_eq!(p.enrich_mean_ms(t0 + secs(20)), Some(900.0));
        assert_eq!(p.evaluate(t0 + secs(20)).began, [Pressure::EnrichLatency]);
        for _ in 0..3 {
            p.enriched(t0 + secs(21), Duration::from_millis(1));
        }
        assert_eq!(p.evaluate(t0 + secs(21)).ended, []);
        p.enriched(t0 + secs(21), Duration::from_millis(1));
        assert_eq!(p.evaluate(t0 + secs(21)).ended, [Pressure::EnrichLatency]);
    }

    #[test]
    fn slots_full_past_their_limit_hold_polling_back_until_a_batch_finishes() {
        let config = PacingConfig {
            slots_full_max: Some(secs(20)),
            pause_after: secs(5),
            ..PacingConfig::default()
        };
        let mut p = rules(config);
        let t0 = Instant::now();
        p.slot_taken(t0);
        p.slot_taken(t0 + secs(1));
        assert_eq!(p.slots_full_for(t0 + secs(1)), Some(Duration::ZERO));
        assert_eq!(p.evaluate(t0 + secs(21)).pace, None, "20 s is the limit");
        assert_eq!(p.evaluate(t0 + secs(22)).began, [Pressure::SlotsFull]);
        assert_eq!(p.evaluate(t0 + secs(27)).pace, Some(Pace::Paused));
        p.slot_freed();
        assert_eq!(
            p.evaluate(t0 + secs(28)).pace,
            Some(Pace::Polling { pollers: 4 })
        );
        // Full again: the clock starts again.
        p.slot_taken(t0 + secs(30));
        assert_eq!(p.evaluate(t0 + secs(45)).pace, None);
    }

    #[test]
    fn pressure_overrides_the_idle_pollers_and_its_end_returns_to_them() {
        let mut p = rules(PacingConfig {
            idle_empty_receives: 1,
            output_backlog_max: Some(0),
            ..PacingConfig::default()
        });
        let now = Instant::now();
        p.received(0);
        p.evaluate(now);
        assert_eq!(p.pace(), Pace::Polling { pollers: 3 });
        p.output_backlog(Some(1));
        p.evaluate(now);
        assert!(matches!(p.pace(), Pace::Slowed { .. }));
        p.output_backlog(Some(0));
        assert_eq!(p.evaluate(now).pace, Some(Pace::Polling { pollers: 3 }));
    }

    #[test]
    fn conditions_that_overlap_keep_the_pause_until_the_last_ends() {
        let mut p = rules(PacingConfig {
            output_backlog_max: Some(0),
            slots_full_max: Some(Duration::ZERO),
            pause_after: secs(1),
            ..PacingConfig::default()
        });
        let t0 = Instant::now();
        p.output_backlog(Some(5));
        p.slot_taken(t0);
        p.slot_taken(t0);
        let changes = p.evaluate(t0 + secs(2));
        assert_eq!(
            changes.began,
            [Pressure::OutputBacklog, Pressure::SlotsFull]
        );
        assert_eq!(p.evaluate(t0 + secs(3)).pace, Some(Pace::Paused));
        p.output_backlog(Some(0));
        let changes = p.evaluate(t0 + secs(4));
        assert_eq!(changes.ended, [Pressure::OutputBacklog]);
        assert_eq!(changes.pace, None, "the slots still hold it");
        p.slot_freed();
        assert_eq!(
            p.evaluate(t0 + secs(5)).pace,
            Some(Pace::Polling { pollers: 4 })
        );
    }

    #[test]
    fn heavy_arrivals_gather_with_one_poller_and_pressure_overrides_the_gathering() {
        let mut p = rules(PacingConfig {
            output_backlog_max: Some(10),
            ..PacingConfig::default()
        })
        .with_batching(Batching::new(Duration::from_millis(50), 10));
        let t0 = Instant::now();
        // One bundle every 10 ms, each batch taking 30 ms: batches of one would queue.
        p.batching_mut().served(Duration::from_millis(30));
        for i in 1..=20 {
            p.received(1);
            p.batching_mut().received(
                t0 + Duration::from_millis(10 * i),
                1,
                Duration::from_millis(2),
            );
        }
        let gathering = Pace::Gathering {
            delay: Duration::from_millis(48),
        };
        assert_eq!(p.evaluate(t0).pace, Some(gathering));
        assert_eq!(gathering.turn(0), Some(Duration::from_millis(48)));
        assert_eq!(gathering.turn(1), None, "the other pollers wait their turn");
        p.output_backlog(Some(11));
        assert!(matches!(p.evaluate(t0).pace, Some(Pace::Slowed { .. })));
        p.output_backlog(Some(0));
        assert_eq!(p.evaluate(t0).pace, Some(gathering));
        // The arrivals stop: every poller long-polls again.
        p.received(0);
        p.batching_mut()
            .received(t0 + Duration::from_secs(1), 0, Duration::from_millis(800));
        assert_eq!(p.evaluate(t0).pace, Some(Pace::Polling { pollers: 4 }));
    }
}
