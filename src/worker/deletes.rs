//! Deletes of answered inputs, gathered across batches.
//!
//! Every batch used to end with its own `DeleteMessageBatch`, so at moderate load (one or two
//! bundles a batch) a third of the worker's SQS calls were deletes of one or two entries. An
//! answered input's delete does not hold up its answer, which SQS has already accepted: it only
//! has to happen before the message's visibility runs out. So deletes wait here, up to a short
//! delay, and go ten to a call:
//! - a batch that completes a set of ten deletes it at once;
//! - a batch that finds the oldest waiting receipt has waited the delay deletes everything
//!   waiting, in the delete call it makes anyway, right after its own send;
//! - only when no batch comes along (traffic stopped) does a flusher delete what is left, once
//!   the oldest receipt has waited twice the delay.
//!
//! AWS's own buffered SQS client batches deletes the same way (`maxBatchOpenMs`, 200 ms by
//! default), with a timer only. Riding on the batches' own calls matters on LocalStack, whose
//! one process serves every call in turn: a timer's delete, made at any moment, delays the
//! answers in progress (BENCHMARKS.md, "Deferred deletes"). The default delay is 200 ms
//! (`ML_PIPELINE_DELETE_DELAY_MS`; 0 deletes with each batch).
//!
//! What the delay costs: a worker killed without warning (SIGKILL) between an answer and its
//! delete has the bundle delivered and answered again, as for a crash between send and delete
//! (at least once, duplicates possible: `docs/contract.md`). On a graceful stop the flusher
//! deletes everything pending before the run returns. FIFO inputs are never deferred (a
//! group's next message waits for its predecessor's delete), nor inputs whose payload lives in
//! S3 (their payload is deleted only after the message is).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::delivery::delete_all;
use crate::queue::{Queue, Retry};

/// Entries per `DeleteMessageBatch` call.
const SET: usize = 10;

/// Receipts waiting to be deleted, and the flusher's state.
#[derive(Debug, Default)]
struct Pending {
    /// The longest a receipt waits, while a flusher runs; None defers nothing.
    delay: Option<Duration>,
    receipts: Vec<String>,
    /// When the oldest pending receipt arrived.
    since: Option<Instant>,
}

/// Deletes waiting for company; see the module documentation. Nothing waits until
/// [`DeferredDeletes::flush_until`] runs.
#[derive(Debug, Default)]
pub struct DeferredDeletes {
    pending: Mutex<Pending>,
    wake: Notify,
}

/// What [`DeferredDeletes::defer`] leaves to its caller.
#[derive(Debug, PartialEq)]
pub struct Deferral {
    /// Receipts to delete now, oldest first: other batches' as well as the caller's.
    pub now: Vec<String>,
    /// How many of the caller's receipts wait for a later delete.
    pub waiting: usize,
}

impl Deferral {
    /// Every receipt deleted now, none waiting.
    pub fn at_once(receipts: Vec<String>) -> Self {
        Self {
            now: receipts,
            waiting: 0,
        }
    }
}

impl DeferredDeletes {
    /// Queues `receipts` for a later delete, while a flusher runs. Returns the receipts the
    /// caller must delete now: all of them when nothing is deferred; everything waiting when
    /// the oldest has waited the delay; else the whole sets of ten the queue now holds, so that
    /// no call carries fewer entries than it could. Receipts go oldest first, so those to
    /// delete now may include other batches' and leave some of these waiting.
    pub fn defer(&self, receipts: Vec<String>) -> Deferral {
        let mut pending = self.pending.lock().expect("deletes lock");
        let Some(delay) = pending.delay.filter(|_| !receipts.is_empty()) else {
            return Deferral::at_once(receipts);
        };
        let (before, count) = (pending.receipts.len(), receipts.len());
        pending.receipts.extend(receipts);
        let due = pending.since.is_some_and(|since| since.elapsed() >= delay);
        let take = if due {
            pending.receipts.len()
        } else {
            pending.receipts.len() / SET * SET
        };
        let now: Vec<String> = pending.receipts.drain(..take).collect();
        crate::instruments::deletes_pending(pending.receipts.len());
        if pending.receipts.is_empty() {
            pending.since = None;
        } else if pending.since.is_none() || !now.is_empty() {
            pending.since = Some(Instant::now());
            self.wake.notify_one();
        }
        Deferral {
            waiting: count - take.saturating_sub(before).min(count),
            now,
        }
    }

