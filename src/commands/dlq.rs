//! `dlq inspect` and `dlq redrive`: the input's dead-letter queue as an operator reads it, and
//! chosen bundles moved back to the input queue once the cause is fixed.
//!
//! Both hold the messages they read by receiving them with a short visibility timeout, and make
//! the ones they leave visible again when they are done: nothing is consumed but what a redrive
//! moves. A moved message is sent to the input queue first and deleted from the dead-letter
//! queue only once the input accepted it, so a failure leaves it where it was.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::bundle::compression::{decompress, ContentEncoding};
use crate::queue::dead_letter::{
    redrive_copy, BODY_TRUNCATED_ATTRIBUTE, ERROR_REASON_ATTRIBUTE, ERROR_STAGE_ATTRIBUTE,
    RECEIVE_COUNT_ATTRIBUTE,
};
use crate::queue::delivery::change_visibility_all;
use crate::queue::{
    delete_all, send_all, Message, Outgoing, Queue, QueueError, Retry, SqsQueue,
    BUNDLE_ID_ATTRIBUTE,
};
use crate::settings::Settings;
use crate::text::truncate_chars;

/// How long `inspect` hides the messages it lists, in seconds: they are made visible again as
/// soon as the list is made, or by SQS after this long if inspect stops half-way.
pub const INSPECT_VISIBILITY_SECS: i32 = 30;

/// How long `redrive` hides the messages it holds, in seconds (the ones it leaves are made
/// visible again when it is done).
pub const REDRIVE_VISIBILITY_SECS: i32 = 120;

/// The stage shown for a message SQS's redrive policy moved: it carries no stage or reason.
pub const MOVED_BY_SQS_STAGE: &str = "sqs";

/// A dead-lettered message as an operator reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// The dead-letter queue's message id.
    pub message_id: String,
    /// The bundle's id: the `bundle_id` attribute, else read from the body; None when neither
    /// has one.
    pub bundle_id: Option<String>,
    /// The stage that refused it, or `sqs` when SQS's redrive policy moved it.
    pub stage: String,
    /// Why it was refused, or `moved by SQS after N receives`.
    pub reason: String,
    /// Whether SQS's redrive policy moved it (no worker attached a reason).
    pub moved_by_sqs: bool,
    /// SQS's ApproximateReceiveCount of the dead-letter message, this listing's own receive
    /// included.
    pub receive_count: u32,
    /// How many times the input queue had delivered it when the worker dead-lettered it.
    pub input_receive_count: Option<u32>,
    /// When it was first sent, as SQS reports it (RFC 3339, UTC).
    pub sent_at: Option<String>,
    /// The body's bytes as stored.
    pub body_bytes: usize,
    /// Whether the worker cut the body to fit the dead-letter queue (it cannot be redriven).
    pub body_truncated: bool,
    /// The `content-encoding` attribute.
    pub content_encoding: Option<String>,
    /// FIFO queues: its message group.
    pub group_id: Option<String>,
}

impl DeadLetter {
    /// Reads a received dead-letter message. `max_receive_count` is the input queue's
    /// RedrivePolicy, used to say after how many receives SQS moved a message.
    pub fn read(m: &Message, max_receive_count: Option<u32>) -> Self {
        let stage = m.attribute(ERROR_STAGE_ATTRIBUTE);
        let reason = match stage {
            Some(_) => m
                .attribute(ERROR_REASON_ATTRIBUTE)
                .unwrap_or("(no reason recorded)")
                .to_owned(),
            None => moved_reason(max_receive_count, m.receive_count),
        };
        Self {
            message_id: m.message_id.clone(),
            bundle_id: m
                .attribute(BUNDLE_ID_ATTRIBUTE)
                .map(str::to_owned)
                .or_else(|| bundle_id_in_body(m)),
            stage: stage.unwrap_or(MOVED_BY_SQS_STAGE).to_owned(),
            reason,
            moved_by_sqs: stage.is_none(),
            receive_count: m.receive_count,
            input_receive_count: m
                .attribute(RECEIVE_COUNT_ATTRIBUTE)
                .and_then(|n| n.parse().ok()),
            sent_at: m
                .sent_timestamp_ms
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            body_bytes: m.body.len(),
            body_truncated: m.attribute(BODY_TRUNCATED_ATTRIBUTE) == Some("true"),
            content_encoding: m.content_encoding.clone(),
            group_id: m.group_id.clone(),
        }
    }
}

