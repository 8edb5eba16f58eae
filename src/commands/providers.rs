//! `providers ingest | deliveries | rollback | report`: provider deliveries loaded into
//! MongoDB with their history, the ledger of deliveries, undoing one, and the providers'
//! quality numbers. Each returns the text to print;
//! progress goes to stderr (a bar on a terminal, a plain line every few seconds otherwise).

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::providers::ledger::{Delivery, Kind};
use crate::providers::request::{self, RequestRecord};
use crate::providers::{
    DeliverySource, DocumentStore, Format, Ingest, IngestOptions, IngestRequest, IngestSummary,
    Ledger, Pass, Progress, Rollback, RollbackSummary, SourceClients, Status,
};
use crate::settings::Settings;
use crate::spec::PipelineSpec;

/// Refused rows printed in the summary (the ledger keeps more).
const REFUSED_SHOWN: usize = 5;

/// One `providers ingest` as asked for.
#[derive(Debug, Clone)]
pub struct IngestJob {
    /// The provider.
    pub provider: String,
    /// A path, `s3://bucket/key`, or an HTTP API with its paging and policy.
    pub source: DeliverySource,
    /// The format, when the name does not say it.
    pub format: Option<Format>,
    /// The delivery id to record; None: generated.
    pub delivery_id: Option<String>,
    /// Documents per write batch.
    pub batch_docs: usize,
}

/// The store and ledger every provider command uses.
struct Systems {
    spec: PipelineSpec,
    store: DocumentStore,
    ledger: Ledger,
}

async fn systems(settings: &Settings) -> anyhow::Result<Systems> {
    let spec = PipelineSpec::banknote();
    let docs = spec
        .documents
        .as_ref()
        .context("the spec reads no provider documents")?;
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let mongo = crate::startup::mongo(settings).await?;
    crate::mongo::ensure_indexes(&mongo, &spec)
        .await
        .context("creating MongoDB indexes")?;
    let store = DocumentStore::new(mongo, docs);
    store.ensure_indexes().await?;
    Ok(Systems {
        spec,
        store,
        ledger: Ledger::new(pool),
    })
}

/// Loads one delivery; returns the summary to print.
pub async fn ingest(settings: &Settings, job: IngestJob) -> anyhow::Result<String> {
    let source = job.source;
    let systems = systems(settings).await?;
    let clients = SourceClients {
        s3: match source {
            DeliverySource::S3 { .. } => Some(crate::startup::s3(settings).await),
            _ => None,
        },
    };
    let progress = progress_display();
    let ingest = Ingest {
        spec: &systems.spec,
        store: &systems.store,
        ledger: &systems.ledger,
        clients: &clients,
        progress: progress.as_ref(),
    };
    let request = IngestRequest {
        provider: job.provider,
        source,
        format: job.format,
        delivery_id: job.delivery_id,
    };
    let options = IngestOptions {
        batch_docs: job.batch_docs.max(1),
        ..IngestOptions::default()
    };
    let summary = ingest.run(&request, options).await?;
    Ok(ingest_summary(&request, &summary))
}

/// The summary of an ingest, as printed.
pub fn ingest_summary(request: &IngestRequest, s: &IngestSummary) -> String {
    let c = &s.counts;
    let status = match (s.status, &s.same_as, s.resumed) {
        (Status::Unchanged, Some(earlier), _) => {
            format!("unchanged: the same content as delivery {earlier}; nothing written")
        }
        (Status::Succeeded, _, true) => "succeeded (resumed an unfinished run)".into(),
        (status, _, _) => format!("{status:?}").to_lowercase(),
    };
    let mut out = format!(
        "delivery  {} ({status})\n\
         provider  {}\n\
         source    {} ({}, {} bytes)\n\
         rows      {}: {} accepted ({} inserted, {} updated, {} unchanged), {} refused\n\
         speed     {:.0} documents/s ({:.2} s for both passes)\n",
        s.delivery_id,
        request.provider,
        request.source,
        s.content_hash,
        s.bytes,
        c.rows,
        c.accepted,
        c.inserted,
        c.updated,
        c.unchanged,
        c.refused,
        s.documents_per_second(),
        s.elapsed.as_secs_f64(),
    );
    if let Some(line) = requests_line(&s.requests) {
        out.push_str(&line);
    }
    if c.refused > 0 {
        let kinds: Vec<String> = s
            .refused_by_kind
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        writeln!(out, "refused   {}: {}", c.refused, kinds.join(", "))
            .expect("writing to a String");
    }
    for r in s.refused_sample.iter().take(REFUSED_SHOWN) {
        writeln!(out, "          line {}: {}", r.line, r.reason).expect("writing to a String");
    }
    if c.refused > REFUSED_SHOWN as u64 {
        writeln!(
            out,
            "          ... {} more; the first {} with their reasons are in the ledger (provider_deliveries.refused_sample)",
            c.refused - REFUSED_SHOWN as u64,
            s.refused_sample.len()
        )
        .expect("writing to a String");
    }
    out
}

