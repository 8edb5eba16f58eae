//! The visibility heartbeat: while a batch is in hand, its messages' visibility is extended
//! before it runs out, so a slow batch is never handed to a second worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::queue::delivery::change_visibility_all;
use crate::queue::Queue;

/// Restarts a heartbeat on some receipts.
type Restart = Arc<dyn Fn(Vec<String>, bool) -> JoinHandle<()> + Send + Sync>;

/// Extends visibility until dropped.
pub struct Heartbeat {
    task: Option<JoinHandle<()>>,
    receipts: Vec<String>,
    restart: Option<Restart>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("messages", &self.receipts.len())
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl Heartbeat {
    /// Every `fraction` of `visibility_secs`, resets the messages' visibility to `visibility_secs`.
    pub fn start<Q: Queue + 'static>(
        queue: Q,
        receipts: Vec<String>,
        visibility_secs: i32,
        fraction: f64,
    ) -> Self {
        if receipts.is_empty() || visibility_secs <= 0 {
            return Self {
                task: None,
                receipts,
                restart: None,
            };
        }
        let period = Duration::from_secs_f64(
            (f64::from(visibility_secs) * fraction.clamp(0.05, 0.9)).max(0.5),
        );
        let queue = Arc::new(queue);
        let restart: Restart = Arc::new(move |receipts: Vec<String>, now: bool| {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                if !now {
                    ticker.tick().await;
                }
                loop {
                    ticker.tick().await;
                    let extended = change_visibility_all(&*queue, &receipts, visibility_secs).await;
                    tracing::debug!(
                        messages = receipts.len(),
                        extended,
                        visibility_secs,
                        "visibility extended"
                    );
                }
            })
        });
        Self {
            task: Some(restart(receipts.clone(), false)),
            receipts,
            restart: Some(restart),
        }
    }

    /// Splits off the messages whose receipt handles are in `rest`, with a heartbeat of their
    /// own: a poll's messages can then end in two batches, each releasing its own when its step
    /// returns. Both extend visibility at once, since the split restarts their period.
    pub fn split_off_receipts(&mut self, rest: &[String]) -> Self {
        let (rest, kept): (Vec<String>, Vec<String>) = std::mem::take(&mut self.receipts)
            .into_iter()
            .partition(|r| rest.contains(r));
        self.receipts = kept;
        self.split_into(rest)
    }

    /// Restarts this heartbeat on its receipts and starts one on `rest`.
    fn split_into(&mut self, rest: Vec<String>) -> Self {
        let Some(restart) = self.restart.clone() else {
            return Self {
                task: None,
                receipts: rest,
                restart: None,
            };
        };
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let start = |receipts: &Vec<String>| {
            (!receipts.is_empty()).then(|| restart(receipts.clone(), true))
        };
        self.task = start(&self.receipts);
        Self {
            task: start(&rest),
            receipts: rest,
            restart: Some(restart),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
