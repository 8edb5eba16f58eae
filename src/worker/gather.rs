//! Gathering: what the pollers hand over becomes one batch, decoded, with the guards that keep
//! its messages visible and counted as in hand until its step returns.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::heartbeat::Heartbeat;
use super::state::InFlight;
use super::step::{decode_all, Received};
use crate::bundle::Limits;
use crate::queue::Message;

/// Messages received by one poll, kept visible by their heartbeat until their step returns.
#[derive(Debug)]
pub struct InHand {
    /// The messages.
    pub messages: Vec<Message>,
    /// Keeps them invisible to other consumers until dropped.
    pub heartbeat: Heartbeat,
    /// Counts them as in hand until dropped.
    pub in_flight: InFlight,
}

/// The bundles gathered for one batch, with the guards that keep them visible and counted as
/// in hand until its step returns.
#[derive(Default)]
pub struct Gathered {
    /// The decoded bundles.
    pub batch: Vec<Received>,
    /// Their heartbeats and in-hand counts, dropped when the step returns.
    pub held: Vec<(Heartbeat, InFlight)>,
    /// Records in the batch.
    pub records: usize,
    /// Time spent decoding.
    pub decoding: Duration,
}

impl Gathered {
    /// Decodes one poll's messages into the batch.
    pub fn add(&mut self, more: InHand, limits: &Limits) {
        let started = Instant::now();
        let decoded = decode_all(more.messages, limits);
        self.decoding += started.elapsed();
        self.records += decoded.iter().map(Received::records).sum::<usize>();
        self.batch.extend(decoded);
        self.held.push((more.heartbeat, more.in_flight));
    }

    /// Adds what the pollers already handed over, up to `max` records; with a deadline, also
    /// waits until then for more.
    pub async fn take_in_hand(
        &mut self,
        rx: &mut mpsc::Receiver<InHand>,
        max: usize,
        limits: &Limits,
        deadline: Option<tokio::time::Instant>,
    ) {
        while self.records < max {
            let more = match (rx.try_recv(), deadline) {
                (Ok(more), _) => Some(more),
                (Err(_), Some(deadline)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                (Err(_), _) => None,
            };
            let Some(more) = more else { break };
            self.add(more, limits);
        }
    }
}