/// An HTTP delivery's requests in one line: pages, attempts, failures, median and worst latency.
fn requests_line(requests: &[RequestRecord]) -> Option<String> {
    let pages = requests.iter().map(|r| r.page).max()?;
    let failed = requests
        .iter()
        .filter(|r| r.outcome != request::Outcome::Ok)
        .count();
    let mut latencies: Vec<f64> = requests.iter().map(|r| r.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    Some(format!(
        "requests  {pages} pages, {} requests ({failed} failed), latency median {:.0} ms, max {:.0} ms \
         (provider_requests)\n",
        requests.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    ))
}

/// The ledger as a table, newest first.
pub async fn deliveries(
    settings: &Settings,
    provider: Option<&str>,
    limit: i64,
) -> anyhow::Result<String> {
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let rows = Ledger::new(pool).list(provider, limit).await?;
    Ok(deliveries_table(&rows))
}

/// `providers report`: the tables, or the JSON on standard output (`--json -`); the JSON and
/// HTML files when asked for.
pub async fn report(
    settings: &Settings,
    options: &crate::providers::report::ReportOptions,
    json: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    use crate::providers::report;
    let spec = PipelineSpec::banknote();
    let pool = crate::startup::postgres_migrated(settings, 2).await?;
    let mongo = crate::startup::mongo(settings).await?;
    let r = report::gather(&spec, &pool, &mongo, options).await?;
    let text = serde_json::to_string_pretty(&r).context("the report as JSON")?;
    let mut out = match json {
        Some(path) if path.as_os_str() == "-" => return Ok(text),
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("writing the JSON report to {}", path.display()))?;
            format!(
                "{}\nJSON report: {}\n",
                report::text::render(&r),
                path.display()
            )
        }
        None => report::text::render(&r),
    };
    if let Some(path) = html {
        report::html::write_html(path, &r)?;
        let _ = writeln!(out, "HTML report: {}", path.display());
    }
    Ok(out)
}

/// Deliveries as a table, one per line.
pub fn deliveries_table(rows: &[Delivery]) -> String {
    let mut out = format!(
        "{:<40}  {:<8}  {:<8}  {:<9}  {:<19}  {:>7}  {:>7}  {:>8}  {:>7}  {:>9}  {:>7}  note\n",
        "delivery",
        "provider",
        "kind",
        "status",
        "started (UTC)",
        "seconds",
        "rows",
        "inserted",
        "updated",
        "unchanged",
        "refused"
    );
    for d in rows {
        let seconds = d.finished_at.map_or_else(
            || "-".to_owned(),
            |f| {
                format!(
                    "{:.1}",
                    (f - d.started_at).num_milliseconds() as f64 / 1000.0
                )
            },
        );
        let c = &d.counts;
        let note = match (d.kind, &d.rolls_back, &d.rolled_back_by, &d.error) {
            (_, _, _, Some(error)) => crate::text::truncate_chars(error, 120).to_string(),
            (Kind::Rollback, Some(undone), _, _) => format!(
                "rolls back {undone}: {} restored, {} removed, {} changed since",
                c.updated, c.removed, c.changed_since
            ),
            (_, _, Some(by), _) => format!("rolled back by {by}"),
            _ => String::new(),
        };
        let status = format!("{:?}", d.status).to_lowercase();
        let kind = format!("{:?}", d.kind).to_lowercase();
        writeln!(
            out,
            "{:<40}  {:<8}  {:<8}  {:<9}  {:<19}  {:>7}  {:>7}  {:>8}  {:>7}  {:>9}  {:>7}  {note}",
            d.delivery_id,
            d.provider,
            kind,
            status,
            d.started_at.format("%Y-%m-%d %H:%M:%S"),
            seconds,
            c.rows,
            c.inserted,
            c.updated,
            c.unchanged,
            c.refused,
        )
        .expect("writing to a String");
    }
    out
}

