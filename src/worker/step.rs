//! One step: dead-letter what cannot be read, prepare one batch, predict it in one model call,
//! send one answer per bundle, and delete each input only after its answer was accepted.
//!
//! [`Worker::process`] reads as its sub-steps; each returns what the next needs and adds what
//! it did to the [`StepReport`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array2;
use tokio::sync::oneshot;

use super::aggregates;
use super::dead_letter::dead_letter_copy;
use super::deletes::Deferral;
use super::groups::{held_in_group_order, GroupOrder, Held};
use super::service::Worker;
use crate::batch::{prepare, BatchCoverage, PreparedBatch, Slot};
use crate::bundle::compression::CONTENT_ENCODING_ATTRIBUTE;
use crate::bundle::{answers, decode, Answer, ContentEncoding, DecodeError, InputBundle};
use crate::enrich::{DocumentSource, ReferenceSource};
use crate::learning::prediction_log::{capture, LogBatch, LoggedBundle, ModelFacts};
use crate::model::holder::LoadedModel;
use crate::monitor::shadow::{ShadowJob, ShadowScores};
use crate::monitor::Monitor;
use crate::payload::pointer::PayloadPointer;
use crate::payload::Fetched;
use crate::queue::{
    delete_all, send_all, send_in_group_order, Message, Outgoing, Queue, BUNDLE_ID_ATTRIBUTE,
};
use crate::text::truncate_chars;

/// A received message and what decoding made of it.
#[derive(Debug)]
pub struct Received {
    /// The SQS message.
    pub message: Message,
    /// The bundle, or why it cannot be read.
    pub bundle: Result<InputBundle, DecodeError>,
    /// Its offloaded payload could not be read now (S3 refused or did not answer): the message
    /// is left for redelivery, not dead-lettered.
    pub payload_failed: Option<String>,
}

impl Received {
    /// Records it holds (0 when unreadable), for batch sizing.
    pub fn records(&self) -> usize {
        self.bundle.as_ref().map_or(0, InputBundle::len)
    }

    /// Values it holds (0 when unreadable), for batch sizing.
    pub fn cells(&self) -> usize {
        self.bundle.as_ref().map_or(0, InputBundle::cells)
    }
}

/// Why a step left its whole batch for redelivery: retrying later can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retryable {
    /// An enrichment source did not answer.
    SourceUnavailable {
        /// `postgres` or `mongo`.
        source: &'static str,
        /// What its client reported, with the causes.
        reason: String,
    },
}

impl std::fmt::Display for Retryable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retryable::SourceUnavailable { reason, .. } => f.write_str(reason),
        }
    }
}

/// What one step did; the loop uses it for back-off and the tests read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Messages handled.
    pub messages: usize,
    /// Records in the readable bundles.
    pub records: usize,
    /// Records predicted.
    pub predicted: usize,
    /// Records answered with an error.
    pub record_errors: usize,
    /// Answers accepted by the output queue.
    pub answered: usize,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: usize,
    /// Input messages deleted.
    pub deleted: usize,
    /// Answered input messages whose delete waits to go with other batches' deletes
    /// ([`super::deletes`]); counted as deleted (or left) when that delete is made.
    pub deferred: usize,
    /// Input messages left for SQS to redeliver.
    pub left: usize,
    /// The model version used.
    pub model_version: Option<u64>,
    /// A dependency that failed: the batch was left undeleted and the loop backs off.
    pub retryable: Option<Retryable>,
    /// Milliseconds per stage.
    pub timing_ms: BTreeMap<String, f64>,
    /// Record errors by kind (`enrich.mongo: unknown note`).
    pub error_kinds: BTreeMap<String, u64>,
    /// What each enrichment source and provider could serve.
    pub coverage: BatchCoverage,
    /// Per answered bundle: milliseconds from its SentTimestamp to its answer being accepted.
    pub bundle_age_ms: Vec<f64>,
}

impl StepReport {
    /// Records the step's metrics (one place for every figure of a step).
    pub fn record_metrics(&self) {
        use crate::instruments as m;
        m::messages_finished(self.deleted, self.dead_lettered, self.left);
        if self.retryable.is_some() {
            m::batch_retried();
        }
        m::batch_predicted(self.records, self.predicted);
        for (kind, count) in &self.error_kinds {
            m::record_errors(kind, *count);
        }
        let c = &self.coverage;
        for (source, coverage) in [("postgres", c.postgres), ("mongo", c.mongo)] {
            m::enrichment(source, coverage.hits, coverage.misses);
        }
        for (provider, coverage) in &c.providers {
            m::provider_enrichment(provider, coverage.hits, coverage.misses);
        }
        for (stage, ms) in &self.timing_ms {
            m::stage_time(stage, ms / 1e3);
        }
        m::bundle_ages(self.bundle_age_ms.iter().map(|ms| ms / 1e3));
    }
}

/// Decodes received messages with the worker's limits.
pub fn decode_all(messages: Vec<Message>, limits: &crate::bundle::Limits) -> Vec<Received> {
    messages
        .into_iter()
        .map(|message| Received::decode(message, limits))
        .collect()
}

impl Received {
    /// Decodes one message.
    pub fn decode(message: Message, limits: &crate::bundle::Limits) -> Self {
        let bundle = decode(&message.body, message.content_encoding.as_deref(), limits);
        Received {
            message,
            bundle,
            payload_failed: None,
        }
    }

