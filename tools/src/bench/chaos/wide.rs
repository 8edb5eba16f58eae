//! `chaos wide`: wide, gzip-compressed bundles in one burst, with a few normal ones. Each wide
//! bundle is ten fixture requests, repeated, plus hundreds of numeric columns of `0` (two bytes a
//! cell, the most cells a body can carry), as many rows as fit the body-size limit once
//! decompressed (and the rows limit), and few enough that the compressed body fits one SQS
//! message. Reports the worker's peak RSS (VmHWM) and where every bundle went: answered, or
//! dead-lettered with a reason. A bundle with neither is lost.

use std::collections::HashMap;
use std::time::Instant;

use super::{send_tracked, Outcome, Run};
use crate::bench::load::{self, Prepared, Tally};
use crate::bench::{process, stop};
use ml_pipeline::bundle::compression::{compress, ContentEncoding, CONTENT_ENCODING_ATTRIBUTE};
use ml_pipeline::fixtures::FixtureSet;
use ml_pipeline::queue::BUNDLE_ID_ATTRIBUTE;

/// Room left in an SQS message for a wide bundle's attributes.
const ATTRIBUTE_ROOM: usize = 1024;

/// One wide bundle and its shape.
#[derive(Debug, Clone)]
pub struct WideBundle {
    /// Its id and gzip+base64 body.
    pub prepared: Prepared,
    /// Columns, the model's plus the added numeric ones.
    pub columns: usize,
    /// Bytes of its JSON once decompressed.
    pub json_bytes: usize,
}

impl WideBundle {
    /// Rows times columns.
    pub fn cells(&self) -> usize {
        self.prepared.records * self.columns
    }
}

/// `count` wide bundles of the fixture requests plus `extra` numeric columns, as many rows as
/// fit `max_body_bytes` of JSON and `max_rows`, with the gzip+base64 body within one SQS message
/// of `max_message_bytes` (less room for its attributes).
pub fn wide_bundles(
    set: &FixtureSet,
    count: usize,
    extra: usize,
    max_body_bytes: usize,
    max_rows: usize,
    max_message_bytes: usize,
    run_id: &str,
) -> Vec<WideBundle> {
    let budget = max_message_bytes.saturating_sub(ATTRIBUTE_ROOM);
    (0..count)
        .map(|i| {
            let id = format!("{run_id}-wide-{i:02}");
            let mut rows = max_rows;
            loop {
                let (json, fitted) = wide_json(set, &id, extra, max_body_bytes, rows);
                let body = compress(ContentEncoding::Gzip, json.as_bytes());
                if body.len() <= budget || fitted <= 1 {
                    let columns = set.bundles[0].columns.len() + extra;
                    let prepared = Prepared {
                        bundle_id: id,
                        body,
                        records: fitted,
                    };
                    break WideBundle {
                        prepared,
                        columns,
                        json_bytes: json.len(),
                    };
                }
                // Too big for SQS compressed: fewer rows, in proportion, with a margin.
                rows = (fitted as f64 * budget as f64 / body.len() as f64 * 0.97) as usize;
            }
        })
        .collect()
}

/// A bundle's JSON with up to `max_rows` rows within `max_bytes`; returns it and its rows.
fn wide_json(
    set: &FixtureSet,
    id: &str,
    extra: usize,
    max_bytes: usize,
    max_rows: usize,
) -> (String, usize) {
    let mut columns = set.bundles[0].columns.clone();
    let id_column = columns.iter().position(|c| c == "id").unwrap_or(0);
    columns.extend((0..extra).map(|c| format!("x{c}")));
    // Ten requests, repeated: the rows differ only in their ids, so gzip packs the most
    // cells into one SQS message (with every request distinct, about a third as many fit).
    let requests: Vec<Vec<serde_json::Value>> = set
        .bundles
        .iter()
        .flat_map(|b| b.rows.iter().map(|r| r.to_values()))
        .take(10)
        .collect();
    // The numeric tail of every row: ",0,0,...]", two bytes a cell.
    let tail = format!("{}]", ",0".repeat(extra));
    let head = serde_json::json!({"bundle_id": id, "columns": columns}).to_string();
    let mut json = format!("{},\"rows\":[", &head[..head.len() - 1]);
    let mut rows = 0;
    while rows < max_rows {
        let mut request = requests[rows % requests.len()].clone();
        request[id_column] = serde_json::Value::String(format!("w-{rows:06}"));
        let row = serde_json::to_string(&request).expect("a row serializes");
        let row = format!("{}{tail}", &row[..row.len() - 1]);
        if json.len() + row.len() + 1 + 2 > max_bytes {
            break;
        }
        if rows > 0 {
            json.push(',');
        }
        json.push_str(&row);
        rows += 1;
    }
    json.push_str("]}");
    (json, rows)
}