/// The reason shown for a message SQS moved: after the input queue's maxReceiveCount receives
/// when it is known, else after the receives SQS counted before this listing.
fn moved_reason(max_receive_count: Option<u32>, receive_count: u32) -> String {
    match max_receive_count {
        Some(n) => format!("moved by SQS after {n} receives"),
        None => format!(
            "moved by SQS after {} receives",
            receive_count.saturating_sub(1)
        ),
    }
}

/// The `bundle_id` (or seed `batch_id`) in a body, when it can be read.
fn bundle_id_in_body(m: &Message) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Ids {
        bundle_id: Option<String>,
        batch_id: Option<String>,
    }
    let encoding: ContentEncoding = m.content_encoding.as_deref().unwrap_or("").parse().ok()?;
    let json = decompress(encoding, &m.body, 64 << 20).ok()?;
    let ids: Ids = serde_json::from_slice(&json).ok()?;
    ids.bundle_id.or(ids.batch_id)
}

/// A `--reason` pattern: a case-insensitive regular expression, so plain text matches as a
/// substring; text that is not a valid regular expression is matched as a plain substring.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    /// The pattern for `text`.
    pub fn new(text: &str) -> Self {
        let build = |pattern: &str| {
            regex::RegexBuilder::new(pattern)
                .case_insensitive(true)
                .build()
        };
        Self(
            build(text)
                .or_else(|_| build(&regex::escape(text)))
                .expect("an escaped pattern is a valid regular expression"),
        )
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

/// Which dead-lettered messages a redrive takes.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Matched against the reason (for messages SQS moved: `moved by SQS after N receives`).
    pub reason: Option<Pattern>,
    /// The stage, exactly (case-insensitive); `sqs` takes the messages SQS moved.
    pub stage: Option<String>,
}

impl Filter {
    /// Whether it takes `d`.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.reason.as_ref().is_none_or(|p| p.matches(&d.reason))
            && self
                .stage
                .as_ref()
                .is_none_or(|s| s.eq_ignore_ascii_case(&d.stage))
    }
}

/// Lists up to `limit` dead-lettered messages without consuming them: each is received hidden
/// for [`INSPECT_VISIBILITY_SECS`], and all are made visible again once listed.
pub async fn inspect<Q: Queue>(
    dlq: &Q,
    max_receive_count: Option<u32>,
    limit: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let mut held = Held::new(dlq);
    let mut listed = Vec::new();
    while listed.len() < limit {
        let max = (limit - listed.len()).min(10) as i32;
        let page = match dlq
            .receive_hidden_for(max, 1, INSPECT_VISIBILITY_SECS)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                held.release().await;
                return Err(e);
            }
        };
        let (fresh, wrapped) = held.take(page);
        let done = fresh.is_empty() || wrapped;
        for m in fresh {
            listed.push(DeadLetter::read(&m, max_receive_count));
            held.keep(m);
        }
        if done {
            break;
        }
    }
    held.release().await;
    Ok(listed)
}

