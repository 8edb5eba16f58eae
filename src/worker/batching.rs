//! Adaptive batching: how long the one receiving poller waits before its next receive, so that
//! one receive of up to ten gathers several bundles when the worker and its queue would
//! otherwise fall behind, and none waits when they would not. Plain values and no I/O, like
//! [`super::pacing`], which turns a hold into [`super::Pace::Gathering`].
//!
//! A receive's messages make one batch, and each batch costs three SQS calls (receive, send,
//! delete) whatever its size. With pollers always long-polling, every bundle that arrives wakes
//! one of them, and batches hold one or two bundles: about 2.5 calls per bundle. Holding the
//! batch in the batcher cannot help, since each bundle has cost a receive already; the wait must
//! come before the receive. What decides it, measured:
//!
//! - **the arrival gap**: a moving mean of the time between bundles, from each receive's
//!   message count and the time since the previous receive returned;
//! - **the receive round trip**: a moving mean of the time a receive that returned messages
//!   took, part of the wait of the bundles it gathers;
//! - **the service time**: a moving mean of the time a batch holds its slot, from the start of
//!   its work to its answers sent and its delete made or deferred.
//!
//! The ratio of the service time to the arrival gap is the **load**: the share of the time the
//! worker would be busy with one batch per bundle. (The receive's round trip is left out: a
//! long poll's includes waiting for the bundle to arrive. A saturated queue service shows in the
//! service time all the same, in the batch's send and delete.) Below [`HOLD_AT_LOAD`], a bundle
//! is served before the next one comes, little queues, and a hold would only add its own wait:
//! none is made (BENCHMARKS.md: at 5 000 records/s on a queue service that keeps up, the former
//! rule, which held whenever two bundles were expected within the budget, tripled the p99 and
//! the median). At or above it, batches of one queue behind each other (on a saturated queue
//! service, the calls of every batch wait their turn), so gathering pays in latency as well as
//! in calls. This is the decision BentoML's adaptive batcher and Triton's queue delay make from
//! a measured batch cost, rather than from a fixed wait.
//!
//! The rule, with `budget` the longest a bundle may wait for company:
//! - **Light load never holds**: when the load is under [`HOLD_AT_LOAD`]; when fewer than two
//!   bundles are expected within the budget (gap above half of it); when the last receive came
//!   back empty (the arrivals stopped; a bundle after an idle spell also measures a long gap);
//!   and before a gap and a service time are measured.
//! - **A backlog never holds**: a receive that came back full says more are waiting.
//! - **Otherwise** the poller waits `window − round trip` before its next receive, the window
//!   being the least of the budget, ten gaps (a full receive) and the service time over
//!   [`GATHER_TO_LOAD`]: just long enough for the batches it gathers to bring the load down to
//!   that level. The receive returns about `window / gap` bundles, and the bundle that waited
//!   longest waited about the window. Once a receive fills up, the hold is gone.

use std::time::Duration;

use tokio::time::Instant;

/// How much the latest receive, or batch, weighs in the moving means.
const WEIGHT: f64 = 0.25;

/// The load (a batch's service time over the arrival gap) from which the poller holds: batches
/// of one would keep the worker busy all the time.
pub const HOLD_AT_LOAD: f64 = 1.0;

/// The load the batches a hold gathers are sized to: each costs one service time for several
/// bundles, and the worker is busy about half the time.
pub const GATHER_TO_LOAD: f64 = 0.5;

/// The measures and the rule; see the module documentation.
#[derive(Debug, Clone)]
pub struct Batching {
    budget: Duration,
    receive_max: usize,
    /// The moving mean of the time between bundles, in milliseconds.
    gap_ms: Option<f64>,
    /// The moving mean of the round trip of receives that returned messages, in milliseconds.
    rtt_ms: Option<f64>,
    /// The moving mean of a batch's service time, in milliseconds.
    service_ms: Option<f64>,
    /// When a receive last returned messages.
    last_receipt: Option<Instant>,
    /// How many messages the last receive returned.
    last_count: usize,
}