    /// Decodes one message whose body may be offloaded: the payload read from S3 is decoded
    /// as its body would be (same limits, its `content-encoding`); a payload that is missing,
    /// too large or not text makes the bundle unreadable, with the reason.
    pub fn decode_fetched(
        message: Message,
        payload: Fetched,
        limits: &crate::bundle::Limits,
    ) -> Self {
        let unreadable = |reason: String| DecodeError {
            bundle_id: None,
            reason,
        };
        match payload {
            None => Self::decode(message, limits),
            Some(Ok(payload)) => {
                let bundle = decode(&payload, message.content_encoding.as_deref(), limits);
                Received {
                    message,
                    bundle,
                    payload_failed: None,
                }
            }
            Some(Err(e)) => {
                let reason = crate::text::error_chain(&e);
                Received {
                    message,
                    bundle: Err(unreadable(reason.clone())),
                    payload_failed: e.is_retryable().then_some(reason),
                }
            }
        }
    }
}

/// The first wait before trying held bundles again; it doubles up to [`HOLD_RETRY_MAX`].
const HOLD_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest wait between tries of held bundles: they are answered within about this long
/// of their source's return.
const HOLD_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// How soon held bundles left for redelivery become visible again, in seconds.
const REDELIVERY_DELAY_SECS: i32 = 5;

/// Splits off the bundles whose records wait for a source that was down, with their messages,
/// and on a FIFO queue the later bundles of their message groups too; the ready ones keep their
/// plans (their matrix rows are unchanged).
fn hold_back(readable: Readable, prepared: &mut PreparedBatch, fifo: bool) -> (Readable, Readable) {
    let waiting = prepared.waiting();
    if !waiting.contains(&true) {
        return (readable, Readable::default());
    }
    let groups: Vec<Option<&str>> = readable
        .messages
        .iter()
        .map(|m| m.group_id.as_deref())
        .collect();
    let held_back: Vec<bool> = held_in_group_order(&groups, &waiting, fifo)
        .into_iter()
        .map(|h| h != Held::Ready)
        .collect();
    let mut ready = Readable::default();
    let mut held = Readable::default();
    let plans = std::mem::take(&mut prepared.plans);
    let bundles = readable.messages.into_iter().zip(readable.bundles);
    for (((message, bundle), plan), wait) in bundles.zip(plans).zip(held_back) {
        let into = if wait {
            &mut held
        } else {
            prepared.plans.push(plan);
            &mut ready
        };
        into.messages.push(message);
        into.bundles.push(bundle);
    }
    (ready, held)
}

/// What [`Worker::answer`] made of a predicted batch.
struct Answered {
    /// Each answer with its input message.
    to_send: Vec<(Message, Answer)>,
    /// The answers' messages, in the same order.
    outgoing: Vec<Outgoing>,
    /// The same answers' logged records, when their bundle is logged.
    to_log: Vec<Option<LoggedBundle>>,
    /// The shadow's scores of logged records, when some are shadowed.
    shadow_scored: Option<oneshot::Receiver<ShadowScores>>,
}

/// Leaves for redelivery the bundles behind a stop of their FIFO message group: an earlier
/// bundle of the group was not answered in this step, and they may not overtake it. They come
/// back with their visibility timeout, as it does.
fn leave_behind(readable: Readable, order: &GroupOrder, report: &mut StepReport) -> Readable {
    let mut kept = Readable::default();
    let mut left = 0;
    for (message, bundle) in readable.messages.into_iter().zip(readable.bundles) {
        if order.is_behind_a_stop(&message) {
            left += 1;
        } else {
            kept.messages.push(message);
            kept.bundles.push(bundle);
        }
    }
    if left > 0 {
        tracing::warn!(
            left,
            "bundles behind an unanswered bundle of their message group left for redelivery"
        );
        report.left += left;
    }
    kept
}

/// Drops the answers behind a stop of their FIFO message group (see [`leave_behind`]).
fn drop_behind(answered: Answered, order: &GroupOrder, report: &mut StepReport) -> Answered {
    let mut kept = Answered {
        to_send: Vec::with_capacity(answered.to_send.len()),
        outgoing: Vec::with_capacity(answered.to_send.len()),
        to_log: Vec::with_capacity(answered.to_send.len()),
        shadow_scored: answered.shadow_scored,
    };
    let mut behind = 0;
    let all = answered
        .to_send
        .into_iter()
        .zip(answered.outgoing)
        .zip(answered.to_log);
    for ((sent, out), log) in all {
        if order.is_behind_a_stop(&sent.0) {
            behind += 1;
        } else {
            kept.to_send.push(sent);
            kept.outgoing.push(out);
            kept.to_log.push(log);
        }
    }
    if behind > 0 {
        tracing::warn!(
            left = behind,
            "answers behind an unanswered bundle of their message group not sent; left for redelivery"
        );
        report.left += behind;
    }
    kept
}

