//! Provider deliveries against the real MongoDB-wire server, PostgreSQL and LocalStack S3:
//! ingest, the same delivery again, a second delivery with updates and new notes, rollback,
//! bad deliveries, an S3 source, and a delivery resumed after a crash. Each test has its own
//! databases (and bucket).

use crate::common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ml_pipeline::enrich::mongo::MongoDocuments;
use ml_pipeline::enrich::source::{DocumentSource, FieldValue};
use ml_pipeline::providers::ingest::IngestError;
use ml_pipeline::providers::read::ReadError;
use ml_pipeline::providers::{
    DeliverySource, DocumentStore, Ingest, IngestOptions, IngestRequest, IngestSummary, Ledger,
    Rollback, RollbackError, RollbackSummary, Silent, SourceClients, Status,
};
use ml_pipeline::spec::PipelineSpec;
use mongodb::bson::{doc, Document};
use serde_json::Value;

struct Env {
    spec: PipelineSpec,
    mongo: mongodb::Database,
    store: DocumentStore,
    ledger: Ledger,
    clients: SourceClients,
    _db: common::TestDb,
}

impl Env {
    async fn new() -> Self {
        let db = common::TestDb::new().await;
        let mongo = common::mongo_db().await;
        let spec = PipelineSpec::banknote();
        ml_pipeline::mongo::ensure_indexes(&mongo, &spec)
            .await
            .unwrap();
        let store = DocumentStore::new(mongo.clone(), spec.documents.as_ref().unwrap());
        store.ensure_indexes().await.unwrap();
        Self {
            spec,
            mongo,
            store,
            ledger: Ledger::new(db.pool.clone()),
            clients: SourceClients::default(),
            _db: db,
        }
    }

    async fn ingest_with(
        &self,
        provider: &str,
        source: DeliverySource,
        options: IngestOptions,
    ) -> Result<IngestSummary, IngestError> {
        let ingest = Ingest {
            spec: &self.spec,
            store: &self.store,
            ledger: &self.ledger,
            clients: &self.clients,
            progress: &Silent,
        };
        let request = IngestRequest {
            provider: provider.into(),
            source,
            format: None,
            delivery_id: None,
        };
        ingest.run(&request, options).await
    }

    async fn ingest(&self, path: &Path) -> Result<IngestSummary, IngestError> {
        self.ingest_with(
            "aurum",
            DeliverySource::File(path.into()),
            IngestOptions::default(),
        )
        .await
    }

    async fn rollback(&self, delivery: &str) -> Result<RollbackSummary, RollbackError> {
        Rollback {
            spec: &self.spec,
            store: &self.store,
            ledger: &self.ledger,
            progress: &Silent,
        }
        .run(delivery, 100)
        .await
    }

    /// Every document of a collection, by `_id`.
    async fn all(&self, collection: &str) -> HashMap<String, Document> {
        self.mongo
            .collection::<Document>(collection)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.get_str("_id").unwrap().to_owned(), d))
            .collect()
    }

    /// What the worker reads for these notes: aurum's scan.kurtosis per note.
    async fn worker_kurtosis(&self, notes: &[&str]) -> HashMap<String, f64> {
        let keys: Vec<String> = notes.iter().map(|n| (*n).to_owned()).collect();
        let found = MongoDocuments::new(self.mongo.clone())
            .fetch(
                self.spec.documents.as_ref().unwrap(),
                &self.spec.document_paths(),
                &keys,
            )
            .await
            .unwrap();
        found
            .iter()
            .filter_map(|(place, docs)| {
                let aurum = docs.iter().find(|d| &*d.provider == "aurum")?;
                match aurum.field("scan.kurtosis")? {
                    FieldValue::Number(v) => Some((keys[place as usize].clone(), *v)),
                    FieldValue::NotANumber(_) => None,
                }
            })
            .collect()
    }
}