impl Batching {
    /// The rule with a latency `budget` (zero never holds) for receives of `receive_max`.
    pub fn new(budget: Duration, receive_max: usize) -> Self {
        Self {
            budget,
            receive_max: receive_max.max(1),
            gap_ms: None,
            rtt_ms: None,
            service_ms: None,
            last_receipt: None,
            last_count: 0,
        }
    }

    /// A receive that took `rtt` returned `messages` messages at `now`.
    pub fn received(&mut self, now: Instant, messages: usize, rtt: Duration) {
        self.last_count = messages;
        // A gap, or a round trip, is counted at most as the budget: longer is light load (or no
        // hold) all the same, and one idle spell (a long poll that waited seconds for its one
        // bundle) would otherwise hold the means up for many receives after traffic returns.
        let cap_ms = self.budget.as_secs_f64() * 1e3;
        let since = self
            .last_receipt
            .map(|at| now.saturating_duration_since(at).as_secs_f64() * 1e3);
        if messages == 0 {
            // No bundle for at least that long: one gap that long.
            if let Some(since) = since {
                self.gap_ms = Some(mean(self.gap_ms, since.min(cap_ms)));
            }
            return;
        }
        if let Some(since) = since {
            self.gap_ms = Some(mean(self.gap_ms, (since / messages as f64).min(cap_ms)));
        }
        self.rtt_ms = Some(mean(self.rtt_ms, (rtt.as_secs_f64() * 1e3).min(cap_ms)));
        self.last_receipt = Some(now);
    }

    /// A batch held its slot for `took`: from the start of its work to its answers sent and
    /// its delete made or deferred.
    pub fn served(&mut self, took: Duration) {
        // Counted at most as the budget, like a gap: one stalled batch does not hold the mean
        // (and the hold) up for many batches after.
        let cap_ms = self.budget.as_secs_f64() * 1e3;
        self.service_ms = Some(mean(
            self.service_ms,
            (took.as_secs_f64() * 1e3).min(cap_ms),
        ));
    }

    /// The moving mean of a batch's service time, once measured.
    pub fn service_time(&self) -> Option<Duration> {
        self.service_ms.map(|ms| Duration::from_secs_f64(ms / 1e3))
    }

    /// A batch's service time over the arrival gap, once both are measured: the share of the
    /// time the worker would be busy with one batch per bundle.
    pub fn load(&self) -> Option<f64> {
        let gap = self.gap_ms?;
        let service = self.service_ms?;
        Some(if gap > 0.0 {
            service / gap
        } else {
            f64::INFINITY
        })
    }

    /// The moving mean of the time between bundles, once measured.
    pub fn arrival_gap(&self) -> Option<Duration> {
        self.gap_ms.map(|ms| Duration::from_secs_f64(ms / 1e3))
    }

    /// The moving mean of a receive's round trip, once measured.
    pub fn receive_rtt(&self) -> Option<Duration> {
        self.rtt_ms.map(|ms| Duration::from_secs_f64(ms / 1e3))
    }

    /// How long the receiving poller waits before its next receive; `None`: no wait, every
    /// poller receives.
    pub fn hold(&self) -> Option<Duration> {
        let budget_ms = self.budget.as_secs_f64() * 1e3;
        let gap = self.gap_ms?;
        let load = self.load()?;
        let light = gap * 2.0 > budget_ms || load < HOLD_AT_LOAD;
        let idle_or_backlog = self.last_count == 0 || self.last_count >= self.receive_max;
        if budget_ms <= 0.0 || light || idle_or_backlog {
            return None;
        }
        let rtt = self.rtt_ms.unwrap_or(0.0);
        let service = self.service_ms?;
        let window = budget_ms
            .min(gap * self.receive_max as f64)
            .min(service / GATHER_TO_LOAD);
        let hold_ms = (window - rtt).floor();
        // Whole milliseconds: the pace does not change at every receive for a few microseconds.
        (hold_ms >= 1.0).then(|| Duration::from_millis(hold_ms as u64))
    }
}

