//! `send`: publishes bundles to the input queue, from the fixtures or a file, at a given rate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::bundle::compression::{compress, ContentEncoding, CONTENT_ENCODING_ATTRIBUTE};
use crate::queue::{send_all, Outgoing, Queue, Retry};

/// Reads bundles to send: a fixture directory (v1 and seed bundles) or a .json/.jsonl file.
pub fn read_bundles(path: &Path) -> anyhow::Result<Vec<Value>> {
    if path.is_dir() {
        let mut out = crate::fixtures::files::read_lines::<Value>(&path.join("bundles.jsonl"))?;
        out.extend(crate::fixtures::files::read_lines::<Value>(
            &path.join("seed_bundles.jsonl"),
        )?);
        return Ok(out);
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => crate::fixtures::files::read_lines(path),
        _ => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(vec![serde_json::from_str(&text).with_context(|| {
                format!("{} is not JSON", path.display())
            })?])
        }
    }
}

/// Sends bundles in batches of 10 (and at most `max_message_bytes`, the
/// `ML_PIPELINE_MAX_MESSAGE_BYTES` setting), at most `rate` bundles per second (None: as fast as
/// possible).
pub async fn send<Q: Queue>(
    queue: &Q,
    bundles: &[Value],
    encoding: ContentEncoding,
    rate: Option<f64>,
    max_message_bytes: usize,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut sent = 0;
    for chunk in bundles.chunks(10) {
        let messages: Vec<Outgoing> = chunk
            .iter()
            .map(|b| Outgoing {
                body: compress(
                    encoding,
                    &serde_json::to_vec(b).expect("JSON values serialize"),
                ),
                attributes: encoding
                    .attribute()
                    .map(|a| (CONTENT_ENCODING_ATTRIBUTE.to_owned(), a.to_owned()))
                    .into_iter()
                    .collect(),
                number_attributes: Vec::new(),
                dedup_id: Some(uuid::Uuid::new_v4().to_string()),
                group_id: Some("send".to_owned()),
            })
            .collect();
        let count = messages.len();
        let accepted = send_all(queue, messages, max_message_bytes, &Retry::default()).await;
        anyhow::ensure!(
            accepted.len() == count,
            "SQS did not accept {} of {count} messages after retries (see the warnings above)",
            count - accepted.len(),
        );
        sent += count;
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    Ok(sent)
}

/// A copy of a bundle with its id suffixed, so repeated sends are distinct bundles.
pub fn with_fresh_id(bundle: &Value, round: usize) -> Value {
    let mut b = bundle.clone();
    for key in ["bundle_id", "batch_id"] {
        if let Some(Value::String(id)) = b.get_mut(key) {
            id.push_str(&format!("-r{round}"));
        }
    }
    b
}

/// `send`: the bundles at `from` to the settings' input queue, `repeat` times (fresh bundle ids
/// after the first); returns what to print.
pub async fn send_from(
    settings: &crate::settings::Settings,
    from: &Path,
    encoding: ContentEncoding,
    rate: Option<f64>,
    repeat: usize,
) -> anyhow::Result<String> {
    let bundles = read_bundles(from)?;
    let sqs = crate::startup::sqs(Duration::from_secs(30)).await;
    let queue = crate::startup::queue(
        &sqs,
        settings.input_queue.as_deref(),
        "ML_PIPELINE_INPUT_QUEUE",
    )
    .await?;
    let mut total = 0;
    for round in 0..repeat.max(1) {
        let batch: Vec<Value> = if round == 0 {
            bundles.clone()
        } else {
            bundles.iter().map(|b| with_fresh_id(b, round)).collect()
        };
        total += send(&queue, &batch, encoding, rate, settings.max_message_bytes).await?;
    }
    Ok(format!("sent {total} bundles to {}", queue.url()))
}
