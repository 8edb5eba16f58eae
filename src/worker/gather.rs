//! Gathering: what the pollers hand over becomes one batch, decoded, with the guards that keep
//! its messages visible and counted as in hand until its step returns.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::heartbeat::Heartbeat;
use super::state::InFlight;
use super::step::Received;
use crate::bundle::Limits;
use crate::payload::Fetched;
use crate::queue::Message;

/// Messages received by one poll, kept visible by their heartbeat until their step returns.
#[derive(Debug)]
pub struct InHand {
    /// The messages.
    pub messages: Vec<Message>,
    /// Beside each message, its offloaded payload as read from S3 (None for an ordinary
    /// message); may be empty when none is offloaded.
    pub offloaded: Vec<Fetched>,
    /// Keeps them invisible to other consumers until dropped.
    pub heartbeat: Heartbeat,
    /// Counts them as in hand until dropped.
    pub in_flight: InFlight,
}

/// How big one batch may grow: it stops taking bundles at either bound. The bundle that
/// crosses a bound is kept, so a batch overshoots by at most one bundle (itself bounded by the
/// decoding limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    /// Records.
    pub records: usize,
    /// Values in the records' rows.
    pub cells: usize,
}

/// The bundles gathered for one batch, with the guards that keep them visible and counted as
/// in hand until its step returns.
///
/// A FIFO message group is never split between two batches: batches run concurrently, and a
/// group's later bundles in a second batch could be answered before its earlier ones. A full
/// batch still takes the rest of a poll's messages of the groups it holds (at most the nine
/// others of one receive), and carries the other groups to the next batch.
#[derive(Default)]
pub struct Gathered {
    /// The decoded bundles.
    pub batch: Vec<Received>,
    /// Their heartbeats and in-hand counts, dropped when the step returns.
    pub held: Vec<(Heartbeat, InFlight)>,
    /// Records in the batch.
    pub records: usize,
    /// Values in the batch's records.
    pub cells: usize,
    /// Time spent decoding.
    pub decoding: Duration,
    /// Messages received but not decoded, because the batch was full: they start the next one.
    pub carried: Option<InHand>,
    /// The FIFO message groups of the batch's messages.
    groups: HashSet<String>,
}

impl Gathered {
    /// Whether the batch has reached a bound.
    pub fn is_full(&self, bounds: &BatchBounds) -> bool {
        self.records >= bounds.records || self.cells >= bounds.cells
    }

    /// Decodes one poll's messages into the batch, one at a time: once the batch is full, the
    /// rest stay undecoded in [`Gathered::carried`], with their own heartbeat, except those of
    /// a FIFO message group the batch already holds.
    pub fn add(&mut self, mut more: InHand, bounds: &BatchBounds, limits: &Limits) {
        let started = Instant::now();
        let mut offloaded = std::mem::take(&mut more.offloaded).into_iter();
        let mut rest = Vec::new();
        let mut rest_offloaded = Vec::new();
        for message in std::mem::take(&mut more.messages) {
            let payload = offloaded.next().flatten();
            // A batch always takes one bundle, however big (the decoding limits bound it).
            let full = !self.batch.is_empty() && self.is_full(bounds);
            let held_group = message
                .group_id
                .as_ref()
                .is_some_and(|g| self.groups.contains(g));
            if full && !held_group {
                rest.push(message);
                rest_offloaded.push(payload);
                continue;
            }
            self.groups.extend(message.group_id.clone());
            let received = Received::decode_fetched(message, payload, limits);
            self.records += received.records();
            self.cells += received.cells();
            self.batch.push(received);
        }
        self.decoding += started.elapsed();
        if !rest.is_empty() {
            let receipts: Vec<String> = rest.iter().map(|m| m.receipt_handle.clone()).collect();
            let heartbeat = more.heartbeat.split_off_receipts(&receipts);
            let in_flight = more.in_flight.split_off(rest.len());
            self.carried = Some(InHand {
                messages: rest,
                offloaded: rest_offloaded,
                heartbeat,
                in_flight,
            });
        }
        self.held.push((more.heartbeat, more.in_flight));
    }

