//! What a worker run cost in outside calls, from the worker's own `/metrics` read before and
//! after the run: SQS requests by kind (and as billed), S3 requests, and database round trips
//! by source; and what those SQS requests cost at list price.

use std::collections::BTreeMap;

use ml_pipeline::instruments::{DB_ROUND_TRIPS, S3_REQUESTS, SQS_BILLABLE_REQUESTS, SQS_REQUESTS};

/// SQS list price in US dollars per million requests after the free tier (the first million a
/// month), standard queues, first 100 billion requests a month, us-east-1:
/// <https://aws.amazon.com/sqs/pricing/> (read 2026-12).
pub const STANDARD_USD_PER_MILLION_REQUESTS: f64 = 0.40;
/// The same for FIFO queues.
pub const FIFO_USD_PER_MILLION_REQUESTS: f64 = 0.50;

/// The worker's counters at one moment: each counter of interest, by its label's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// SQS requests by kind.
    pub sqs: BTreeMap<String, f64>,
    /// Billable SQS requests by kind.
    pub sqs_billable: BTreeMap<String, f64>,
    /// S3 requests by kind.
    pub s3: BTreeMap<String, f64>,
    /// Database round trips by source.
    pub db: BTreeMap<String, f64>,
}

impl Counters {
    /// The counters in a Prometheus text exposition.
    pub fn read(metrics: &str) -> Self {
        Self {
            sqs: by_label(metrics, SQS_REQUESTS, "kind"),
            sqs_billable: by_label(metrics, SQS_BILLABLE_REQUESTS, "kind"),
            s3: by_label(metrics, S3_REQUESTS, "kind"),
            db: by_label(metrics, DB_ROUND_TRIPS, "source"),
        }
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &Self) -> Self {
        let minus = |after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>| {
            after
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
                .collect()
        };
        Self {
            sqs: minus(&self.sqs, &before.sqs),
            sqs_billable: minus(&self.sqs_billable, &before.sqs_billable),
            s3: minus(&self.s3, &before.s3),
            db: minus(&self.db, &before.db),
        }
    }
}

/// The values of counter `name`'s series, summed by the value of `label` (series without that
/// label are left out).
pub fn by_label(metrics: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (Some(labels), Ok(value)) = (
            series
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('{'))
                .and_then(|rest| rest.strip_suffix('}')),
            value.parse::<f64>(),
        ) else {
            continue;
        };
        if let Some(v) = label_value(labels, label) {
            *sums.entry(v.to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

/// The value of `label` in `a="x",b="y"` (values of our labels hold no quotes or commas).
fn label_value<'a>(labels: &'a str, label: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == label).then(|| v.trim().trim_matches('"'))
    })
}

/// `counts` per 1 000 of `units`, with a `total` entry summing them.
pub fn per_1000_with_total(counts: &BTreeMap<String, f64>, units: usize) -> BTreeMap<String, f64> {
    let per = |n: f64| n / units.max(1) as f64 * 1000.0;
    let mut out: BTreeMap<String, f64> = counts.iter().map(|(k, v)| (k.clone(), per(*v))).collect();
    out.insert("total".to_owned(), per(counts.values().sum()));
    out
}

/// US dollars per million bundles at `usd_per_million_requests`, for a worker that makes
/// `billable_per_1000_bundles` billable requests per 1 000 bundles.
pub fn usd_per_million_bundles(
    billable_per_1000_bundles: f64,
    usd_per_million_requests: f64,
) -> f64 {
    // Requests per million bundles are 1 000 times the figure per 1 000 bundles.
    billable_per_1000_bundles * 1000.0 * usd_per_million_requests / 1e6
}

/// The list price that applies to a queue.
pub fn usd_per_million_requests(queue_url: &str) -> f64 {
    if queue_url.ends_with(".fifo") {
        FIFO_USD_PER_MILLION_REQUESTS
    } else {
        STANDARD_USD_PER_MILLION_REQUESTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE ml_pipeline_sqs_requests_total counter\n\
        ml_pipeline_sqs_requests_total{kind=\"ReceiveMessage\"} 10\n\
        ml_pipeline_sqs_requests_total{kind=\"SendMessageBatch\"} 4\n\
        ml_pipeline_sqs_billable_requests_total{kind=\"SendMessageBatch\"} 5\n\
        ml_pipeline_db_round_trips_total{source=\"postgres\"} 3\n";
    const AFTER: &str = "# HELP ml_pipeline_sqs_requests_total SQS requests made\n\
        ml_pipeline_sqs_requests_total{kind=\"ReceiveMessage\"} 25\n\
        ml_pipeline_sqs_requests_total{kind=\"SendMessageBatch\"} 14\n\
        ml_pipeline_sqs_requests_total{kind=\"DeleteMessageBatch\"} 11\n\
        ml_pipeline_sqs_requests_total_other{kind=\"ReceiveMessage\"} 1000\n\
        ml_pipeline_sqs_billable_requests_total{kind=\"SendMessageBatch\"} 25\n\
        ml_pipeline_db_round_trips_total{source=\"postgres\"} 13\n\
        ml_pipeline_db_round_trips_total{source=\"mongo\",extra=\"a\"} 7\n\
        ml_pipeline_s3_requests_total{kind=\"GetObject\"} 2\n";

    #[test]
    fn counters_are_read_by_label_and_differenced() {
        let after = Counters::read(AFTER);
        assert_eq!(after.sqs["ReceiveMessage"], 25.0);
        assert_eq!(after.sqs.len(), 3, "a longer name is another metric");
        assert_eq!(after.db["mongo"], 7.0);
        let run = after.since(&Counters::read(BEFORE));
        assert_eq!(run.sqs["ReceiveMessage"], 15.0);
        assert_eq!(run.sqs["SendMessageBatch"], 10.0);
        assert_eq!(run.sqs["DeleteMessageBatch"], 11.0, "new since: all of it");
        assert_eq!(run.sqs_billable["SendMessageBatch"], 20.0);
        assert_eq!(run.db["postgres"], 10.0);
        assert_eq!(run.s3["GetObject"], 2.0);
    }

    #[test]
    fn per_1000_adds_a_total() {
        let run = Counters::read(AFTER).since(&Counters::read(BEFORE));
        let per = per_1000_with_total(&run.sqs, 500);
        assert_eq!(per["ReceiveMessage"], 30.0);
        assert_eq!(per["total"], (15.0 + 10.0 + 11.0) * 2.0);
        assert_eq!(per_1000_with_total(&BTreeMap::new(), 0)["total"], 0.0);
    }

    #[test]
    fn cost_per_million_bundles_at_list_price() {
        // 300 requests per 1 000 bundles: 300 000 per million bundles, $0.12 at $0.40 a million.
        let usd = usd_per_million_bundles(300.0, STANDARD_USD_PER_MILLION_REQUESTS);
        assert!((usd - 0.12).abs() < 1e-12, "{usd}");
        let usd = usd_per_million_bundles(300.0, FIFO_USD_PER_MILLION_REQUESTS);
        assert!((usd - 0.15).abs() < 1e-12, "{usd}");
        assert_eq!(usd_per_million_requests("http://h/q/in.fifo"), 0.50);
        assert_eq!(usd_per_million_requests("http://h/q/in"), 0.40);
    }
}
