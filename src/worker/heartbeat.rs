//! The visibility heartbeat: while a batch is in hand, its messages' visibility is extended
//! before it runs out, so a slow batch is never handed to a second worker.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::queue::delivery::change_visibility_all;
use crate::queue::Queue;

/// Extends visibility until dropped.
#[derive(Debug)]
pub struct Heartbeat {
    task: Option<JoinHandle<()>>,
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
            return Self { task: None };
        }
        let period = Duration::from_secs_f64(
            (f64::from(visibility_secs) * fraction.clamp(0.05, 0.9)).max(0.5),
        );
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let extended = change_visibility_all(&queue, &receipts, visibility_secs).await;
                tracing::debug!(
                    messages = receipts.len(),
                    extended,
                    visibility_secs,
                    "visibility extended"
                );
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
