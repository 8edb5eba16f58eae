//! The `TestWorker`: a worker on its own queues, bucket and databases, with real sources
//! wrapped to count their round trips.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use ml_pipeline::bundle::compression::{compress, decompress, ContentEncoding};
use ml_pipeline::enrich::mongo::MongoDocuments;
use ml_pipeline::enrich::postgres::PgReference;
use ml_pipeline::enrich::{DocumentSource, DocumentsByKey, Enricher, ReferenceSource, SourceError};
use ml_pipeline::learning::prediction_log::PredictionLog;
use ml_pipeline::model::holder::{ModelHolder, ModelSource};
use ml_pipeline::queue::{Queue, SqsQueue};
use ml_pipeline::spec::{DocumentSpec, LookupSpec};
use ml_pipeline::worker::{Hooks, RunSummary, Worker, WorkerConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A real source that counts its round trips.
#[derive(Debug, Clone)]
pub struct Counting<S> {
    pub inner: S,
    pub calls: Arc<AtomicUsize>,
}

impl<S: ReferenceSource> ReferenceSource for Counting<S> {
    async fn fetch(
        &self,
        lookups: &[LookupSpec],
        keys: &[&[String]],
    ) -> Result<Vec<HashMap<String, String>>, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch(lookups, keys).await
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.inner.ping().await
    }
}

impl<S: DocumentSource> DocumentSource for Counting<S> {
    async fn fetch(
        &self,
        spec: &DocumentSpec,
        paths: &[String],
        keys: &[String],
    ) -> Result<DocumentsByKey, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fetch(spec, paths, keys).await
    }

    async fn ping(&self) -> Result<(), SourceError> {
        self.inner.ping().await
    }
}

pub type TestEnricher = Enricher<Counting<PgReference>, Counting<MongoDocuments>>;

pub struct TestWorker {
    pub loaded: super::Loaded,
    pub sqs: aws_sdk_sqs::Client,
    pub input: SqsQueue,
    pub output: SqsQueue,
    pub dlq: SqsQueue,
    pub output_name: String,
    pub registry: ml_pipeline::model::registry::Registry,
    pub holder: Arc<ModelHolder>,
    pub pg_calls: Arc<AtomicUsize>,
    pub mongo_calls: Arc<AtomicUsize>,
}

impl TestWorker {
    /// A worker on standard queues.
    pub async fn new(visibility_secs: i32) -> Self {
        Self::with_queues(visibility_secs, false).await
    }

    /// A worker on FIFO queues: input, its dead-letter queue and output (SQS wants a FIFO
    /// queue's dead-letter queue FIFO too). Senders give each message a group and a dedup id.
    pub async fn new_fifo(visibility_secs: i32) -> Self {
        Self::with_queues(visibility_secs, true).await
    }