fn mean(before: Option<f64>, sample: f64) -> f64 {
    match before {
        Some(before) => WEIGHT * sample + (1.0 - WEIGHT) * before,
        None => sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Whether a measured duration is within a microsecond of `ms` milliseconds.
    fn near(measured: Option<Duration>, ms: f64) -> bool {
        measured.is_some_and(|d| (d.as_secs_f64() * 1e3 - ms).abs() < 1e-3)
    }

    /// Receives every `every` returning `messages` each, with a round trip of `rtt`, `times`
    /// times from `start`; the time after the last.
    fn steady(
        b: &mut Batching,
        start: Instant,
        every: Duration,
        messages: usize,
        rtt: Duration,
        times: u32,
    ) -> Instant {
        let mut now = start;
        for _ in 0..times {
            now += every;
            b.received(now, messages, rtt);
        }
        now
    }

    #[test]
    fn nothing_measured_holds_nothing() {
        let mut b = Batching::new(ms(50), 10);
        assert_eq!(b.hold(), None);
        b.received(Instant::now(), 1, ms(5));
        assert_eq!(b.hold(), None, "a first bundle measures no gap");
        // Bundles every 10 ms, but no batch has finished: its cost is not known yet.
        steady(&mut b, Instant::now(), ms(10), 1, ms(5), 10);
        assert_eq!(b.load(), None);
        assert_eq!(b.hold(), None, "no service time measured");
    }

    #[test]
    fn light_load_never_holds() {
        let t0 = Instant::now();
        // One bundle every 40 ms: one expected per 50 ms budget, not two (however long a
        // batch takes).
        let mut b = Batching::new(ms(50), 10);
        b.served(ms(40));
        steady(&mut b, t0, ms(40), 1, ms(2), 50);
        assert!(near(b.arrival_gap(), 40.0));
        assert_eq!(b.hold(), None);
        // Ten seconds between bundles, whatever the budget allows.
        let mut b = Batching::new(ms(50), 10);
        b.served(ms(40));
        steady(&mut b, t0, Duration::from_secs(10), 1, ms(2), 5);
        assert_eq!(b.hold(), None);
        // A zero budget turns the hold off even under heavy load.
        let mut b = Batching::new(Duration::ZERO, 10);
        b.served(ms(40));
        steady(&mut b, t0, ms(5), 1, ms(2), 50);
        assert_eq!(b.hold(), None);
    }

    #[test]
    fn bundles_served_before_the_next_comes_are_never_held() {
        let t0 = Instant::now();
        // One bundle every 20 ms, 2.5 within the budget, but a batch of one takes 5 ms: the
        // worker is busy a quarter of the time, and a hold would only add its wait. So is it at
        // 15 ms, busy most of the time but still done before the next bundle comes.
        let mut b = Batching::new(ms(50), 10);
        b.served(ms(5));
        steady(&mut b, t0, ms(20), 1, ms(2), 20);
        assert!((b.load().unwrap() - 0.25).abs() < 1e-9, "{:?}", b.load());
        assert_eq!(b.hold(), None);
        for _ in 0..40 {
            b.served(ms(15));
        }
        assert!(b.load().unwrap() < HOLD_AT_LOAD, "{:?}", b.load());
        assert_eq!(b.hold(), None);
        // The batches slow down (a queue service near saturation answers later): the same
        // arrivals are now worth gathering.
        for _ in 0..20 {
            b.served(ms(30));
        }
        assert!(b.load().unwrap() > HOLD_AT_LOAD);
        assert!(b.hold().is_some());
        // And once batches are cheap again, the hold goes.
        for _ in 0..20 {
            b.served(ms(3));
        }
        assert_eq!(b.hold(), None, "load {:?}", b.load());
    }

    #[test]
    fn the_hold_gathers_just_enough_to_bring_the_load_back() {
        let t0 = Instant::now();
        // One bundle every 10 ms, a batch of one taking 15 ms: load 1.5. Batches of three bring
        // it to a half, so the window is three gaps, not the whole budget.
        let mut b = Batching::new(ms(50), 10);
        b.served(ms(15));
        steady(&mut b, t0, ms(10), 1, ms(2), 20);
        assert!((b.load().unwrap() - 1.5).abs() < 1e-9, "{:?}", b.load());
        assert_eq!(b.hold(), Some(ms(28)), "a 30 ms window less the round trip");
        // A stalled batch counts as the budget, not as its ten seconds.
        b.served(Duration::from_secs(10));
        assert!(b.service_time().unwrap() <= ms(50));
        assert!(b.hold().unwrap() <= ms(48));
    }

    #[test]
    fn heavy_load_holds_so_that_one_receive_gathers_several_bundles() {
        let t0 = Instant::now();
        let mut b = Batching::new(ms(50), 10);
        // A batch takes 30 ms: load 1.5 at one bundle every 20 ms.
        b.served(ms(30));
        // One bundle every 20 ms, each receive getting one: 2.5 expected within the budget.
        let now = steady(&mut b, t0, ms(20), 1, ms(5), 20);
        assert!(near(b.arrival_gap(), 20.0));
        let hold = b.hold().expect("heavy load holds");
        assert_eq!(hold, ms(45), "the budget less the receive's own round trip");
        // The hold makes receives return about budget / gap bundles; the gap measured stays
        // the same, and so does the hold.
        steady(&mut b, now, ms(50), 2, ms(5), 60);
        assert!(near(b.arrival_gap(), 25.0), "{:?}", b.arrival_gap());
        assert_eq!(b.hold(), Some(ms(45)));
    }

    #[test]
    fn the_hold_stays_within_the_budget_and_ends_when_a_receive_fills() {
        let t0 = Instant::now();
        let mut b = Batching::new(ms(100), 10);
        b.served(ms(30));
        // One bundle every 4 ms: ten fill a receive in 40 ms, sooner than the budget.
        let now = steady(&mut b, t0, ms(40), 9, ms(3), 20);
        let hold = b.hold().unwrap();
        assert!(hold + b.receive_rtt().unwrap() <= ms(100));
        assert!(hold <= ms(42) && hold >= ms(30), "{hold:?}");
        // A full receive: more are waiting, every poller receives at once.
        b.received(now + ms(40), 10, ms(3));
        assert_eq!(b.hold(), None);
        // A round trip longer than the budget leaves no hold at all.
        let mut b = Batching::new(ms(30), 10);
        b.served(ms(30));
        steady(&mut b, t0, ms(10), 1, ms(40), 20);
        assert_eq!(b.hold(), None);
    }

    #[test]
    fn an_empty_receive_ends_the_hold_and_a_bundle_after_an_idle_spell_does_not_wait() {
        let t0 = Instant::now();
        let mut b = Batching::new(ms(50), 10);
        b.served(ms(30));
        let now = steady(&mut b, t0, ms(10), 1, ms(2), 20);
        assert!(b.hold().is_some());
        b.received(now + ms(30), 0, ms(30));
        assert_eq!(b.hold(), None, "the arrivals stopped");
        // A 20 s long poll returns empty, then a lone bundle arrives five seconds later.
        b.received(now + Duration::from_secs(20), 0, Duration::from_secs(20));
        b.received(now + Duration::from_secs(25), 1, Duration::from_secs(5));
        assert!(b.arrival_gap().unwrap() >= ms(25), "light load");
        assert_eq!(b.hold(), None);
        // Heavy traffic again: the idle spell counted as one budget-long gap, so the hold is
        // back within a few receives (not the ~18 an uncapped 20 s gap took to wash out).
        let back = now + Duration::from_secs(25);
        steady(&mut b, back, ms(20), 1, ms(2), 8);
        assert!(
            b.hold().is_some(),
            "{:?} {:?}",
            b.arrival_gap(),
            b.receive_rtt()
        );
    }
}