/// Runs the wide scenario.
pub async fn run(run: &Run<'_>) -> anyhow::Result<Outcome> {
    let args = run.args;
    let wide = wide_bundles(
        &run.set,
        args.wide,
        args.wide_columns,
        args.max_body_bytes,
        args.max_rows,
        args.max_message_bytes,
        &run.run_id,
    );
    for w in &wide {
        println!(
            "  {}: {} rows x {} columns = {} cells, {:.2} MiB of JSON, sent as {} KiB of gzip+base64",
            w.prepared.bundle_id,
            w.prepared.records,
            w.columns,
            w.cells(),
            w.json_bytes as f64 / (1 << 20) as f64,
            w.prepared.body.len() / 1024
        );
    }
    let mut worker = run.spawn("0")?;
    let pid = worker.id();
    let messages: Vec<(String, Vec<(String, String)>)> = wide
        .iter()
        .map(|w| {
            let attributes = vec![
                (CONTENT_ENCODING_ATTRIBUTE.to_owned(), "gzip".to_owned()),
                (BUNDLE_ID_ATTRIBUTE.to_owned(), w.prepared.bundle_id.clone()),
            ];
            (w.prepared.body.clone(), attributes)
        })
        .collect();
    let started = Instant::now();
    let (tracked, normal) = tokio::join!(
        send_tracked(&run.sqs, run.input.url(), &messages),
        load::send(
            &run.input,
            &run.bundles,
            ContentEncoding::Identity,
            None,
            2,
            run.args.max_message_bytes
        )
    );
    let mut times = normal?.lock().await.clone();
    let wide_ids: Vec<String> = wide.iter().map(|w| w.prepared.bundle_id.clone()).collect();
    times.extend(wide_ids.iter().map(|id| (id.clone(), started)));
    let mut plan = run.plan();
    plan.dead_letter_queue = Some(run.dlq.url().to_owned());
    plan.sources = tracked?.into_iter().zip(wide_ids.iter().cloned()).collect();
    let expected: Vec<String> = times.keys().cloned().collect();
    let arrivals = load::collect(&run.sqs, run.output.url(), &expected, &plan).await;
    let peak = process::peak_rss(pid).ok();
    let alive = worker.try_wait()?.is_none();
    stop(&mut worker);
    let tally = Tally::new(&times, &arrivals);
    let mut failures = report(&wide_ids, &run.ids(), &arrivals, started);
    let bound = args.rss_bound_mib;
    match peak {
        Some(bytes) => {
            let mib = bytes as f64 / (1 << 20) as f64;
            println!(
                "  worker peak RSS (VmHWM): {mib:.1} MiB; bound {bound} MiB ({:.0}% of it)",
                mib / bound as f64 * 100.0
            );
            if mib > bound as f64 {
                failures.push(format!(
                    "worker peak RSS {mib:.1} MiB is above the bound of {bound} MiB"
                ));
            }
        }
        None => failures.push("worker peak RSS not readable (the process is gone)".to_owned()),
    }
    println!("  worker process {pid} still running at the end: {alive}");
    if !alive {
        failures.push(format!(
            "the worker process {pid} did not survive the burst"
        ));
    }
    Ok(Outcome { tally, failures })
}

/// Prints where each wide bundle went and returns the failed checks: a bundle neither answered
/// nor dead-lettered with a reason, a normal bundle dead-lettered.
fn report(
    wide: &[String],
    normal: &[String],
    arrivals: &load::Arrivals,
    started: Instant,
) -> Vec<String> {
    let mut failures = Vec::new();
    let answered_at: HashMap<&String, Instant> = arrivals
        .by_bundle
        .iter()
        .filter_map(|(id, copies)| Some((id, *copies.iter().min()?)))
        .collect();
    for id in wide {
        match (answered_at.get(id), arrivals.dead_by_bundle.get(id)) {
            (Some(at), _) => println!(
                "  {id}: answered {:.1} s after the burst",
                at.duration_since(started).as_secs_f64()
            ),
            (None, Some(d)) if d.reason.is_some() => println!(
                "  {id}: dead-lettered at {}: {}",
                d.stage.as_deref().unwrap_or("?"),
                d.reason.as_deref().unwrap_or_default()
            ),
            (None, Some(_)) => failures.push(format!("{id} dead-lettered without a reason")),
            (None, None) => failures.push(format!("{id} neither answered nor dead-lettered")),
        }
    }
    let normal_dead: Vec<&String> = normal
        .iter()
        .filter(|id| arrivals.dead_by_bundle.contains_key(*id))
        .collect();
    if !normal_dead.is_empty() {
        failures.push(format!("normal bundles dead-lettered: {normal_dead:?}"));
    }
    let normal_answered = normal
        .iter()
        .filter(|id| answered_at.contains_key(*id))
        .count();
    println!(
        "  normal bundles: {normal_answered} of {} answered",
        normal.len()
    );
    for f in &failures {
        println!("  FAIL {f}");
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_pipeline::bundle::compression::decompress;

    #[test]
    fn a_wide_bundle_fills_the_body_limit_and_fits_one_sqs_message() {
        let set =
            ml_pipeline::fixtures::read_set(&ml_pipeline::fixtures::files::default_dir()).unwrap();
        let limit = 2 << 20;
        let message = 256 * 1024;
        let w = &wide_bundles(&set, 1, 300, limit, 10_000, message, "t")[0];
        assert!(w.prepared.body.len() <= message - ATTRIBUTE_ROOM);
        let json = decompress(ContentEncoding::Gzip, &w.prepared.body, limit).unwrap();
        assert_eq!(json.len(), w.json_bytes);
        assert!(
            json.len() <= limit && json.len() > limit - 2_000,
            "{}",
            json.len()
        );
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let rows = value["rows"].as_array().unwrap();
        assert_eq!(rows.len(), w.prepared.records);
        assert!(rows
            .iter()
            .all(|r| r.as_array().unwrap().len() == w.columns));
        assert_eq!(
            value["columns"].as_array().unwrap().len(),
            set.bundles[0].columns.len() + 300
        );
        assert_eq!(rows[1][0], "w-000001");
    }

    #[test]
    fn the_rows_limit_binds_when_the_body_limit_does_not() {
        let set =
            ml_pipeline::fixtures::read_set(&ml_pipeline::fixtures::files::default_dir()).unwrap();
        let w = &wide_bundles(&set, 1, 10, 16 << 20, 50, 1 << 20, "t")[0];
        assert_eq!(w.prepared.records, 50);
        assert_eq!(w.cells(), 50 * (set.bundles[0].columns.len() + 10));
    }
}
