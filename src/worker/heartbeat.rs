//! The visibility heartbeat: while a batch is in hand, its messages' visibility is extended
//! before it runs out, so a slow batch is never handed to a second worker.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::queue::SqsQueue;

/// Extends visibility until dropped.
#[derive(Debug)]
pub struct Heartbeat {
    task: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Every `fraction` of `visibility_secs`, resets the messages' visibility to `visibility_secs`.
    pub fn start(
        queue: SqsQueue,
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
                for chunk in receipts.chunks(10) {
                    let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                    match queue.extend_visibility(&refs, visibility_secs).await {
                        Ok(failed) if failed.is_empty() => {}
                        Ok(failed) => tracing::warn!(
                            failed = failed.len(),
                            "visibility not extended for some messages"
                        ),
                        Err(e) => tracing::warn!(error = %e, "visibility heartbeat failed"),
                    }
                }
                tracing::debug!(
                    messages = receipts.len(),
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