/// A bundle refused as a whole, with the stage that refused it; it goes to the dead-letter queue.
type Refused = (Message, DecodeError, &'static str);

/// The readable bundles of a batch, beside their messages.
#[derive(Default)]
struct Readable {
    messages: Vec<Message>,
    bundles: Vec<InputBundle>,
}

/// A message whose offloaded payload S3 could not serve now, with the reason.
type Unavailable = (Message, String);

/// Splits a batch into readable bundles, refused messages, and messages whose payload could
/// not be read now.
fn split_readable(batch: Vec<Received>) -> (Readable, Vec<Refused>, Vec<Unavailable>) {
    let mut readable = Readable {
        messages: Vec::with_capacity(batch.len()),
        bundles: Vec::with_capacity(batch.len()),
    };
    let mut refused = Vec::new();
    let mut unavailable = Vec::new();
    for received in batch {
        let message = received.message;
        match (received.bundle, received.payload_failed) {
            (_, Some(reason)) => unavailable.push((message, reason)),
            (Ok(bundle), None) => {
                readable.messages.push(message);
                readable.bundles.push(bundle);
            }
            (Err(e), None) => refused.push((message, e, "decode")),
        }
    }
    (readable, refused, unavailable)
}

/// What the model call made of a batch, before large answers go to S3: each answer with its
/// input, its message as fitted, and its logged records, in the same order.
#[derive(Default)]
struct Predicted {
    answered: Vec<(Message, Answer)>,
    fitted: Vec<Fitted>,
    to_log: Vec<Option<LoggedBundle>>,
    shadow_scored: Option<oneshot::Receiver<ShadowScores>>,
}

/// An answer's message: within the inline limit, or too large in every encoding (with why).
enum Fitted {
    /// Sent as it is.
    Inline(Outgoing),
    /// Its body goes to S3 and a pointer is sent instead, when a payload bucket is set.
    Large(Outgoing, String),
}

impl<R: ReferenceSource, D: DocumentSource, Q: Queue> Worker<R, D, Q> {
    /// Processes one batch of received messages end to end. Bundles whose records wait for a
    /// source that is down are held in hand (still invisible to other consumers) and tried
    /// again every second or so, while every other bundle is answered at once; they are left
    /// for redelivery only after `outage_hold`, or when the worker stops.
    ///
    /// On a FIFO input queue the bundles of one message group are answered in the order
    /// received: the later bundles of a group wait with a held one, and once one is not
    /// answered in this step, its group's later bundles are left for redelivery with it
    /// ([`GroupOrder`]); the other groups go on.
    pub async fn process(&self, batch: Vec<Received>) -> StepReport {
        let started = Instant::now();
        let mut report = StepReport {
            messages: batch.len(),
            ..StepReport::default()
        };
        let mut order = GroupOrder::new(self.input.is_fifo(), batch.iter().map(|r| &r.message));
        let (mut readable, refused, unavailable) = split_readable(batch);
        report.records = readable.bundles.iter().map(InputBundle::len).sum();
        self.dead_letter(refused, &mut order, &mut report).await;
        let tired = self
            .leave_unavailable(unavailable, &mut order, &mut report)
            .await;
        self.dead_letter(tired, &mut order, &mut report).await;
        // One model for the whole batch, even if a new version is swapped in meanwhile.
        let model = self.models.current();
        report.model_version = Some(model.version);
        let held_since = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            readable = leave_behind(readable, &order, &mut report);
            let mut prepared = self.prepare(&model, &readable.bundles, &mut report).await;
            let outage = prepared.outage();
            let (ready, waiting) = hold_back(readable, &mut prepared, order.is_fifo());
            if !ready.messages.is_empty() {
                self.finish(&model, ready, prepared, started, &mut order, &mut report)
                    .await;
            }
            let Some((source, reason)) = outage.filter(|_| !waiting.messages.is_empty()) else {
                break;
            };
            if attempt == 0 {
                tracing::warn!(
                    source,
                    error = %reason,
                    held = waiting.messages.len(),
                    "enrichment source unavailable; holding the bundles that need it and trying again"
                );
            }
            if let Some(stopping) = self.keep_holding(held_since, attempt).await {
                let tired = self
                    .leave_for_redelivery(source, &reason, stopping, waiting, &mut report)
                    .await;
                self.dead_letter(tired, &mut order, &mut report).await;
                break;
            }
            attempt += 1;
            readable = waiting;
        }
        report
    }

    /// Answers the ready bundles of a prepared batch: predict, send, delete, log, aggregates.
    async fn finish(
        &self,
        model: &LoadedModel,
        readable: Readable,
        prepared: PreparedBatch,
        started: Instant,
        order: &mut GroupOrder,
        report: &mut StepReport,
    ) {
        let coverage = prepared.coverage.clone();
        let mut refused = Vec::new();
        let predicted = self.answer(model, readable, prepared, started, &mut refused, report);
        let answered = self.offload_large(predicted, &mut refused, report).await;
        // An answer that could not go to S3 is left for redelivery: its group waits too.
        self.dead_letter(refused, order, report).await;
        // A refused bundle whose dead-letter copy was not accepted stays: its group waits.
        let Answered {
            to_send,
            outgoing,
            to_log,
            shadow_scored,
        } = drop_behind(answered, order, report);
        if let Some(hook) = &self.hooks.before_send {
            hook().await;
        }
        let accepted = self.send_answers(outgoing, order.is_fifo(), report).await;
        for (i, (message, _)) in to_send.iter().enumerate() {
            if accepted.binary_search(&i).is_err() {
                order.stop(message);
            }
        }
        let all_deleted = self
            .delete_answered(&to_send, &accepted, order.is_fifo(), report)
            .await;
        // Only once every answered input is gone: an input left undeleted comes back, and must
        // still find its payload (its answer then repeats, as any redelivery's does).
        if let Some(payloads) = self.payloads.as_ref().filter(|_| all_deleted) {
            payloads
                .delete_answered(accepted.iter().map(|&i| &to_send[i].0))
                .await;
        }
        log_answered(&to_send, &accepted, model.version, report);
        self.log_predictions(model, to_log, shadow_scored, &accepted);
        self.record_aggregates(model, &to_send, &accepted, &coverage)
            .await;
    }

    /// Waits before the next try of held bundles. Returns `Some(stopping)` when holding ends
    /// instead: the hold time is used up (`false`) or the worker is stopping (`true`).
    async fn keep_holding(&self, started: tokio::time::Instant, attempt: u32) -> Option<bool> {
        self.state.beat();
        if started.elapsed() >= self.config.outage_hold {
            return Some(false);
        }
        let delay = crate::queue::delivery::backoff(attempt, HOLD_RETRY_FIRST, HOLD_RETRY_MAX)
            .min(self.config.outage_hold.saturating_sub(started.elapsed()));
        tokio::select! {
            () = self.state.stopping.cancelled() => Some(true),
            () = tokio::time::sleep(delay) => None,
        }
    }

    /// Standardizes, enriches and normalizes the readable bundles into one matrix.
    async fn prepare(
        &self,
        model: &LoadedModel,
        bundles: &[InputBundle],
        report: &mut StepReport,
    ) -> PreparedBatch {
        let prepared = prepare(&model.artifact.spec, bundles, &self.enricher).await;
        report.timing_ms.extend(prepared.timing_ms.clone());
        report.coverage = prepared.coverage.clone();
        prepared
    }

    /// A source stayed down for the whole hold (or the worker is stopping): the held bundles
    /// are made visible again soon (at once when stopping, so another worker takes them), not
    /// after the whole visibility timeout, and the loop backs off. A message already received
    /// `max_receives` times is returned instead, to be dead-lettered with the reason before
    /// SQS's redrive would move it without one.
    async fn leave_for_redelivery(
        &self,
        source: &'static str,
        reason: &str,
        stopping: bool,
        readable: Readable,
        report: &mut StepReport,
    ) -> Vec<Refused> {
        tracing::warn!(
            source,
            error = %reason,
            messages = readable.messages.len(),
            stopping,
            "enrichment source still unavailable; bundles left for redelivery"
        );
        let max = self.config.max_receives;
        let mut tired = Vec::new();
        let mut waiting = Vec::new();
        let mut heads: std::collections::HashMap<String, String> = Default::default();
        for (message, bundle) in readable.messages.into_iter().zip(&readable.bundles) {
            // On a FIFO queue, the first held bundle of its group, when this one is a later one.
            let ahead = message.group_id.as_ref().and_then(|group| {
                let head = heads
                    .entry(group.clone())
                    .or_insert_with(|| bundle.id().to_owned());
                (head != bundle.id()).then(|| head.clone())
            });
            if max > 0 && message.receive_count >= max && !stopping {
                let why_unavailable = match &ahead {
                    None => format!("{source} was unavailable ({reason})"),
                    Some(head) => format!("{source} was unavailable ({reason}) for it or for bundle {head} ahead of it in its message group"),
                };
                let why = DecodeError {
                    bundle_id: Some(bundle.id().to_owned()),
                    reason: format!(
                        "left unanswered on {} receives because {why_unavailable}; dead-lettered by the worker before the queue's redrive would move it without a reason: send it again once {source} is back",
                        message.receive_count,
                    ),
                };
                tired.push((message, why, "enrich"));
            } else {
                waiting.push(message);
            }
        }
        let delay = if stopping { 0 } else { REDELIVERY_DELAY_SECS };
        // A group's bundles come back together, never a later one before its first: SQS hands
        // out a group's messages in order, and a later one coming back after the first could
        // be handed to another batch by an emulator that does not lock groups (LocalStack).
        let receipts: Vec<String> = waiting.iter().map(|m| m.receipt_handle.clone()).collect();
        crate::queue::delivery::change_visibility_all(&self.input, &receipts, delay).await;
        report.retryable = Some(Retryable::SourceUnavailable {
            source,
            reason: reason.to_owned(),
        });
        report.left += waiting.len();
        tired
    }

    /// Predicts the batch in one model call and builds one answer per readable bundle, with its
    /// message; bundles the spec refuses, and answers too large to send, join `refused`.
    fn answer(
        &self,
        model: &LoadedModel,
        readable: Readable,
        mut prepared: PreparedBatch,
        started: Instant,
        refused: &mut Vec<Refused>,
        report: &mut StepReport,
    ) -> Predicted {
        // The canonical features outlive the model call only when some bundle is logged.
        let log_mode = self.prediction_log.as_ref().map(|l| l.mode());
        let logged_matrix = log_mode
            .filter(|mode| readable.bundles.iter().any(|b| mode.keeps(b.id())))
            .map(|_| prepared.matrix.clone());
        let monitor = self.monitor.as_deref();
        if let Some(monitor) = monitor {
            monitor.observe(model, prepared.matrix.view());
        }
        let shadowed = monitor.and_then(|m| shadow_rows(m, model, &readable.bundles, &prepared));
        let t = Instant::now();
        let scores = model
            .classifier
            .decision_values(std::mem::take(&mut prepared.matrix));
        report.timing_ms.insert("predict".into(), ms(t));
        // A logged row that is shadowed too: its place among the shadowed rows, by matrix row.
        let mut shadow_place: Vec<Option<u32>> = Vec::new();
        let mut shadow_scored = None;
        if let (Some(shadow), Some((shadow_model, rows, x))) =
            (monitor.and_then(Monitor::shadow), shadowed)
        {
            let share = rows.len() as f64 / scores.len().max(1) as f64;
            let mut job = ShadowJob {
                served_version: model.version,
                x,
                served: rows.iter().map(|&r| scores[r]).collect(),
                served_seconds: t.elapsed().as_secs_f64() * share,
                scored: None,
            };
            if logged_matrix.is_some() {
                shadow_place = vec![None; scores.len()];
                for (place, &row) in rows.iter().enumerate() {
                    shadow_place[row] = Some(place as u32);
                }
                let (tx, rx) = oneshot::channel();
                job.scored = Some(tx);
                shadow_scored = Some(rx);
            }
            shadow.submit(shadow_model, job);
        }
        let mut logged = match (log_mode, &logged_matrix) {
            (Some(mode), Some(x)) => capture(
                mode,
                &readable.bundles,
                &prepared.plans,
                x,
                &scores,
                &shadow_place,
            ),
            _ => Vec::new(),
        };
        logged.resize(readable.bundles.len(), None);
        for plan in prepared.plans.iter().flatten() {
            for slot in &plan.slots {
                if let Slot::Failed(e) = slot {
                    report.record_errors += 1;
                    *report.error_kinds.entry(e.kind()).or_default() += 1;
                }
            }
        }
        let mut timing = report.timing_ms.clone();
        timing.insert("total".into(), ms(started));
        let version = model.version.to_string();
        let spec = &model.artifact.spec;
        let results = answers(
            spec,
            &readable.bundles,
            prepared,
            &scores,
            &version,
            &timing,
        );
        let mut predicted = Predicted {
            shadow_scored,
            ..Predicted::default()
        };
        for ((message, result), logged) in readable.messages.into_iter().zip(results).zip(logged) {
            let answer = match result {
                Ok(answer) => answer,
                Err(e) => {
                    refused.push((message, e, "prepare"));
                    continue;
                }
            };
            let limit = self.inline_limit();
            predicted.fitted.push(answer_message(
                &message,
                &answer,
                self.config.output_encoding,
                limit,
            ));
            predicted.answered.push((message, answer));
            predicted.to_log.push(logged);
        }
        predicted
    }

    /// The largest answer message sent inline: the message size limit, or the payload
    /// threshold when it is lower.
    fn inline_limit(&self) -> usize {
        let limit = self.config.max_message_bytes;
        self.payloads
            .as_ref()
            .map_or(limit, |p| p.inline_limit(limit))
    }

    /// Writes the answers too large for one message to S3 and sends pointers to them in their
    /// place, in order. Without a payload bucket such an answer is refused with its size; when
    /// the write fails, its input is left for redelivery.
    async fn offload_large(
        &self,
        predicted: Predicted,
        refused: &mut Vec<Refused>,
        report: &mut StepReport,
    ) -> Answered {
        let n = predicted.answered.len();
        let mut to_send = Vec::with_capacity(n);
        let mut outgoing = Vec::with_capacity(n);
        let mut to_log = Vec::with_capacity(n);
        let all = predicted
            .answered
            .into_iter()
            .zip(predicted.fitted)
            .zip(predicted.to_log);
        for (((message, answer), fitted), logged) in all {
            let (large, why) = match fitted {
                Fitted::Inline(out) => {
                    outgoing.push(out);
                    to_send.push((message, answer));
                    to_log.push(logged);
                    continue;
                }
                Fitted::Large(large, why) => (large, why),
            };
            let bytes = large.body.len();
            let offloaded = match &self.payloads {
                Some(payloads) => payloads.offload(large).await,
                None => None,
            };
            match offloaded {
                Some(Ok(pointer)) => {
                    tracing::info!(
                        bundle_id = answer.bundle_id(),
                        bytes,
                        body = %pointer.body,
                        "answer too large for one message; written to S3 and sent as a pointer"
                    );
                    outgoing.push(pointer);
                    to_send.push((message, answer));
                    to_log.push(logged);
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        bundle_id = answer.bundle_id(),
                        error = %crate::text::error_chain(&e),
                        "large answer not written to S3; its bundle stays on the queue for redelivery"
                    );
                    report.left += 1;
                }
                None => {
                    let e = DecodeError {
                        bundle_id: Some(answer.bundle_id().to_owned()),
                        reason: why,
                    };
                    refused.push((message, e, "answer"));
                }
            }
        }
        // Rows with a label: not the matrix rows, some of which end as errors (a score that is
        // not a number) or belong to a bundle refused above or left for redelivery.
        report.predicted += to_send
            .iter()
            .map(|(_, answer)| answer.records() - answer.errors())
            .sum::<usize>();
        Answered {
            to_send,
            outgoing,
            to_log,
            shadow_scored: predicted.shadow_scored,
        }
    }

    /// Hands the logged bundles whose answers were accepted to the prediction log's writer
    /// (never waits for it, nor for the shadow's scores of its shadowed records).
    fn log_predictions(
        &self,
        model: &LoadedModel,
        to_log: Vec<Option<LoggedBundle>>,
        shadow_scored: Option<oneshot::Receiver<ShadowScores>>,
        accepted: &[usize],
    ) {
        let Some(log) = &self.prediction_log else {
            return;
        };
        let mut to_log: Vec<Option<LoggedBundle>> = to_log;
        let bundles: Vec<LoggedBundle> = accepted
            .iter()
            .filter_map(|&i| to_log.get_mut(i).and_then(Option::take))
            .collect();
        if bundles.is_empty() {
            return;
        }
        let spec = &model.artifact.spec;
        let facts = log.model_facts(&spec.name, model.version, || ModelFacts {
            name: spec.name.clone(),
            version: model.version,
            features: spec
                .feature_names()
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            classes: model.artifact.class_names.values().cloned().collect(),
        });
        let batch = LogBatch {
            model: facts,
            predicted_at: chrono::Utc::now(),
            bundles,
        };
        match shadow_scored {
            Some(scored) if batch.is_shadowed() => log.submit_with_shadow(batch, scored),
            _ => log.submit(batch),
        }
    }

    /// Messages whose payload S3 could not serve are made visible again soon, and the loop
    /// backs off; one already received `max_receives` times is returned, to be dead-lettered
    /// with the reason instead of going round again.
    async fn leave_unavailable(
        &self,
        unavailable: Vec<Unavailable>,
        order: &mut GroupOrder,
        report: &mut StepReport,
    ) -> Vec<Refused> {
        let Some((_, first)) = unavailable.first() else {
            return Vec::new();
        };
        tracing::warn!(
            error = %first,
            messages = unavailable.len(),
            "Extended Client payloads not readable now; their messages are left for redelivery"
        );
        report.retryable = Some(Retryable::SourceUnavailable {
            source: "s3",
            reason: first.clone(),
        });
        let max = self.config.max_receives;
        let mut tired = Vec::new();
        let mut receipts = Vec::new();
        for (message, reason) in unavailable {
            if max > 0 && message.receive_count >= max {
                let why = DecodeError {
                    bundle_id: None,
                    reason: format!(
                        "its Extended Client payload could not be read on {} receives ({reason}); dead-lettered by the worker before the queue's redrive would move it without a reason",
                        message.receive_count
                    ),
                };
                tired.push((message, why, "decode"));
            } else {
                // Its group's later bundles may not overtake it.
                order.stop(&message);
                receipts.push(message.receipt_handle.clone());
            }
        }
        crate::queue::delivery::change_visibility_all(
            &self.input,
            &receipts,
            REDELIVERY_DELAY_SECS,
        )
        .await;
        report.left += receipts.len();
        tired
    }

    /// Sends the answers' messages, in group order for a FIFO input; returns the indexes
    /// accepted.
    async fn send_answers(
        &self,
        outgoing: Vec<Outgoing>,
        fifo: bool,
        report: &mut StepReport,
    ) -> Vec<usize> {
        let t = Instant::now();
        let count = outgoing.len();
        let (limit, retry) = (self.config.max_message_bytes, self.config.retry());
        let accepted = if fifo {
            send_in_group_order(&self.output, outgoing, limit, &retry).await
        } else {
            send_all(&self.output, outgoing, limit, &retry).await
        };
        report.timing_ms.insert("send".into(), ms(t));
        report.answered += accepted.len();
        report.left += count - accepted.len();
        accepted
    }

    /// Deletes the inputs whose answers were accepted, or leaves their deletes to go with
    /// other batches' ([`super::deletes`]); returns whether every delete it made succeeded.
    async fn delete_answered(
        &self,
        to_send: &[(Message, Answer)],
        accepted: &[usize],
        fifo: bool,
        report: &mut StepReport,
    ) -> bool {
        let t = Instant::now();
        let messages = accepted.iter().map(|&i| &to_send[i].0);
        // A FIFO group's next message waits for this delete, and an S3 payload is deleted only
        // after its message: those go at once. The rest may wait for company.
        let deferrable = !fifo
            && messages
                .clone()
                .all(|m| matches!(PayloadPointer::of(m), Ok(None)));
        let receipts: Vec<String> = messages.map(|m| m.receipt_handle.clone()).collect();
        // Deleting now may take other batches' waiting receipts along, and leave some of these.
        let Deferral { now, waiting } = if deferrable {
            self.state.deletes.defer(receipts)
        } else {
            Deferral::at_once(receipts)
        };
        let refs: Vec<&str> = now.iter().map(String::as_str).collect();
        let deleted = delete_all(&self.input, &refs, &self.config.retry()).await;
        report.deleted += deleted;
        report.deferred += waiting;
        report.left += now.len() - deleted;
        report.timing_ms.insert("delete".into(), ms(t));
        deleted == now.len()
    }

    /// Upserts the prediction aggregates of the accepted answers, when configured.
    async fn record_aggregates(
        &self,
        model: &LoadedModel,
        to_send: &[(Message, Answer)],
        accepted: &[usize],
        coverage: &BatchCoverage,
    ) {
        let Some(pool) = &self.aggregates else {
            return;
        };
        let answered: Vec<&Answer> = accepted.iter().map(|&i| &to_send[i].1).collect();
        let name = &model.artifact.spec.name;
        if let Err(e) = aggregates::record(pool, name, &answered, coverage).await {
            tracing::warn!(error = %crate::text::error_chain(&e), "prediction aggregates not recorded for this batch");
        }
    }

    /// Sends refused bundles to the input's dead-letter queue with the reason, then deletes
    /// them: retrying cannot help. One whose copy was not accepted stays, and stops its group.
    async fn dead_letter(
        &self,
        refused: Vec<Refused>,
        order: &mut GroupOrder,
        report: &mut StepReport,
    ) {
        if refused.is_empty() {
            return;
        }
        let Some(dlq) = &self.dlq else {
            tracing::error!(count = refused.len(), "unreadable bundles but no dead-letter queue configured; they stay on the input queue");
            report.left += refused.len();
            for (message, _, _) in &refused {
                order.stop(message);
            }
            return;
        };
        let version = self.models.current().version;
        let outgoing: Vec<Outgoing> = refused
            .iter()
            .map(|(m, e, stage)| {
                let span = bundle_span(m, e.bundle_id.as_deref().unwrap_or("-"), version, 0);
                span.in_scope(|| tracing::warn!(stage, reason = %e.reason, "bundle refused; sending it to the dead-letter queue"));
                dead_letter_copy(m, e, stage, self.config.max_message_bytes)
            })
            .collect();
        let accepted = send_all(
            dlq,
            outgoing,
            self.config.max_message_bytes,
            &self.config.retry(),
        )
        .await;
        let receipts: Vec<&str> = accepted
            .iter()
            .map(|&i| refused[i].0.receipt_handle.as_str())
            .collect();
        let deleted = delete_all(&self.input, &receipts, &self.config.retry()).await;
        report.deleted += deleted;
        report.left += refused.len() - deleted;
        report.dead_lettered += accepted.len();
        for (i, (message, _, _)) in refused.iter().enumerate() {
            if accepted.binary_search(&i).is_err() {
                order.stop(message);
            }
        }
    }
}