/// What `redrive` does, besides choosing.
#[derive(Debug, Clone)]
pub struct RedriveOptions {
    /// Which messages to move.
    pub filter: Filter,
    /// Move at most this many matching messages; None: all.
    pub limit: Option<usize>,
    /// List what would be moved, move nothing.
    pub dry_run: bool,
    /// The largest message the input queue accepts (`ML_PIPELINE_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// How failed sends and deletes are retried.
    pub retry: Retry,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedriveReport {
    /// Messages the filter took.
    pub matched: usize,
    /// Matched messages accepted by the input queue (with `--dry-run`: none).
    pub moved: usize,
    /// Matched messages that cannot be copied unchanged; they stay in the dead-letter queue.
    pub skipped: usize,
    /// Matched messages the input queue did not accept after retries; they stay in the
    /// dead-letter queue.
    pub failed: usize,
    /// Moved messages whose dead-letter copy could not be deleted: they are on both queues.
    pub not_deleted: usize,
    /// One line per matched message: what happened to it.
    pub lines: Vec<String>,
}

/// Moves the dead-lettered messages `options.filter` takes back to `input`: each is sent first
/// and deleted from `dlq` only once `input` accepted it. The messages it leaves are made visible
/// again when it is done. With `dry_run` it only says what it would move.
pub async fn redrive<Q: Queue>(
    dlq: &Q,
    input: &Q,
    max_receive_count: Option<u32>,
    options: &RedriveOptions,
) -> Result<RedriveReport, QueueError> {
    let mut held = Held::new(dlq);
    let mut report = RedriveReport::default();
    let limit = options.limit.unwrap_or(usize::MAX);
    while report.matched < limit {
        let page = match dlq.receive_hidden_for(10, 1, REDRIVE_VISIBILITY_SECS).await {
            Ok(page) => page,
            Err(e) => {
                held.release().await;
                return Err(e);
            }
        };
        let (fresh, wrapped) = held.take(page);
        if fresh.is_empty() {
            break;
        }
        let mut to_move: Vec<(Message, Outgoing, DeadLetter)> = Vec::new();
        for m in fresh {
            let d = DeadLetter::read(&m, max_receive_count);
            if report.matched >= limit || !options.filter.matches(&d) {
                held.keep(m);
                continue;
            }
            report.matched += 1;
            match redrive_copy(&m, options.max_message_bytes) {
                Err(why) => {
                    report.skipped += 1;
                    report
                        .lines
                        .push(format!("skipped {}: {why}", describe(&d)));
                    held.keep(m);
                }
                Ok(_) if options.dry_run => {
                    report.lines.push(format!("would move {}", describe(&d)));
                    held.keep(m);
                }
                Ok(copy) => to_move.push((m, copy, d)),
            }
        }
        move_page(to_move, input, &mut held, options, &mut report).await;
        if wrapped {
            break;
        }
    }
    held.release().await;
    Ok(report)
}

/// Sends a page's copies to the input queue, then deletes from the dead-letter queue the ones
/// the input accepted; the others are kept, to be made visible again.
async fn move_page<Q: Queue>(
    to_move: Vec<(Message, Outgoing, DeadLetter)>,
    input: &Q,
    held: &mut Held<'_, Q>,
    options: &RedriveOptions,
    report: &mut RedriveReport,
) {
    if to_move.is_empty() {
        return;
    }
    let copies: Vec<Outgoing> = to_move.iter().map(|(_, copy, _)| copy.clone()).collect();
    let accepted = send_all(input, copies, options.max_message_bytes, &options.retry).await;
    let mut moved = Vec::new();
    for (i, (m, _, d)) in to_move.into_iter().enumerate() {
        if accepted.binary_search(&i).is_ok() {
            report.lines.push(format!("moved {}", describe(&d)));
            moved.push(m.receipt_handle);
        } else {
            report.failed += 1;
            report.lines.push(format!(
                "failed {}: the input queue {} did not accept it after retries; it stays in the dead-letter queue, run the redrive again",
                describe(&d),
                input.url()
            ));
            held.keep(m);
        }
    }
    report.moved += moved.len();
    let receipts: Vec<&str> = moved.iter().map(String::as_str).collect();
    let deleted = delete_all(held.dlq, &receipts, &options.retry).await;
    report.not_deleted += moved.len() - deleted;
}

/// How one dead-lettered message is named in a redrive's lines.
fn describe(d: &DeadLetter) -> String {
    format!(
        "{} (bundle {}, {}: {})",
        d.message_id,
        d.bundle_id.as_deref().unwrap_or("-"),
        d.stage,
        truncate_chars(&d.reason, 200)
    )
}

/// The dead-letter messages a command holds hidden, to make visible again when it is done.
struct Held<'q, Q> {
    dlq: &'q Q,
    seen: HashSet<String>,
    receipts: Vec<String>,
}

impl<'q, Q: Queue> Held<'q, Q> {
    fn new(dlq: &'q Q) -> Self {
        Self {
            dlq,
            seen: HashSet::new(),
            receipts: Vec::new(),
        }
    }

    /// Splits a received page into the messages not seen before, and whether one came back
    /// (its visibility ran out: the scan went round the whole queue). A message seen again is
    /// kept, to be made visible again with the rest.
    fn take(&mut self, page: Vec<Message>) -> (Vec<Message>, bool) {
        let mut fresh = Vec::with_capacity(page.len());
        let mut wrapped = false;
        for m in page {
            if self.seen.insert(m.message_id.clone()) {
                fresh.push(m);
            } else {
                wrapped = true;
                self.receipts.push(m.receipt_handle);
            }
        }
        (fresh, wrapped)
    }

    /// Leaves a message on the dead-letter queue, to be made visible again.
    fn keep(&mut self, m: Message) {
        self.receipts.push(m.receipt_handle);
    }