    async fn with_queues(visibility_secs: i32, fifo: bool) -> Self {
        let loaded = super::Loaded::new().await;
        let sqs = ml_pipeline::aws::sqs(&super::aws().await);
        let id = super::suffix();
        let create = |name: String, mut attrs: HashMap<QueueAttributeName, String>| {
            let sqs = sqs.clone();
            let name = if fifo { format!("{name}.fifo") } else { name };
            if fifo {
                attrs.insert(QueueAttributeName::FifoQueue, "true".into());
            }
            async move {
                let url = sqs
                    .create_queue()
                    .queue_name(name)
                    .set_attributes(Some(attrs))
                    .send()
                    .await
                    .unwrap()
                    .queue_url
                    .unwrap();
                SqsQueue::resolve(sqs, &url).await.unwrap()
            }
        };
        let dlq = create(format!("w-{id}-dlq"), HashMap::new()).await;
        let dlq_arn = dlq
            .attribute(QueueAttributeName::QueueArn)
            .await
            .unwrap()
            .unwrap();
        let redrive =
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10}).to_string();
        let input = create(
            format!("w-{id}-in"),
            HashMap::from([
                (QueueAttributeName::RedrivePolicy, redrive),
                (
                    QueueAttributeName::VisibilityTimeout,
                    visibility_secs.to_string(),
                ),
            ]),
        )
        .await;
        let output = create(format!("w-{id}-out"), HashMap::new()).await;
        let output_name = output.url().rsplit('/').next().unwrap().to_owned();
        let registry = super::registry().await;
        super::published(&registry).await;
        let holder = Arc::new(
            ModelHolder::load(
                registry.clone(),
                "banknote",
                ModelSource::Alias("production".into()),
            )
            .await
            .unwrap(),
        );
        Self {
            loaded,
            sqs,
            input,
            output,
            dlq,
            output_name,
            registry,
            holder,
            pg_calls: Arc::default(),
            mongo_calls: Arc::default(),
        }
    }

    pub fn worker(
        &self,
        config: WorkerConfig,
        hooks: Hooks,
    ) -> Arc<Worker<Counting<PgReference>, Counting<MongoDocuments>>> {
        self.worker_logging(config, hooks, None)
    }

    /// A worker that logs its predictions to `log`.
    pub fn worker_logging(
        &self,
        config: WorkerConfig,
        hooks: Hooks,
        prediction_log: Option<PredictionLog>,
    ) -> Arc<Worker<Counting<PgReference>, Counting<MongoDocuments>>> {
        self.worker_with(config, hooks, prediction_log, None)
    }

    /// A worker that logs its predictions to `log` and is watched by `monitor`.
    pub fn worker_with(
        &self,
        config: WorkerConfig,
        hooks: Hooks,
        prediction_log: Option<PredictionLog>,
        monitor: Option<Arc<ml_pipeline::monitor::Monitor>>,
    ) -> Arc<Worker<Counting<PgReference>, Counting<MongoDocuments>>> {
        let enricher: TestEnricher = Enricher {
            reference: Counting {
                inner: self.loaded.enricher.reference.clone(),
                calls: self.pg_calls.clone(),
            },
            documents: Counting {
                inner: self.loaded.enricher.documents.clone(),
                calls: self.mongo_calls.clone(),
            },
        };
        Arc::new(Worker {
            input: self.input.clone(),
            output: self.output.clone(),
            dlq: self.input_dlq(),
            payloads: None,
            enricher,
            models: self.holder.clone(),
            aggregates: Some(self.loaded.db.pool.clone()),
            prediction_log,
            monitor,
            feedback: None,
            config,
            hooks,
            state: Arc::default(),
        })
    }

    pub fn input_dlq(&self) -> Option<SqsQueue> {
        Some(self.dlq.clone())
    }

    pub fn config(&self) -> WorkerConfig {
        WorkerConfig {
            wait_secs: 1,
            visibility_timeout_secs: 30,
            backoff_max: Duration::from_secs(1),
            ..WorkerConfig::default()
        }
    }

    pub fn spawn(
        &self,
        config: WorkerConfig,
        hooks: Hooks,
    ) -> (CancellationToken, tokio::task::JoinHandle<RunSummary>) {
        let token = CancellationToken::new();
        let handle = tokio::spawn(self.worker(config, hooks).run(token.clone()));
        (token, handle)
    }

    pub async fn send(&self, bodies: &[(String, Option<&str>)]) {
        for chunk in bodies.chunks(10) {
            let msgs: Vec<_> = chunk
                .iter()
                .map(|(body, enc)| ml_pipeline::queue::Outgoing {
                    body: body.clone(),
                    attributes: enc
                        .map(|e| ("content-encoding".to_owned(), e.to_owned()))
                        .into_iter()
                        .collect(),
                    number_attributes: Vec::new(),
                    dedup_id: None,
                    group_id: None,
                })
                .collect();
            assert!(self.input.send_batch(&msgs).await.unwrap().is_empty());
        }
    }

    /// Sends bundles to a FIFO input, in order, each in its message group; the dedup id is the
    /// bundle's id.
    pub async fn send_grouped(&self, bundles: &[(String, Value)]) {
        for chunk in bundles.chunks(10) {
            let msgs: Vec<_> = chunk
                .iter()
                .map(|(group, bundle)| {
                    let id = bundle["bundle_id"].as_str().or(bundle["batch_id"].as_str());
                    ml_pipeline::queue::Outgoing {
                        body: bundle.to_string(),
                        attributes: Vec::new(),
                        number_attributes: Vec::new(),
                        dedup_id: Some(id.expect("a bundle has an id").to_owned()),
                        group_id: Some(group.clone()),
                    }
                })
                .collect();
            assert!(self.input.send_batch(&msgs).await.unwrap().is_empty());
        }
    }

    pub async fn send_json(&self, bundles: &[Value], enc: ContentEncoding) {
        let bodies: Vec<(String, Option<&str>)> = bundles
            .iter()
            .map(|b| (compress(enc, b.to_string().as_bytes()), enc.attribute()))
            .collect();
        self.send(&bodies).await;
    }

    /// Receives and deletes messages of a queue until `n` arrived or `timeout` passed.
    pub async fn drain(
        &self,
        url: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Value, HashMap<String, String>)> {
        self.drain_raw(url, n, timeout)
            .await
            .into_iter()
            .map(|(_, body, attrs)| (body, attrs))
            .collect()
    }

    /// Like `drain`, also keeping each raw body.
    pub async fn drain_raw(
        &self,
        url: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(String, Value, HashMap<String, String>)> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let got = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .unwrap();
            for m in got.messages() {
                let attrs: HashMap<String, String> = m
                    .message_attributes()
                    .map(|a| {
                        a.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                // A dead-lettered bundle keeps its original (possibly bogus) content-encoding.
                let enc: ContentEncoding = attrs
                    .get("content-encoding")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or_default();
                let body = decompress(enc, m.body().unwrap(), 64 << 20)
                    .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                out.push((m.body().unwrap_or_default().to_owned(), body, attrs));
                self.sqs
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        out
    }

    pub async fn outputs(&self, n: usize) -> Vec<Value> {
        self.drain(self.output.url(), n, Duration::from_secs(60))
            .await
            .into_iter()
            .map(|(b, _)| b)
            .collect()
    }
}

/// Messages on `queue`, visible or in flight (LocalStack's approximate counts are exact).
pub async fn messages_on(queue: &SqsQueue) -> u64 {
    let mut n = 0;
    for attribute in [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ] {
        n += queue
            .attribute(attribute)
            .await
            .unwrap()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    n
}

pub fn fixture_bundles() -> Vec<Value> {
    let set = super::default_fixtures();
    set.bundles
        .iter()
        .map(|b| serde_json::to_value(b).unwrap())
        .chain(
            set.seed_bundles
                .iter()
                .map(|b| serde_json::to_value(b).unwrap()),
        )
        .collect()
}