/// One log line per bundle: answered (with its age), or left for redelivery.
fn log_answered(
    to_send: &[(Message, Answer)],
    accepted: &[usize],
    model_version: u64,
    report: &mut StepReport,
) {
    let now_ms = chrono::Utc::now().timestamp_millis() as f64;
    let mut accepted_iter = accepted.iter().peekable();
    for (i, (message, answer)) in to_send.iter().enumerate() {
        let span = bundle_span(message, answer.bundle_id(), model_version, answer.records());
        let _entered = span.enter();
        if accepted_iter.next_if_eq(&&i).is_some() {
            let age_ms = message.sent_timestamp_ms.map(|sent| now_ms - sent as f64);
            report.bundle_age_ms.extend(age_ms);
            tracing::info!(
                errors = answer.errors(),
                age_ms,
                receive_count = message.receive_count,
                "bundle answered"
            );
        } else {
            tracing::warn!("answer not accepted; the bundle stays on the queue for redelivery");
        }
    }
}

/// The shadow model and the rows of the batch it scores (those of the bundles it keeps), copied
/// before the served model's call; None when nothing is shadowed.
fn shadow_rows(
    monitor: &Monitor,
    served: &LoadedModel,
    bundles: &[InputBundle],
    prepared: &PreparedBatch,
) -> Option<(Arc<LoadedModel>, Vec<usize>, Array2<f64>)> {
    let shadow = monitor.shadow()?;
    let model = shadow.model_for(served)?;
    let rows: Vec<usize> = bundles
        .iter()
        .zip(&prepared.plans)
        .filter(|(bundle, _)| shadow.keeps(bundle.id()))
        .filter_map(|(_, plan)| plan.as_ref().ok())
        .flat_map(|plan| {
            plan.slots.iter().filter_map(|slot| match slot {
                Slot::Row { matrix_row } => Some(*matrix_row),
                _ => None,
            })
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let x = prepared.matrix.select(ndarray::Axis(0), &rows);
    Some((model, rows, x))
}

/// The span of one bundle: every log line about it carries these fields.
fn bundle_span(
    message: &Message,
    bundle_id: &str,
    model_version: u64,
    records: usize,
) -> tracing::Span {
    tracing::info_span!(
        "bundle",
        bundle_id = truncate_chars(bundle_id, 200),
        message_id = %message.message_id,
        model_version,
        records
    )
}

/// Encodes an answer into its message, with its attributes, within `max_bytes`. A plain
/// answer too large for one message is sent compressed instead, gzip, or zstd when gzip is not
/// enough (consumers read all three forms, docs/contract.md section 4); a compressed one too
/// large is tried with zstd too. An answer that no encoding brings under the limit is
/// [`Fitted::Large`]: its message in the configured encoding, to be offloaded to S3, and the
/// sizes tried, for the reason when it cannot be.
fn answer_message(
    message: &Message,
    answer: &Answer,
    configured: ContentEncoding,
    max_bytes: usize,
) -> Fitted {
    let mut tried = Vec::new();
    let mut first = None;
    let fallbacks = [ContentEncoding::Gzip, ContentEncoding::Zstd];
    let encodings =
        std::iter::once(configured).chain(fallbacks.into_iter().filter(|e| *e != configured));
    for encoding in encodings {
        let mut attributes = vec![(
            BUNDLE_ID_ATTRIBUTE.to_owned(),
            answer.bundle_id().to_owned(),
        )];
        if let Some(enc) = encoding.attribute() {
            attributes.push((CONTENT_ENCODING_ATTRIBUTE.to_owned(), enc.to_owned()));
        }
        let outgoing = Outgoing {
            body: answer.encode(encoding),
            attributes,
            number_attributes: Vec::new(),
            dedup_id: Some(answer.bundle_id().to_owned()),
            // The input's group, so a FIFO output keeps each group's order (docs/contract.md
            // section 7); a bundle sent without one is its own group.
            group_id: Some(
                message
                    .group_id
                    .clone()
                    .unwrap_or_else(|| answer.bundle_id().to_owned()),
            ),
        };
        let size = outgoing.size();
        if size <= max_bytes {
            if encoding != configured {
                tracing::info!(
                    bundle_id = answer.bundle_id(),
                    bytes = size,
                    %encoding,
                    "answer too large for one message as configured; sent compressed"
                );
            }
            return Fitted::Inline(outgoing);
        }
        tried.push(format!("{size} bytes as {encoding}"));
        first.get_or_insert(outgoing);
    }
    let why = format!(
        "the answer is too large for one SQS message ({}; the limit is {max_bytes} bytes with attributes, ML_PIPELINE_MAX_MESSAGE_BYTES) and no payload bucket is set (ML_PIPELINE_PAYLOAD_BUCKET): send this bundle's records in smaller bundles",
        tried.join(", ")
    );
    Fitted::Large(first.expect("at least one encoding is tried"), why)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Fitted {
        fn unwrap(self) -> Outgoing {
            match self {
                Fitted::Inline(out) => out,
                Fitted::Large(_, why) => panic!("{why}"),
            }
        }

        fn unwrap_err(self) -> String {
            match self {
                Fitted::Inline(out) => panic!("fits: {} bytes", out.size()),
                Fitted::Large(_, why) => why,
            }
        }
    }

    fn message(group: Option<&str>) -> Message {
        Message {
            receipt_handle: "rh-1".into(),
            group_id: group.map(str::to_owned),
            ..Message::received("m-1", "")
        }
    }

    fn answer(rows: usize, id_len: usize) -> Answer {
        Answer::Request(crate::bundle::OutputBundle {
            bundle_id: "b".into(),
            model: "banknote".into(),
            model_version: "1".into(),
            columns: vec!["id".into(), "label".into(), "score".into()],
            rows: (0..rows)
                .map(|i| crate::bundle::OutputRow {
                    id: format!("r-{i:0id_len$}"),
                    label: "real".into(),
                    score: i as f64 * 0.123_456_789,
                    reported: Default::default(),
                })
                .collect(),
            errors: vec![],
            timing_ms: Default::default(),
        })
    }

    use crate::queue::MAX_SQS_MESSAGE_BYTES;

    /// The limit of a queue that enforces the old 256 KiB (`ML_PIPELINE_MAX_MESSAGE_BYTES`).
    const OLD_LIMIT: usize = 262_144;

    #[test]
    fn a_large_answer_is_compressed_and_one_too_large_even_then_is_refused_with_its_size() {
        let small = answer_message(
            &message(None),
            &answer(10, 6),
            ContentEncoding::Identity,
            OLD_LIMIT,
        )
        .unwrap();
        assert_eq!(small.attributes.len(), 1, "no content-encoding: plain");
        assert_eq!(small.group_id.as_deref(), Some("b"));
        let big = answer(10_000, 6);
        let plain = big.encode(ContentEncoding::Identity).len();
        assert!(
            OLD_LIMIT < plain && plain < MAX_SQS_MESSAGE_BYTES,
            "{plain}"
        );
        let today = answer_message(
            &message(None),
            &big,
            ContentEncoding::Identity,
            MAX_SQS_MESSAGE_BYTES,
        )
        .unwrap();
        assert_eq!(today.attributes.len(), 1, "fits SQS's 1 MiB plain");
        let sent = answer_message(
            &message(Some("g-7")),
            &big,
            ContentEncoding::Identity,
            OLD_LIMIT,
        )
        .unwrap();
        assert!(sent.size() <= OLD_LIMIT, "{} bytes", sent.size());
        assert_eq!(
            sent.attributes[1],
            (CONTENT_ENCODING_ATTRIBUTE.to_owned(), "gzip".to_owned())
        );
        assert_eq!(
            sent.group_id.as_deref(),
            Some("g-7"),
            "the input's group is kept"
        );
        // Random-looking ids do not compress: too large in every encoding.
        let ids: Vec<String> = (0..12_000u64)
            .map(|i| {
                format!(
                    "{:016x}{:016x}",
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    i.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                )
            })
            .collect();
        let Answer::Request(mut huge) = answer(12_000, 6) else {
            unreachable!()
        };
        for (row, id) in huge.rows.iter_mut().zip(ids) {
            row.id = id;
        }
        let why = answer_message(
            &message(None),
            &Answer::Request(huge),
            ContentEncoding::Identity,
            OLD_LIMIT,
        )
        .unwrap_err();
        assert!(
            why.contains("as gzip")
                && why.contains("as zstd")
                && why.contains("smaller bundles")
                && why.contains("262144"),
            "{why}"
        );
    }

    #[test]
    fn a_dead_letter_copy_too_large_for_sqs_keeps_its_reason_and_names_the_original() {
        let mut m = message(Some("g-1"));
        m.body = "é".repeat(MAX_SQS_MESSAGE_BYTES / 2 - 10);
        let e = DecodeError {
            bundle_id: Some("b-big".into()),
            reason: "r".repeat(5_000),
        };
        let copy = dead_letter_copy(&m, &e, "decode", MAX_SQS_MESSAGE_BYTES);
        assert!(copy.size() <= MAX_SQS_MESSAGE_BYTES, "{}", copy.size());
        let old = dead_letter_copy(&m, &e, "decode", OLD_LIMIT);
        assert!(
            old.size() <= OLD_LIMIT && old.size() > OLD_LIMIT - 4,
            "{}",
            old.size()
        );
        let attribute = |name: &str| {
            copy.attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let reason = attribute("error-reason").unwrap();
        assert!(
            reason.ends_with('…') && reason.chars().count() <= 1_001,
            "{reason}"
        );
        assert_eq!(attribute("bundle_id").as_deref(), Some("b-big"));
        assert_eq!(attribute("original-size"), Some(m.body.len().to_string()));
        assert_eq!(attribute("original-sha256").unwrap().len(), 64);
        assert_eq!(attribute("body-truncated").as_deref(), Some("true"));
        assert!(m.body.starts_with(&copy.body));
        assert_eq!(copy.group_id.as_deref(), Some("g-1"));
        let small = dead_letter_copy(&message(None), &e, "decode", OLD_LIMIT);
        assert!(small.attributes.iter().all(|(k, _)| k != "body-truncated"));
    }
}