fn fixture(name: &str) -> PathBuf {
    ml_pipeline::fixtures::files::default_dir().join(name)
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("providers-{}", common::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Aurum documents of the first delivery that have both fields (the others are refused).
fn complete_aurum(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| {
            d["provider"] == "aurum"
                && d["scan"].get("kurtosis").is_some()
                && d["scan"].get("entropy").is_some()
        })
        .collect()
}

#[tokio::test]
async fn a_delivery_again_an_update_and_its_rollback() {
    let env = Env::new().await;
    let set = common::default_fixtures();
    let aurum = complete_aurum(&set.provider_scans);

    // 1. The first delivery holds both providers: aurum's rows load, lumen's are refused.
    let all_refusals = IngestOptions {
        refused_sample: 2000,
        ..IngestOptions::default()
    };
    let first = env
        .ingest_with(
            "aurum",
            DeliverySource::File(fixture("provider_scans.jsonl")),
            all_refusals,
        )
        .await
        .unwrap();
    assert_eq!(first.status, Status::Succeeded);
    assert_eq!(first.refused_sample.len() as u64, first.counts.refused);
    assert_eq!(first.counts.rows, set.provider_scans.len() as u64);
    assert_eq!(first.counts.inserted, aurum.len() as u64);
    assert_eq!(
        first.counts.refused,
        set.provider_scans.len() as u64 - aurum.len() as u64
    );
    assert!(first
        .refused_sample
        .iter()
        .any(|r| r.reason.contains("this delivery is for provider 'aurum'")));
    assert!(first
        .refused_sample
        .iter()
        .any(|r| r.reason.contains("no field 'scan.entropy'")));
    let after_first = env.all("provider_scans").await;
    assert_eq!(after_first.len(), aurum.len());

    // 2. The same delivery again: unchanged, nothing written.
    let again = env.ingest(&fixture("provider_scans.jsonl")).await.unwrap();
    assert_eq!(again.status, Status::Unchanged);
    assert_eq!(again.same_as.as_deref(), Some(first.delivery_id.as_str()));
    assert_eq!(env.all("provider_scans").await, after_first);
    assert!(env.all("provider_scans_history").await.is_empty());

    // 3. The second delivery: changed documents keep their old version in history.
    let update_rows = &set.provider_update;
    let before: HashMap<&str, &Value> = aurum
        .iter()
        .map(|d| (d["note_id"].as_str().unwrap(), *d))
        .collect();
    let changed: Vec<&Value> = update_rows
        .iter()
        .filter(|d| {
            before
                .get(d["note_id"].as_str().unwrap())
                .is_some_and(|old| *old != *d)
        })
        .collect();
    let new_notes = update_rows
        .iter()
        .filter(|d| !before.contains_key(d["note_id"].as_str().unwrap()))
        .count();
    assert!(
        changed.len() > 20 && new_notes > 20,
        "the fixture has updates and new notes"
    );
    let update = env
        .ingest(&fixture("provider_update_aurum.jsonl"))
        .await
        .unwrap();
    assert_eq!(update.status, Status::Succeeded);
    assert_eq!(update.counts.updated, changed.len() as u64);
    assert_eq!(update.counts.inserted, new_notes as u64);
    assert_eq!(
        update.counts.unchanged,
        (update_rows.len() - changed.len() - new_notes) as u64
    );
    assert_eq!(update.counts.refused, 0);
    let history = env.all("provider_scans_history").await;
    assert_eq!(history.len(), changed.len());
    let note = changed[0]["note_id"].as_str().unwrap();
    let old = &history[&format!("aurum:{note}:1")];
    assert_eq!(old.get_str("_replaced_by").unwrap(), update.delivery_id);
    assert_eq!(old.get_str("_delivery").unwrap(), first.delivery_id);
    let current = &env.all("provider_scans").await[&format!("aurum:{note}")];
    assert_eq!(current.get_i64("_version").unwrap(), 2);
    // The worker's own lookup reads the new value.
    let read = env.worker_kurtosis(&[note]).await;
    assert_eq!(read[note], changed[0]["scan"]["kurtosis"].as_f64().unwrap());

    // 4. Rolling the update back: the old values return, history keeps every version.
    let rollback = env.rollback(&update.delivery_id).await.unwrap();
    assert_eq!(rollback.counts.updated, changed.len() as u64);
    assert_eq!(rollback.counts.removed, new_notes as u64);
    assert_eq!(rollback.counts.changed_since, 0);
    let read = env.worker_kurtosis(&[note]).await;
    assert_eq!(
        read[note],
        before[note]["scan"]["kurtosis"].as_f64().unwrap()
    );
    let restored = env.all("provider_scans").await;
    assert_eq!(restored.len(), aurum.len(), "the new notes are gone");
    for (id, doc) in &after_first {
        let now = &restored[id];
        for field in ["scan", "note_id", "provider", "resolution_dpi", "_content"] {
            assert_eq!(now.get(field), doc.get(field), "{id} {field}");
        }
    }
    let history = env.all("provider_scans_history").await;
    assert_eq!(
        history.len(),
        2 * changed.len() + new_notes,
        "v1 replaced by the update, v2 replaced by the rollback, and each removed new note"
    );
    assert_eq!(
        history[&format!("aurum:{note}:2")]
            .get_str("_replaced_by")
            .unwrap(),
        rollback.delivery_id
    );

    // 5. The ledger says all of it, and a second rollback is refused.
    let err = env.rollback(&update.delivery_id).await.unwrap_err();
    assert!(
        matches!(err, RollbackError::AlreadyRolledBack { ref by, .. } if *by == rollback.delivery_id),
        "{err}"
    );
    let rows = env.ledger.list(None, 10).await.unwrap();
    let by_id: HashMap<&str, _> = rows.iter().map(|d| (d.delivery_id.as_str(), d)).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(by_id[first.delivery_id.as_str()].status, Status::Succeeded);
    assert_eq!(by_id[again.delivery_id.as_str()].status, Status::Unchanged);
    let undone = by_id[update.delivery_id.as_str()];
    assert_eq!(
        undone.rolled_back_by.as_deref(),
        Some(rollback.delivery_id.as_str())
    );
    assert_eq!(undone.counts.updated, changed.len() as u64);
    let rb = by_id[rollback.delivery_id.as_str()];
    assert_eq!(rb.rolls_back.as_deref(), Some(update.delivery_id.as_str()));
    assert_eq!(rb.status, Status::Succeeded);
    assert!(rb.finished_at.is_some());

    // 6. After the rollback, the update can be delivered again and applies again.
    let redo = env
        .ingest(&fixture("provider_update_aurum.jsonl"))
        .await
        .unwrap();
    assert_eq!(redo.status, Status::Succeeded);
    assert_eq!(redo.counts.updated, changed.len() as u64);
    assert_eq!(redo.counts.inserted, new_notes as u64);
    let current = &env.all("provider_scans").await[&format!("aurum:{note}")];
    assert_eq!(current.get_i64("_version").unwrap(), 4);
}

#[tokio::test]
async fn a_truncated_gzip_changes_nothing_and_the_ledger_says_why() {
    let env = Env::new().await;
    env.ingest(&fixture("provider_scans.jsonl")).await.unwrap();
    let before = env.all("provider_scans").await;
    let whole = gzip(&std::fs::read(fixture("provider_update_aurum.jsonl")).unwrap());
    let cut = temp_file("update.jsonl.gz", &whole[..whole.len() / 2]);
    let err = env.ingest(&cut).await.unwrap_err();
    let IngestError::Read {
        delivery_id,
        error: ReadError::Gzip { .. },
    } = &err
    else {
        panic!("expected a gzip read error, got {err}");
    };
    assert_eq!(env.all("provider_scans").await, before);
    assert!(env.all("provider_scans_history").await.is_empty());
    let row = env.ledger.get(delivery_id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed);
    assert!(row.error.unwrap().contains("truncated"));
    assert!(row.finished_at.is_some());
}

#[tokio::test]
async fn bad_rows_are_refused_with_line_and_reason_and_bad_deliveries_fail_whole() {
    let env = Env::new().await;
    let big = "x".repeat(17 * 1024 * 1024);
    let lines = [
        r#"{"note_id":"SN-1","scan":{"kurtosis":1.5,"entropy":0.5}}"#.to_owned(),
        r#"{"note_id":"SN-2","scan":{"kurtosis":1.5,"entropy":0.5,"$gt":1}}"#.into(),
        r#"{"note_id":"SN-3","scan":{"kurtosis":1.5,"entropy":0.5},"a.b":1}"#.into(),
        r#"{"note_id":"SN-4","scan":{"kurtosis":1.5}}"#.into(),
        r#"{"note_id":"SN-5","scan":{"kurtosis":"high","entropy":0.5}}"#.into(),
        r#"{"note_id":"SN-6","scan":{"kurtosis":1,"entropy":2}}"#.into(),
        r#"{"note_id":"SN-6","scan":{"kurtosis":3,"entropy":4}}"#.into(),
        format!(r#"{{"note_id":"SN-7","scan":{{"kurtosis":1,"entropy":2}},"blob":"{big}"}}"#),
        r#"{"note_id":"SN-8","scan":{"kurtosis":1e999,"entropy":2}}"#.into(),
        r#"{"note_id":"SN-9","provider":"lumen","scan":{"kurtosis":1,"entropy":2}}"#.into(),
    ];
    let path = temp_file("bad.jsonl", lines.join("\n").as_bytes());
    let summary = env.ingest(&path).await.unwrap();
    assert_eq!((summary.counts.rows, summary.counts.accepted), (10, 1));
    assert_eq!(summary.counts.inserted, 1);
    let reasons: Vec<(u64, &str)> = summary
        .refused_sample
        .iter()
        .map(|r| (r.line, r.reason.as_str()))
        .collect();
    for (line, says) in [
        (2, "key 'scan.$gt' starts with '$'"),
        (3, "key 'a.b' contains '.'"),
        (4, "no field 'scan.entropy'"),
        (
            5,
            "field 'scan.kurtosis' is the text \"high\", not a number",
        ),
        (
            6,
            "appears more than once in this delivery (also on line 7)",
        ),
        (
            7,
            "appears more than once in this delivery (also on line 6)",
        ),
        (8, "over the"),
        (9, "not a readable row"),
        (10, "but this delivery is for provider 'aurum'"),
    ] {
        assert!(
            reasons.iter().any(|(l, r)| *l == line && r.contains(says)),
            "line {line} should say {says}: {reasons:?}"
        );
    }
    assert_eq!(
        env.all("provider_scans").await.keys().collect::<Vec<_>>(),
        ["aurum:SN-1"]
    );
    let row = env.ledger.get(&summary.delivery_id).await.unwrap().unwrap();
    assert_eq!(row.counts.refused, 9);
    assert_eq!(row.refused_sample.len(), 9);

    // CSV: NaN and inf are refused per row; wrong columns fail the delivery before a write.
    let csv = temp_file(
        "scans.csv",
        b"note_id,scan.kurtosis,scan.entropy\nSN-20,1.25,2\nSN-21,NaN,2\nSN-22,-inf,2\n",
    );
    let summary = env.ingest(&csv).await.unwrap();
    assert_eq!((summary.counts.inserted, summary.counts.refused), (1, 2));
    assert!(summary.refused_sample[0]
        .reason
        .contains("NaN, not a finite number"));
    let wrong = temp_file("wrong.csv", b"note_id,kurtosis,entropy\nSN-30,1,2\n");
    let err = env.ingest(&wrong).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("wrong CSV columns: missing scan.kurtosis, scan.entropy"),
        "{err}"
    );
    assert!(!env.all("provider_scans").await.contains_key("aurum:SN-30"));

    // An unknown provider is refused before anything is read, and recorded.
    let err = env
        .ingest_with(
            "argent",
            DeliverySource::File("/nonexistent".into()),
            IngestOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::UnknownProvider(_)), "{err}");
    let failed = env.ledger.list(Some("argent"), 5).await.unwrap();
    assert_eq!(failed[0].status, Status::Failed);
    assert!(failed[0]
        .error
        .as_deref()
        .unwrap()
        .contains("not in spec banknote"));
}

