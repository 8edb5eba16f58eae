//! ECS task scale-in protection: while the worker holds messages, autoscaling must not pick
//! its task to stop. The ECS agent's endpoint (`$ECS_AGENT_URI/task-protection/v1/state`)
//! turns protection on with an expiry, renewed while work goes on, and off once the worker has
//! been idle for a short grace period.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::WorkerState;

/// How long one protection request lasts; renewed well before it runs out.
pub const EXPIRES: Duration = Duration::from_secs(15 * 60);
/// Renew when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Idle this long before protection is turned off.
pub const IDLE_GRACE: Duration = Duration::from_secs(10);
/// How often the in-flight count is looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// What to ask the agent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Protect the task for [`EXPIRES`].
    Enable,
    /// Let the task be scaled in.
    Disable,
}

/// Protection state, fed the in-flight count on every tick.
#[derive(Debug, Default)]
pub struct Protection {
    until: Option<Instant>,
    idle_since: Option<Instant>,
}

impl Protection {
    /// The request to make now, if any.
    pub fn decide(&mut self, in_flight: usize, now: Instant) -> Option<Action> {
        if in_flight > 0 {
            self.idle_since = None;
            let renew = self
                .until
                .is_none_or(|until| until.saturating_duration_since(now) < RENEW_BEFORE);
            return renew.then_some(Action::Enable);
        }
        let idle_since = *self.idle_since.get_or_insert(now);
        (self.until.is_some() && now.duration_since(idle_since) >= IDLE_GRACE)
            .then_some(Action::Disable)
    }

    /// Records that the agent accepted `action` at `now`.
    pub fn applied(&mut self, action: Action, now: Instant) {
        self.until = match action {
            Action::Enable => Some(now + EXPIRES),
            Action::Disable => None,
        };
    }
}

/// Keeps the task protected while `state` has messages in hand, until `stop` is cancelled.
pub async fn run(agent_uri: String, state: Arc<WorkerState>, stop: CancellationToken) {
    let url = format!(
        "{}/task-protection/v1/state",
        agent_uri.trim_end_matches('/')
    );
    let mut protection = Protection::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let Some(action) = protection.decide(state.in_flight(), now) else {
            continue;
        };
        match put(&url, action).await {
            Ok(()) => {
                protection.applied(action, now);
                tracing::info!(?action, "ECS task protection updated");
            }
            Err(e) => {
                tracing::warn!(
                    ?action,
                    error = format!("{e:#}"),
                    "ECS task protection not updated; retrying in 30 s"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}

async fn put(url: &str, action: Action) -> anyhow::Result<()> {
    let body = match action {
        Action::Enable => serde_json::json!({
            "ProtectionEnabled": true,
            "ExpiresInMinutes": EXPIRES.as_secs() / 60,
        }),
        Action::Disable => serde_json::json!({"ProtectionEnabled": false}),
    };
    let reply =
        crate::http::request("PUT", url, Some(body.to_string()), Duration::from_secs(5)).await?;
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    anyhow::ensure!(
        reply.status == 200 && answer.get("protection").is_some(),
        "the ECS agent answered {}: {}",
        reply.status,
        reply.body
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn protected_while_busy_renewed_before_expiry_released_after_idle_grace() {
        let mut p = Protection::default();
        let t0 = Instant::now();
        assert_eq!(p.decide(0, t0), None, "idle and unprotected: nothing to do");
        assert_eq!(p.decide(3, t0), Some(Action::Enable));
        p.applied(Action::Enable, t0);
        assert_eq!(p.decide(3, t0 + Duration::from_secs(60)), None);
        let renew_at = t0 + EXPIRES - RENEW_BEFORE + Duration::from_secs(1);
        assert_eq!(p.decide(1, renew_at), Some(Action::Enable));
        p.applied(Action::Enable, renew_at);
        let idle = renew_at + Duration::from_secs(5);
        assert_eq!(p.decide(0, idle), None, "grace period starts");
        assert_eq!(p.decide(0, idle + IDLE_GRACE / 2), None);
        assert_eq!(p.decide(2, idle + IDLE_GRACE / 2), None, "busy again");
        let idle = idle + IDLE_GRACE;
        assert_eq!(p.decide(0, idle), None);
        assert_eq!(p.decide(0, idle + IDLE_GRACE), Some(Action::Disable));
        p.applied(Action::Disable, idle + IDLE_GRACE);
        assert_eq!(p.decide(0, idle + IDLE_GRACE * 3), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_request_is_asked_again() {
        let mut p = Protection::default();
        let t0 = Instant::now();
        assert_eq!(p.decide(1, t0), Some(Action::Enable));
        // Not applied (the agent refused): the next tick asks again.
        assert_eq!(p.decide(1, t0 + TICK), Some(Action::Enable));
    }
}