    /// Receipts waiting now.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("deletes lock").receipts.len()
    }

    /// Deletes pending receipts from `queue` once the oldest has waited twice `delay` (no
    /// batch took them along after `delay`), until `stop`; then stops deferring and deletes
    /// whatever is left. Deferring starts when this starts, unless `delay` is zero.
    pub async fn flush_until<Q: Queue>(
        self: Arc<Self>,
        queue: Q,
        retry: Retry,
        delay: Duration,
        stop: CancellationToken,
    ) {
        if delay.is_zero() {
            return;
        }
        self.pending.lock().expect("deletes lock").delay = Some(delay);
        loop {
            let notified = self.wake.notified();
            let since = self.pending.lock().expect("deletes lock").since;
            let wait = async {
                match since {
                    Some(since) => tokio::time::sleep_until(since + 2 * delay).await,
                    None => notified.await,
                }
            };
            tokio::select! {
                () = wait => {
                    if since.is_some() {
                        self.flush(&queue, &retry, false).await;
                    }
                }
                () = stop.cancelled() => break,
            }
        }
        self.flush(&queue, &retry, true).await;
    }

    /// Deletes every pending receipt (`last`: and defers nothing from now on).
    async fn flush<Q: Queue>(&self, queue: &Q, retry: &Retry, last: bool) {
        let receipts = {
            let mut pending = self.pending.lock().expect("deletes lock");
            if last {
                pending.delay = None;
            }
            pending.since = None;
            std::mem::take(&mut pending.receipts)
        };
        if receipts.is_empty() {
            return;
        }
        let refs: Vec<&str> = receipts.iter().map(String::as_str).collect();
        let deleted = delete_all(queue, &refs, retry).await;
        // The gauge counts a delete as waiting until its call returned, and the step counted
        // none of these as deleted: they count now, as made or left for redelivery.
        crate::instruments::deletes_pending(self.pending());
        crate::instruments::messages_finished(deleted, 0, receipts.len() - deleted);
        tracing::debug!(
            deleted,
            undeleted = receipts.len() - deleted,
            "deferred deletes flushed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::{MemoryQueue, Op};

    fn receipts(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    }

    fn retry() -> Retry {
        Retry {
            attempts: 3,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn without_a_flusher_or_with_no_delay_every_receipt_is_deleted_at_once() {
        let idle = DeferredDeletes::default();
        assert_eq!(idle.defer(receipts("a", 3)).now, receipts("a", 3));
        let off = Arc::new(DeferredDeletes::default());
        let queue = MemoryQueue::new("in");
        let stop = CancellationToken::new();
        Arc::clone(&off)
            .flush_until(queue, retry(), Duration::ZERO, stop)
            .await;
        assert_eq!(off.defer(receipts("b", 3)).now, receipts("b", 3));
        assert_eq!((idle.pending(), off.pending()), (0, 0));
    }

    #[test]
    fn whole_sets_of_ten_go_at_once_and_the_rest_waits() {
        let d = DeferredDeletes::default();
        d.pending.lock().unwrap().delay = Some(Duration::from_millis(200));
        let a = d.defer(receipts("a", 4));
        assert!(a.now.is_empty());
        assert_eq!(a.waiting, 4);
        assert!(d.defer(receipts("b", 4)).now.is_empty());
        let c = d.defer(receipts("c", 5));
        assert_eq!(c.now.len(), 10, "the first ten, oldest first");
        assert_eq!(c.now[0], "a-0");
        assert_eq!(c.waiting, 3, "two of c's five went with a's and b's");
        assert_eq!(d.pending(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_after_the_delay_takes_every_waiting_receipt_into_its_own_delete() {
        let d = DeferredDeletes::default();
        d.pending.lock().unwrap().delay = Some(Duration::from_millis(200));
        assert!(d.defer(receipts("a", 2)).now.is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(d.defer(receipts("b", 1)).now.is_empty(), "not due yet");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = d.defer(receipts("c", 1));
        assert_eq!(
            c.now,
            ["a-0", "a-1", "b-0", "c-0"],
            "due: all four, oldest first"
        );
        assert_eq!(c.waiting, 0);
        assert_eq!(d.pending(), 0);
        assert!(
            d.defer(receipts("d", 1)).now.is_empty(),
            "a new wait starts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_deletes_what_no_batch_took_after_twice_the_delay_and_everything_when_stopped(
    ) {
        let queue = MemoryQueue::new("in");
        for body in ["1", "2", "3", "4"] {
            queue.push(body, None);
        }
        let messages = queue.receive(10, 0).await.unwrap();
        let handles: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let d = Arc::new(DeferredDeletes::default());
        let stop = CancellationToken::new();
        let flusher = tokio::spawn(Arc::clone(&d).flush_until(
            queue.clone(),
            retry(),
            Duration::from_millis(200),
            stop.clone(),
        ));
        tokio::task::yield_now().await;

        assert!(d.defer(handles[..2].to_vec()).now.is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(d.defer(handles[2..3].to_vec()).now.is_empty());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            queue.calls(Op::Delete),
            0,
            "a batch would take them along after 200 ms; the flusher waits 400"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(queue.calls(Op::Delete), 1, "one call for the three");
        assert_eq!(queue.deleted().len(), 3);
        assert_eq!(d.pending(), 0);

        assert!(d.defer(handles[3..].to_vec()).now.is_empty());
        stop.cancel();
        flusher.await.unwrap();
        assert_eq!(queue.deleted().len(), 4, "the stop flushes what waits");
        assert_eq!(
            d.defer(vec!["late".into()]).now,
            vec!["late".to_owned()],
            "after the stop the caller deletes"
        );
    }
}