#[tokio::test]
async fn an_s3_delivery_loads_like_a_file() {
    let mut env = Env::new().await;
    let (s3, bucket) = common::bucket().await;
    let body = gzip(&std::fs::read(fixture("provider_update_aurum.jsonl")).unwrap());
    s3.put_object()
        .bucket(&bucket)
        .key("aurum/2026-12-01.jsonl.gz")
        .body(body.into())
        .send()
        .await
        .unwrap();
    env.clients.s3 = Some(s3);
    let source =
        DeliverySource::parse(&format!("s3://{bucket}/aurum/2026-12-01.jsonl.gz")).unwrap();
    let summary = env
        .ingest_with("aurum", source.clone(), IngestOptions::default())
        .await
        .unwrap();
    let rows = common::default_fixtures().provider_update.len() as u64;
    assert_eq!(summary.status, Status::Succeeded);
    assert_eq!((summary.counts.rows, summary.counts.inserted), (rows, rows));
    assert_eq!(env.all("provider_scans").await.len() as u64, rows);
    let again = env
        .ingest_with("aurum", source, IngestOptions::default())
        .await
        .unwrap();
    assert_eq!(again.status, Status::Unchanged);
    let missing = DeliverySource::parse(&format!("s3://{bucket}/nope.jsonl")).unwrap();
    let err = env
        .ingest_with("aurum", missing, IngestOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, IngestError::Read { .. }), "{err}");
}