    /// Adds what the pollers already handed over, until the batch is full; with a deadline,
    /// also waits until then for more.
    pub async fn take_in_hand(
        &mut self,
        rx: &mut mpsc::Receiver<InHand>,
        bounds: &BatchBounds,
        limits: &Limits,
        deadline: Option<tokio::time::Instant>,
    ) {
        while !self.is_full(bounds) && self.carried.is_none() {
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
            self.add(more, bounds, limits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::MemoryQueue;
    use crate::queue::Message;
    use crate::worker::state::WorkerState;
    use std::sync::Arc;

    fn bundle(id: &str, rows: usize, width: usize) -> Message {
        let columns: Vec<String> = (0..width).map(|c| format!("c{c}")).collect();
        let row: Vec<u32> = vec![0; width];
        let body =
            serde_json::json!({"bundle_id": id, "columns": columns, "rows": vec![row; rows]});
        Message::received(id, &body.to_string())
    }

    #[tokio::test]
    async fn a_full_batch_leaves_the_rest_of_a_poll_undecoded_for_the_next() {
        let state = Arc::new(WorkerState::default());
        let queue = MemoryQueue::new("in");
        let messages: Vec<Message> = (0..4).map(|i| bundle(&format!("b-{i}"), 10, 100)).collect();
        let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let in_hand = InHand {
            messages,
            offloaded: Vec::new(),
            heartbeat: Heartbeat::start(queue, receipts, 30, 0.5),
            in_flight: state.hold(4),
        };
        let bounds = BatchBounds {
            records: 1_000,
            cells: 1_500,
        };
        let mut first = Gathered::default();
        first.add(in_hand, &bounds, &Limits::default());
        // 1 000 cells, then 2 000: the second bundle crosses the bound and the other two wait.
        assert_eq!(first.batch.len(), 2);
        assert_eq!(first.cells, 2_000);
        let carried = first
            .carried
            .take()
            .expect("the rest of the poll is carried");
        assert_eq!(carried.messages.len(), 2);
        assert_eq!(state.in_flight(), 4, "all four are still in hand");
        drop(first);
        assert_eq!(state.in_flight(), 2, "the first batch released its two");
        let mut second = Gathered::default();
        second.add(carried, &bounds, &Limits::default());
        assert_eq!(second.batch.len(), 2);
        assert!(second.carried.is_none());
        let ids: Vec<_> = second
            .batch
            .iter()
            .map(|r| r.message.message_id.clone())
            .collect();
        assert_eq!(ids, ["b-2", "b-3"]);
    }

    #[tokio::test]
    async fn a_full_batch_still_takes_the_rest_of_the_fifo_groups_it_holds() {
        let state = Arc::new(WorkerState::default());
        let queue = MemoryQueue::new("in.fifo");
        let groups = ["A", "B", "A", "C", "A"];
        let messages: Vec<Message> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| Message {
                group_id: Some((*g).to_owned()),
                ..bundle(&format!("{g}-{i}"), 10, 100)
            })
            .collect();
        let receipts = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let in_hand = InHand {
            offloaded: Vec::new(),
            messages,
            heartbeat: Heartbeat::start(queue, receipts, 30, 0.5),
            in_flight: state.hold(5),
        };
        // Full after the first bundle.
        let bounds = BatchBounds {
            records: 10,
            cells: 1_000,
        };
        let mut first = Gathered::default();
        first.add(in_hand, &bounds, &Limits::default());
        let ids: Vec<_> = first
            .batch
            .iter()
            .map(|r| r.message.message_id.clone())
            .collect();
        assert_eq!(
            ids,
            ["A-0", "A-2", "A-4"],
            "group A is not split between batches"
        );
        let carried = first.carried.take().expect("B and C are carried");
        let ids: Vec<_> = carried
            .messages
            .iter()
            .map(|m| m.message_id.clone())
            .collect();
        assert_eq!(ids, ["B-1", "C-3"]);
        drop(first);
        assert_eq!(state.in_flight(), 2);
    }
}