    /// Makes every message kept visible again.
    async fn release(&mut self) {
        let receipts = std::mem::take(&mut self.receipts);
        change_visibility_all(self.dlq, &receipts, 0).await;
    }
}

/// The inspect table: one line per message, the reason cut to fit a terminal line.
pub fn table(dlq_url: &str, listed: &[DeadLetter]) -> String {
    if listed.is_empty() {
        return format!("no dead-lettered messages in {dlq_url}");
    }
    let mut out = format!(
        "{} dead-lettered message{} in {dlq_url}\n{:<20}  {:>8}  {:<8}  {:<36}  {}\n",
        listed.len(),
        if listed.len() == 1 { "" } else { "s" },
        "SENT",
        "RECEIVES",
        "STAGE",
        "BUNDLE",
        "REASON"
    );
    for d in listed {
        out.push_str(&format!(
            "{:<20}  {:>8}  {:<8}  {:<36}  {}{}\n",
            d.sent_at.as_deref().unwrap_or("-"),
            d.receive_count,
            d.stage,
            truncate_chars(d.bundle_id.as_deref().unwrap_or("-"), 35),
            truncate_chars(&crate::text::visible(&d.reason), 120),
            if d.body_truncated {
                " [body cut to fit]"
            } else {
                ""
            },
        ));
    }
    out
}

/// The redrive's lines and its summary.
pub fn summary(report: &RedriveReport, dry_run: bool, dlq_url: &str, input_url: &str) -> String {
    let mut out: String = report.lines.iter().map(|l| format!("{l}\n")).collect();
    out.push_str(&format!(
        "matched {}, moved {}, skipped {}, failed {}{} (from {dlq_url} to {input_url})",
        report.matched,
        report.moved,
        report.skipped,
        report.failed,
        if dry_run {
            "; dry run: nothing moved"
        } else {
            ""
        },
    ));
    if report.not_deleted > 0 {
        out.push_str(&format!(
            "\n{} moved messages could not be deleted from the dead-letter queue: they are on both queues now, so their bundles may be answered twice; delete them from {dlq_url} (a later redrive would move them again)",
            report.not_deleted
        ));
    }
    out
}

/// The queues of a `dlq` command: the dead-letter queue, the input queue when one is named, and
/// the input's maxReceiveCount when it has a RedrivePolicy.
#[derive(Debug)]
pub struct DlqQueues {
    /// The dead-letter queue.
    pub dlq: SqsQueue,
    /// The input queue.
    pub input: Option<SqsQueue>,
    /// The input's maxReceiveCount.
    pub max_receive_count: Option<u32>,
}

/// Resolves the queues as the worker does: the input from `--input-queue` or
/// ML_PIPELINE_INPUT_QUEUE, the dead-letter queue from `--dlq` or ML_PIPELINE_INPUT_DLQ, else
/// from the input's RedrivePolicy.
pub async fn queues(
    settings: &Settings,
    input: Option<&str>,
    dlq: Option<&str>,
) -> anyhow::Result<DlqQueues> {
    let sqs = crate::startup::sqs(Duration::from_secs(30)).await;
    let input = match input.or(settings.input_queue.as_deref()) {
        Some(name) => Some(SqsQueue::resolve(sqs.clone(), name).await?),
        None => None,
    };
    let redrive = match &input {
        Some(q) => q.redrive_policy().await?,
        None => Default::default(),
    };
    let configured = dlq.or(settings.input_dlq.as_deref());
    let dlq = crate::startup::input_dlq(&sqs, configured, &redrive)
        .await?
        .ok_or_else(|| match &input {
            Some(q) => anyhow::anyhow!(
                "no dead-letter queue: the input queue {} has no RedrivePolicy; set ML_PIPELINE_INPUT_DLQ or pass --dlq",
                q.url()
            ),
            None => anyhow::anyhow!(
                "no dead-letter queue: set ML_PIPELINE_INPUT_DLQ (or ML_PIPELINE_INPUT_QUEUE, whose RedrivePolicy names it), or pass --dlq"
            ),
        })?;
    Ok(DlqQueues {
        dlq,
        input,
        max_receive_count: redrive.max_receive_count,
    })
}

/// `dlq inspect`: the table, or with `json` a JSON array of every field.
pub async fn inspect_command(
    settings: &Settings,
    input: Option<&str>,
    dlq: Option<&str>,
    limit: usize,
    json: bool,
) -> anyhow::Result<String> {
    let q = queues(settings, input, dlq).await?;
    let listed = inspect(&q.dlq, q.max_receive_count, limit).await?;
    Ok(if json {
        serde_json::to_string_pretty(&listed).expect("dead letters serialize")
    } else {
        table(q.dlq.url(), &listed)
    })
}