#[tokio::test]
async fn a_crashed_delivery_resumes_under_its_id_without_writing_twice() {
    let env = Env::new().await;
    let set = common::default_fixtures();
    let aurum = complete_aurum(&set.provider_scans).len() as u64;
    let crash = IngestOptions {
        batch_docs: 100,
        stop_after_batches: Some(3),
        ..IngestOptions::default()
    };
    let first = fixture("provider_scans.jsonl");
    let stopped = env
        .ingest_with("aurum", DeliverySource::File(first.clone()), crash)
        .await
        .unwrap();
    assert_eq!(stopped.status, Status::Running);
    assert_eq!(env.all("provider_scans").await.len(), 300);
    let row = env.ledger.get(&stopped.delivery_id).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Running);
    assert!(row.finished_at.is_none());

    let resumed = env.ingest(&first).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.delivery_id, stopped.delivery_id);
    assert_eq!(resumed.status, Status::Succeeded);
    assert_eq!(resumed.counts.inserted, aurum);
    assert_eq!(resumed.counts.unchanged + resumed.counts.updated, 0);
    assert_eq!(env.all("provider_scans").await.len() as u64, aurum);
    assert!(env.all("provider_scans_history").await.is_empty());

    // The same for an update: a crash after one batch, then the rest; each replaced version
    // is in history once.
    let update = fixture("provider_update_aurum.jsonl");
    let crash = IngestOptions {
        batch_docs: 40,
        stop_after_batches: Some(1),
        ..IngestOptions::default()
    };
    let stopped = env
        .ingest_with("aurum", DeliverySource::File(update.clone()), crash)
        .await
        .unwrap();
    assert_eq!(stopped.status, Status::Running);
    let resumed = env.ingest(&update).await.unwrap();
    assert_eq!(resumed.delivery_id, stopped.delivery_id);
    let uninterrupted = {
        let other = Env::new().await;
        other.ingest(&first).await.unwrap();
        other.ingest(&update).await.unwrap()
    };
    assert_eq!(resumed.counts, uninterrupted.counts);
    assert_eq!(
        env.all("provider_scans_history").await.len() as u64,
        uninterrupted.counts.updated
    );
    let rows = env.ledger.list(Some("aurum"), 10).await.unwrap();
    assert_eq!(rows.len(), 2, "one ledger row per delivery, resumed or not");
}

