//! What a person sees while training runs: the fits done (a bar on a terminal, a plain line per
//! fit otherwise) and, once a fit has run a few seconds, the solver's counters from
//! [`Control`], so a long fit is visibly alive.
//!
//! The fitting thread reports finished fits; a ticker on the async side calls [`Progress::tick`]
//! once a second. Both only take a short lock.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::control::Control;

/// A fit running longer than this gets the solver's counters shown.
const QUIET: Duration = Duration::from_secs(2);
/// The least time between two plain progress lines about a running fit.
const LINE_EVERY: Duration = Duration::from_secs(10);

/// The progress display of one training run.
pub struct Progress {
    /// Rows trained on, named in the plain lines.
    rows: usize,
    /// Fits the whole run makes (search and training).
    total: usize,
    /// The bar on a terminal; None: plain lines on stderr.
    bar: Option<indicatif::ProgressBar>,
    /// The solver counters shown by the ticker.
    control: Control,
    state: Mutex<State>,
}

/// What changes as the fits finish.
struct State {
    /// Fits finished.
    done: usize,
    /// The last fit finished, as the bar says it.
    last: String,
    /// When the last fit finished (or the run started): the running fits began then.
    since: Instant,
    /// When the last plain line was printed.
    line_at: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(rows: usize, total: usize, control: Control) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:30}] {pos}/{len} fits  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self::with_bar(rows, total, control, bar)
    }

    fn with_bar(
        rows: usize,
        total: usize,
        control: Control,
        bar: Option<indicatif::ProgressBar>,
    ) -> Self {
        let now = Instant::now();
        Self {
            rows,
            total,
            bar,
            control,
            state: Mutex::new(State {
                done: 0,
                last: String::new(),
                since: now,
                line_at: now,
            }),
        }
    }

    /// The `progress` callback of one phase of fits (search, then training), whose own count
    /// starts after `offset` fits of the run.
    pub fn phase(&self, offset: usize) -> impl FnMut(usize, usize, &str) + '_ {
        move |done, _, what| self.fit_done(offset + done, what)
    }

    /// Records that `done` fits of the run have finished, the last being `what`.
    pub fn fit_done(&self, done: usize, what: &str) {
        let mut state = self.state.lock().expect("never poisoned");
        let now = Instant::now();
        state.done = done;
        state.last = what.to_owned();
        state.since = now;
        state.line_at = now;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(what.to_owned());
            }
            None => eprintln!(
                "train: {done}/{} fits done ({what}, {} rows)",
                self.total, self.rows
            ),
        }
    }

    /// Called about once a second: after a fit has run [`QUIET`], shows how long, with the
    /// solver's counters; as a plain line at most every [`LINE_EVERY`]. Returns what it showed.
    pub fn tick(&self, now: Instant) -> Option<String> {
        let mut state = self.state.lock().expect("never poisoned");
        let running = now.saturating_duration_since(state.since);
        if running < QUIET || state.done >= self.total {
            return None;
        }
        let solver = match (self.control.iterations(), self.control.chunks()) {
            (0, 0) => String::new(),
            (iterations, chunks) => {
                format!("; solver {iterations} iterations, {chunks} chunks")
            }
        };
        let text = format!(
            "{}/{} fits done, the next running {}s{solver}",
            state.done,
            self.total,
            running.as_secs()
        );
        match &self.bar {
            Some(bar) => bar.set_message(format!(
                "{}; next running {}s{solver}",
                state.last,
                running.as_secs()
            )),
            None if now.saturating_duration_since(state.line_at) >= LINE_EVERY => {
                state.line_at = now;
                eprintln!("train: {text} ({} rows)", self.rows);
            }
            None => return None,
        }
        Some(text)
    }

    /// Says that the run is stopping, and why.
    pub fn stopping(&self, signal: &str) {
        let (done, total) = self.fits();
        let text = format!(
            "{signal}: stopping; {done} of {total} fits done, waiting for the running fits to return"
        );
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("train: {text}"),
        }
    }

    /// (fits done, fits in the run).
    pub fn fits(&self) -> (usize, usize) {
        (self.state.lock().expect("never poisoned").done, self.total)
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_fit_shows_the_solver_counters_and_plain_lines_stay_rare() {
        let control = Control::new();
        let progress = Progress::with_bar(100, 7, control.clone(), None);
        let start = progress.state.lock().unwrap().since;
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(progress.tick(at(1)), None, "a short fit shows nothing");
        assert_eq!(progress.tick(at(5)), None, "no plain line before 10 s");
        assert_eq!(
            progress.tick(at(10)).as_deref(),
            Some("0/7 fits done, the next running 10s"),
            "the old solver counts nothing"
        );
        control.add_iterations(1500);
        control.add_chunks(3);
        assert_eq!(progress.tick(at(15)), None, "at most one line per 10 s");
        assert_eq!(
            progress.tick(at(20)).as_deref(),
            Some("0/7 fits done, the next running 20s; solver 1500 iterations, 3 chunks")
        );
        progress.phase(4)(1, 3, "hold-out evaluation");
        assert_eq!(progress.fits(), (5, 7));
        let later = progress.state.lock().unwrap().since;
        assert_eq!(progress.tick(later + Duration::from_secs(1)), None);
    }
}