/// `dlq redrive`: moves the chosen messages, prints one line each and the summary. Fails when a
/// matched message could not be moved, so a script notices.
pub async fn redrive_command(
    settings: &Settings,
    input: Option<&str>,
    dlq: Option<&str>,
    options: RedriveOptions,
) -> anyhow::Result<String> {
    let q = queues(settings, input, dlq).await?;
    let Some(input) = &q.input else {
        anyhow::bail!(
            "no input queue to move the bundles to: set ML_PIPELINE_INPUT_QUEUE or pass --input-queue"
        );
    };
    let report = redrive(&q.dlq, input, q.max_receive_count, &options).await?;
    let text = summary(&report, options.dry_run, q.dlq.url(), input.url());
    anyhow::ensure!(report.failed == 0 && report.not_deleted == 0, "{text}");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::memory::{Fault, MemoryQueue, Op};

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A dead-letter queue holding a worker copy (decode), another (prepare) and a bundle SQS
    /// moved.
    fn dead_letters(url: &str) -> MemoryQueue {
        let dlq = MemoryQueue::new(url);
        dlq.push_with(
            "not json",
            &attrs(&[
                ("error-stage", "decode"),
                (
                    "error-reason",
                    "the body is not JSON: expected value at line 1",
                ),
                ("receive-count", "1"),
                ("source-message-id", "in-1"),
            ]),
            Some("g-1"),
        );
        dlq.push_with(
            r#"{"bundle_id":"b-2","model":"other","columns":["id"],"rows":[["r"]]}"#,
            &attrs(&[
                ("bundle_id", "b-2"),
                ("error-stage", "prepare"),
                (
                    "error-reason",
                    "model 'other' is not served here (banknote is)",
                ),
            ]),
            Some("g-2"),
        );
        dlq.push_with(
            r#"{"bundle_id":"b-3","columns":["id"],"rows":[["r"]]}"#,
            &attrs(&[("trace-id", "t-3")]),
            Some("g-3"),
        );
        dlq
    }

    #[test]
    fn a_worker_copy_shows_its_stage_and_reason_and_an_sqs_move_says_so() {
        let dlq = dead_letters("dlq");
        let page = futures::executor::block_on(dlq.receive(10, 0)).unwrap();
        let read: Vec<DeadLetter> = page.iter().map(|m| DeadLetter::read(m, Some(5))).collect();
        assert_eq!(
            (read[0].stage.as_str(), read[0].input_receive_count),
            ("decode", Some(1))
        );
        assert!(read[0].reason.contains("not JSON"));
        assert_eq!(
            read[0].bundle_id, None,
            "neither attribute nor readable body"
        );
        assert_eq!(read[1].bundle_id.as_deref(), Some("b-2"));
        assert!(read[2].moved_by_sqs);
        assert_eq!(read[2].stage, "sqs");
        assert_eq!(read[2].reason, "moved by SQS after 5 receives");
        assert_eq!(
            read[2].bundle_id.as_deref(),
            Some("b-3"),
            "read from the body"
        );
        let unknown = DeadLetter::read(&page[2], None);
        assert_eq!(unknown.reason, "moved by SQS after 0 receives");
    }

    #[test]
    fn a_reason_pattern_is_a_case_insensitive_regex_or_else_a_substring() {
        assert!(Pattern::new("NOT json").matches("the body is not JSON"));
        assert!(Pattern::new("^model '.*' is not served").matches("model 'x' is not served"));
        assert!(!Pattern::new("^served").matches("model 'x' is not served"));
        let unbalanced = Pattern::new("limit of columns (ML_PIPELINE");
        assert!(unbalanced.matches("the limit of columns (ML_PIPELINE_MAX_COLUMNS)"));
        assert!(!unbalanced.matches("the limit of columns ML_PIPELINE"));
    }

    #[test]
    fn a_filter_takes_reason_and_stage_together() {
        let d = |stage: &str, reason: &str| DeadLetter {
            message_id: "m".into(),
            bundle_id: None,
            stage: stage.into(),
            reason: reason.into(),
            moved_by_sqs: stage == "sqs",
            receive_count: 1,
            input_receive_count: None,
            sent_at: None,
            body_bytes: 0,
            body_truncated: false,
            content_encoding: None,
            group_id: None,
        };
        let all = Filter::default();
        assert!(all.matches(&d("decode", "x")));
        let sqs = Filter {
            stage: Some("SQS".into()),
            reason: None,
        };
        assert!(sqs.matches(&d("sqs", "moved by SQS after 5 receives")));
        assert!(!sqs.matches(&d("decode", "x")));
        let both = Filter {
            stage: Some("prepare".into()),
            reason: Some(Pattern::new("not served")),
        };
        assert!(both.matches(&d("prepare", "model 'x' is not served here")));
        assert!(!both.matches(&d("decode", "model 'x' is not served here")));
        assert!(!both.matches(&d("prepare", "a row has no id")));
    }

    fn options(filter: Filter, dry_run: bool) -> RedriveOptions {
        RedriveOptions {
            filter,
            limit: None,
            dry_run,
            max_message_bytes: 1 << 20,
            retry: Retry {
                attempts: 2,
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn inspect_lists_every_message_and_leaves_them_all_visible() {
        let dlq = dead_letters("dlq");
        let listed = inspect(&dlq, Some(5), 100).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!((dlq.visible(), dlq.in_flight()), (3, 0));
        assert!(dlq.deleted().is_empty());
        let text = table("dlq", &listed);
        assert!(
            text.starts_with("3 dead-lettered messages in dlq"),
            "{text}"
        );
        assert!(text.contains("moved by SQS after 5 receives"), "{text}");
        assert_eq!(inspect(&dlq, None, 2).await.unwrap().len(), 2, "--limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_moves_nothing_and_a_reason_moves_only_its_matches() {
        let dlq = dead_letters("dlq");
        let input = MemoryQueue::new("in");
        let report = redrive(&dlq, &input, Some(5), &options(Filter::default(), true))
            .await
            .unwrap();
        assert_eq!((report.matched, report.moved), (3, 0));
        assert!(input.accepted().is_empty() && dlq.deleted().is_empty());
        assert_eq!(dlq.visible(), 3);

        let filter = Filter {
            reason: Some(Pattern::new("moved by sqs")),
            stage: None,
        };
        let report = redrive(&dlq, &input, Some(5), &options(filter, false))
            .await
            .unwrap();
        assert_eq!(
            (report.matched, report.moved, report.skipped, report.failed),
            (1, 1, 0, 0)
        );
        let sent = input.accepted();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].body.contains("b-3"));
        assert_eq!(sent[0].attributes, attrs(&[("trace-id", "t-3")]));
        assert_eq!((dlq.visible(), dlq.deleted().len()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_the_input_refuses_leaves_the_dead_letter_copy() {
        let dlq = dead_letters("dlq");
        let input = MemoryQueue::new("in");
        input.fail_next(Fault::Entries(Op::Send, vec![0]));
        input.fail_next(Fault::Entries(Op::Send, vec![0]));
        let filter = Filter {
            stage: Some("prepare".into()),
            reason: None,
        };
        let report = redrive(&dlq, &input, None, &options(filter, false))
            .await
            .unwrap();
        assert_eq!((report.matched, report.moved, report.failed), (1, 0, 1));
        assert!(dlq.deleted().is_empty(), "nothing deleted");
        assert_eq!(dlq.visible(), 3, "every message visible again");
        let text = summary(&report, false, "dlq", "in");
        assert!(text.contains("did not accept it"), "{text}");
        assert!(text.ends_with("matched 1, moved 0, skipped 0, failed 1 (from dlq to in)"));
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_fifo_input_a_redrive_keeps_the_group_and_dedups_by_dead_letter_message_id() {
        let dlq = dead_letters("dlq.fifo");
        let input = MemoryQueue::new("in.fifo");
        let mut opts = options(Filter::default(), false);
        opts.limit = Some(2);
        let report = redrive(&dlq, &input, None, &opts).await.unwrap();
        assert_eq!((report.matched, report.moved), (2, 2));
        let sent = input.accepted();
        let ids: Vec<(Option<&str>, Option<&str>)> = sent
            .iter()
            .map(|o| (o.group_id.as_deref(), o.dedup_id.as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                (Some("g-1"), Some("redrive-m-1")),
                (Some("g-2"), Some("redrive-m-2"))
            ]
        );
        assert!(sent[1].attributes == attrs(&[("bundle_id", "b-2")]));
        assert_eq!(dlq.visible(), 1, "--limit 2 leaves the third");
    }
}