#[tokio::test]
async fn a_rollback_leaves_documents_a_later_delivery_changed_again() {
    let env = Env::new().await;
    let set = common::default_fixtures();
    env.ingest(&fixture("provider_scans.jsonl")).await.unwrap();
    let update = env
        .ingest(&fixture("provider_update_aurum.jsonl"))
        .await
        .unwrap();
    // A third delivery changes five of the documents the update wrote.
    let later: Vec<Value> = set
        .provider_update
        .iter()
        .rev()
        .take(5)
        .map(|d| {
            let mut d = d.clone();
            d["scan"]["kurtosis"] = serde_json::json!(42.5);
            d
        })
        .collect();
    let lines: Vec<String> = later.iter().map(Value::to_string).collect();
    let third = temp_file("third.jsonl", lines.join("\n").as_bytes());
    let third = env.ingest(&third).await.unwrap();
    assert_eq!(third.counts.updated, 5);

    let rollback = env.rollback(&update.delivery_id).await.unwrap();
    assert_eq!(rollback.counts.changed_since, 5);
    assert_eq!(
        rollback.counts.rows,
        update.counts.updated + update.counts.inserted - 5
    );
    let notes: Vec<&str> = later
        .iter()
        .map(|d| d["note_id"].as_str().unwrap())
        .collect();
    let read = env.worker_kurtosis(&notes).await;
    assert!(notes.iter().all(|n| read[*n] == 42.5), "{read:?}");
    // The third delivery can still be undone on its own.
    let undo_third = env.rollback(&third.delivery_id).await.unwrap();
    assert_eq!(undo_third.counts.updated, 5);
    let read = env.worker_kurtosis(&notes).await;
    for d in set.provider_update.iter().rev().take(5) {
        let note = d["note_id"].as_str().unwrap();
        assert_eq!(read[note], d["scan"]["kurtosis"].as_f64().unwrap());
    }
}

#[tokio::test]
async fn a_fixture_load_starts_the_ground_truth_again() {
    let env = Env::new().await;
    let set = common::default_fixtures();
    let update = fixture(ml_pipeline::fixtures::files::PROVIDER_UPDATE_FILE);
    env.ingest(&fixture("provider_scans.jsonl")).await.unwrap();
    let before = env.ingest(&update).await.unwrap();
    assert!(before.counts.updated > 0, "{before:?}");
    assert!(!env.all("provider_scans_history").await.is_empty());

    ml_pipeline::fixtures::load::load(set, &env.spec, &env._db.pool, &env.mongo, "t")
        .await
        .unwrap();
    assert!(env.all("provider_scans_history").await.is_empty());
    assert_eq!(
        env.all("provider_scans").await.len(),
        set.provider_scans.len()
    );
    assert!(env.ledger.list(Some("aurum"), 10).await.unwrap().is_empty());
    // The same update is news again: the store no longer holds it.
    let again = env.ingest(&update).await.unwrap();
    assert_eq!(again.status, Status::Succeeded);
    assert!(again.counts.updated > 0, "{again:?}");
}
