//! The order of FIFO message groups within one step: a group's bundles are answered in the
//! order they were received, and once one of them is not answered in this step (held back,
//! left for redelivery, its answer or dead-letter copy refused), none of the group's later
//! bundles is answered ahead of it. Like Powertools' `skipGroupOnError`: the failed group
//! stops, the other groups go on. On a standard queue nothing is ordered.

use std::collections::HashMap;

use crate::queue::Message;

/// Where each message group of a step's batch stands.
#[derive(Debug, Default)]
pub struct GroupOrder {
    /// Receipt handle -> position in the batch as received; empty on a standard queue.
    position: HashMap<String, usize>,
    /// Group -> the position of its first bundle not answered in this step.
    stopped: HashMap<String, usize>,
}

impl GroupOrder {
    /// The order of a batch's messages as received; `fifo` false orders nothing.
    pub fn new<'a>(fifo: bool, messages: impl IntoIterator<Item = &'a Message>) -> Self {
        let position = if fifo {
            messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| (m.receipt_handle.clone(), i))
                .collect()
        } else {
            HashMap::new()
        };
        Self {
            position,
            stopped: HashMap::new(),
        }
    }

    /// Whether the queue is a FIFO queue (groups are ordered).
    pub fn is_fifo(&self) -> bool {
        !self.position.is_empty()
    }

    /// Notes that `message` is not answered in this step: its group's later bundles wait.
    pub fn stop(&mut self, message: &Message) {
        let (Some(group), Some(&at)) = (
            &message.group_id,
            self.position.get(&message.receipt_handle),
        ) else {
            return;
        };
        let first = self.stopped.entry(group.clone()).or_insert(at);
        *first = (*first).min(at);
    }

    /// Whether an earlier bundle of `message`'s group was not answered in this step, so it may
    /// not be answered either.
    pub fn is_behind_a_stop(&self, message: &Message) -> bool {
        let (Some(group), Some(at)) = (
            &message.group_id,
            self.position.get(&message.receipt_handle),
        ) else {
            return false;
        };
        self.stopped.get(group).is_some_and(|first| first < at)
    }
}

/// Per bundle, in order: whether it is held back, given whether it waits for a source itself.
/// On a FIFO queue a bundle is held too when an earlier bundle of its group is; it then names
/// that bundle's position.
pub fn held_in_group_order(groups: &[Option<&str>], waits: &[bool], fifo: bool) -> Vec<Held> {
    let mut first_held: HashMap<&str, usize> = HashMap::new();
    groups
        .iter()
        .zip(waits)
        .enumerate()
        .map(|(i, (group, &waits))| {
            let behind = group
                .filter(|_| fifo)
                .and_then(|g| first_held.get(g).copied());
            if let (Some(g), true, None) = (group.filter(|_| fifo), waits, behind) {
                first_held.insert(g, i);
            }
            match (waits, behind) {
                (true, _) => Held::Waits,
                (false, Some(at)) => Held::Behind(at),
                (false, None) => Held::Ready,
            }
        })
        .collect()
}

/// Whether a bundle is held back in this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Answered now.
    Ready,
    /// Waits for a source that is down.
    Waits,
    /// Waits behind the bundle at this position (in the same list), of its message group.
    Behind(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(receipt: &str, group: &str) -> Message {
        Message {
            receipt_handle: receipt.into(),
            group_id: Some(group.into()),
            ..Message::received(receipt, "")
        }
    }

    #[test]
    fn a_stop_holds_back_only_the_later_bundles_of_its_group() {
        let batch = [
            message("a1", "A"),
            message("b1", "B"),
            message("a2", "A"),
            message("a3", "A"),
        ];
        let mut order = GroupOrder::new(true, &batch);
        order.stop(&batch[2]);
        let behind: Vec<bool> = batch.iter().map(|m| order.is_behind_a_stop(m)).collect();
        assert_eq!(behind, [false, false, false, true]);
        let standard = {
            let mut o = GroupOrder::new(false, &batch);
            o.stop(&batch[0]);
            o
        };
        assert!(batch.iter().all(|m| !standard.is_behind_a_stop(m)));
    }

    #[test]
    fn bundles_after_a_held_one_of_their_group_are_held_behind_it() {
        let groups = [Some("A"), Some("B"), Some("A"), Some("A"), Some("B")];
        let waits = [false, false, true, false, false];
        assert_eq!(
            held_in_group_order(&groups, &waits, true),
            [
                Held::Ready,
                Held::Ready,
                Held::Waits,
                Held::Behind(2),
                Held::Ready
            ]
        );
        assert_eq!(
            held_in_group_order(&groups, &waits, false)[3],
            Held::Ready,
            "a standard queue orders nothing"
        );
    }
}