/// Undoes one delivery; returns what to print.
pub async fn rollback(
    settings: &Settings,
    delivery_id: &str,
    batch_docs: usize,
) -> anyhow::Result<String> {
    let systems = systems(settings).await?;
    let progress = progress_display();
    let rollback = Rollback {
        spec: &systems.spec,
        store: &systems.store,
        ledger: &systems.ledger,
        progress: progress.as_ref(),
    };
    let summary = rollback.run(delivery_id, batch_docs.max(1)).await?;
    Ok(rollback_summary(&summary))
}

/// The summary of a rollback, as printed.
pub fn rollback_summary(s: &RollbackSummary) -> String {
    let c = &s.counts;
    format!(
        "delivery  {} (rollback of {}{})\n\
         provider  {}\n\
         documents {}: {} restored to their previous version, {} removed (inserted by {})\n\
         left      {} changed again by a later delivery since\n\
         time      {:.2} s\n",
        s.delivery_id,
        s.rolled_back,
        if s.resumed { ", resumed" } else { "" },
        s.provider,
        c.rows,
        c.updated,
        c.removed,
        s.rolled_back,
        c.changed_since,
        s.elapsed.as_secs_f64()
    )
}

/// A progress bar on a terminal, plain lines on stderr otherwise.
fn progress_display() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bar::default())
    } else {
        Box::new(Lines::default())
    }
}

fn pass_name(pass: Pass) -> &'static str {
    match pass {
        Pass::Fetch => "fetching pages",
        Pass::Check => "pass 1, checking",
        Pass::Write => "pass 2, writing",
        Pass::Rollback => "rolling back",
    }
}

/// An indicatif bar (or spinner when the total is unknown).
#[derive(Default)]
struct Bar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn start(&self, pass: Pass, total: Option<u64>) {
        let (bar, template) = match total {
            Some(n) => (
                indicatif::ProgressBar::new(n),
                "{msg} [{bar:30}] {pos}/{len} rows, {per_sec}, {eta} left",
            ),
            None => (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} {msg}: {pos} rows, {per_sec}",
            ),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(pass_name(pass));
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, rows: u64) {
        if let Some(bar) = &*self.bar.lock().expect("progress lock") {
            bar.inc(rows);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }
}

/// A line on stderr at most every five seconds and at the end of each pass.
#[derive(Default)]
struct Lines {
    state: Mutex<LineState>,
}

#[derive(Default)]
struct LineState {
    pass: Option<Pass>,
    total: Option<u64>,
    done: u64,
    last: Option<Instant>,
}

impl LineState {
    fn print(&self) {
        let Some(pass) = self.pass else { return };
        match self.total {
            Some(total) => eprintln!("{}: {} of {total} rows", pass_name(pass), self.done),
            None => eprintln!("{}: {} rows", pass_name(pass), self.done),
        }
    }
}

impl Progress for Lines {
    fn start(&self, pass: Pass, total: Option<u64>) {
        *self.state.lock().expect("progress lock") = LineState {
            pass: Some(pass),
            total,
            done: 0,
            last: Some(Instant::now()),
        };
    }

    fn advance(&self, rows: u64) {
        let mut state = self.state.lock().expect("progress lock");
        state.done += rows;
        if state
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            state.last = Some(Instant::now());
            state.print();
        }
    }

    fn finish(&self) {
        let mut state = self.state.lock().expect("progress lock");
        state.print();
        state.pass = None;
    }
}
