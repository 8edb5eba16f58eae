//! The real local services, each test on its own resources: SQS send, long poll and batch
//! delete; redrive to a DLQ; S3 object versions; migrations, fixture load, and the batch lookups
//! (`= ANY($1)` in PostgreSQL, `$in` in MongoDB) that enrichment relies on.

use crate::common;

use std::collections::{BTreeSet, HashMap};

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, QueueAttributeName, SendMessageBatchRequestEntry,
};
use ml_pipeline::enrich::{DocumentSource, FieldValue, ReferenceSource};
use ml_pipeline::spec::PipelineSpec;

async fn queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: HashMap<QueueAttributeName, String>,
) -> String {
    sqs.create_queue()
        .queue_name(name)
        .set_attributes(Some(attrs))
        .send()
        .await
        .expect("LocalStack SQS is up (make up)")
        .queue_url
        .expect("a queue URL")
}

#[tokio::test]
async fn sqs_sends_long_polls_and_deletes_in_batches() {
    let sqs = ml_pipeline::aws::sqs(&common::aws().await);
    let url = queue(
        &sqs,
        &format!("test-batch-{}", common::suffix()),
        HashMap::new(),
    )
    .await;
    let entries: Vec<_> = (0..10)
        .map(|i| {
            SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(format!("body-{i}"))
                .build()
                .unwrap()
        })
        .collect();
    let sent = sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.successful().len(), 10);
    assert!(sent.failed().is_empty());

    let mut bodies = BTreeSet::new();
    let mut receipts = Vec::new();
    while bodies.len() < 10 {
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        assert!(
            !got.messages().is_empty(),
            "a long poll returned nothing with messages queued"
        );
        for m in got.messages() {
            bodies.insert(m.body().unwrap().to_owned());
            receipts.push(m.receipt_handle().unwrap().to_owned());
        }
    }
    assert_eq!(bodies.len(), 10);
    let deletes: Vec<_> = receipts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(format!("d{i}"))
                .receipt_handle(r)
                .build()
                .unwrap()
        })
        .collect();
    let deleted = sqs
        .delete_message_batch()
        .queue_url(&url)
        .set_entries(Some(deletes))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.successful().len(), 10);
    let after = sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(after.messages().is_empty(), "deleted messages came back");
}

#[tokio::test]
async fn a_message_reaches_the_dlq_after_max_receive_count() {
    let sqs = ml_pipeline::aws::sqs(&common::aws().await);
    let id = common::suffix();
    let dlq = queue(&sqs, &format!("test-dlq-{id}"), HashMap::new()).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("the DLQ has an ARN");
    let redrive =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string();
    let attrs = HashMap::from([
        (QueueAttributeName::RedrivePolicy, redrive),
        (QueueAttributeName::VisibilityTimeout, "1".to_owned()),
    ]);
    let url = queue(&sqs, &format!("test-redrive-{id}"), attrs).await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("poison")
        .send()
        .await
        .unwrap();

    // Received twice and never deleted; the next receive moves it (as AWS does).
    let mut receives = 0;
    for _ in 0..20 {
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(2)
            .send()
            .await
            .unwrap();
        receives += got.messages().len();
        let in_dlq = sqs
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        if let Some(m) = in_dlq.messages().first() {
            assert_eq!(m.body(), Some("poison"));
            assert_eq!(receives, 2, "moved after exactly maxReceiveCount receives");
            return;
        }
    }
    panic!("the message never reached the DLQ ({receives} receives)");
}

#[tokio::test]
async fn s3_keeps_both_versions_of_an_object() {
    let (s3, bucket) = common::bucket().await;
    for body in ["first", "second"] {
        s3.put_object()
            .bucket(&bucket)
            .key("models/m/aliases/production")
            .body(body.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .prefix("models/m/aliases/production")
        .send()
        .await
        .unwrap();
    let mut ids: Vec<_> = versions
        .versions()
        .iter()
        .map(|v| {
            (
                v.is_latest().unwrap_or(false),
                v.version_id().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 2);
    ids.sort();
    let mut bodies = Vec::new();
    for (_, id) in &ids {
        let out = s3
            .get_object()
            .bucket(&bucket)
            .key("models/m/aliases/production")
            .version_id(id)
            .send()
            .await
            .unwrap();
        bodies.push(String::from_utf8(out.body.collect().await.unwrap().to_vec()).unwrap());
    }
    // Sorted by is_latest: the older version first.
    assert_eq!(bodies, ["first", "second"]);
}

#[tokio::test]
async fn fixtures_load_idempotently_and_batch_lookups_read_them_back() {
    let loaded = common::Loaded::new().await;
    let set = common::default_fixtures();
    let spec = PipelineSpec::banknote();
    // Loading again leaves the same data.
    ml_pipeline::fixtures::load::load(set, &spec, &loaded.db.pool, &loaded.mongo, "default")
        .await
        .unwrap();
    let (scanners, examples): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM scanners), (SELECT count(*) FROM training_examples)",
    )
    .fetch_one(&loaded.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (scanners as usize, examples as usize),
        (set.reference.scanners.len(), set.notes.len())
    );

    // PostgreSQL: one = ANY($n) statement for both lookups, unknown keys simply absent.
    let keys = [
        vec!["sc-01".to_owned(), "sc-02".to_owned(), "sc-99".to_owned()],
        vec!["frb".to_owned(), "bank of atlantis".to_owned()],
    ];
    let keys: Vec<&[String]> = keys.iter().map(Vec::as_slice).collect();
    let found = loaded
        .enricher
        .reference
        .fetch(&spec.lookups, &keys)
        .await
        .unwrap();
    // The worker's reference cache answers the same, asking PostgreSQL once for both calls.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cached = ml_pipeline::enrich::cache::CachedReference::new(
        common::harness::Counting {
            inner: loaded.enricher.reference.clone(),
            calls: calls.clone(),
        },
        std::time::Duration::from_secs(60),
    );
    assert_eq!(cached.fetch(&spec.lookups, &keys).await.unwrap(), found);
    assert_eq!(cached.fetch(&spec.lookups, &keys).await.unwrap(), found);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(found[0].len(), 2);
    assert_eq!(found[0]["sc-01"], set.reference.scanners[0].unit_code);
    assert_eq!(
        found[1],
        HashMap::from([("frb".to_owned(), "US-FED".to_owned())])
    );

    // MongoDB: one $in for every note, only the spec's paths read.
    let notes: Vec<String> = set
        .notes
        .iter()
        .take(300)
        .map(|n| n.note_id.clone())
        .chain(["SN-999999".to_owned()])
        .collect();
    let paths = spec.document_paths();
    let docs = loaded
        .enricher
        .documents
        .fetch(spec.documents.as_ref().unwrap(), &paths, &notes)
        .await
        .unwrap();
    assert_eq!(
        docs.keys_found(),
        300,
        "every known note, not the unknown one"
    );
    assert!(
        docs.of(300).is_empty(),
        "the unknown note, asked last, has no document"
    );
    // In chunks (2 keys: 3 statements; 7 keys: 43 finds), both sources answer the same.
    let chunked = loaded.enricher.clone();
    let chunks = |chunk_keys| ml_pipeline::enrich::source::LookupLimits {
        chunk_keys,
        ..Default::default()
    };
    let (reference, documents) = (
        chunked.reference.with_limits(chunks(2)),
        chunked.documents.with_limits(chunks(7)),
    );
    assert_eq!(reference.fetch(&spec.lookups, &keys).await.unwrap(), found);
    let in_chunks = documents
        .fetch(spec.documents.as_ref().unwrap(), &paths, &notes)
        .await
        .unwrap();
    assert_eq!(in_chunks.keys_found(), docs.keys_found());
    for (place, ds) in docs.iter() {
        assert_eq!(
            in_chunks.of(place).len(),
            ds.len(),
            "{}",
            notes[place as usize]
        );
        assert!(
            ds.iter().all(|d| in_chunks.of(place).contains(d)),
            "{}",
            notes[place as usize]
        );
    }
    // The first note was asked first.
    let first = &set.notes[0];
    let aurum = docs.of(0).iter().find(|d| &*d.provider == "aurum");
    let lumen = docs.of(0).iter().find(|d| &*d.provider == "lumen");
    match (aurum, lumen) {
        (Some(a), _) => assert_eq!(
            a.field("scan.kurtosis"),
            Some(&FieldValue::Number(first.curtosis))
        ),
        (None, Some(l)) => assert!(matches!(
            l.field("wavelet.curt_centi"),
            Some(FieldValue::Number(_))
        )),
        (None, None) => panic!("note {} has no document", first.note_id),
    }
}

#[tokio::test]
async fn a_batch_lookup_reads_its_documents_in_one_round_trip_when_they_fit_one_reply() {
    use mongodb::event::command::CommandEvent;
    use std::sync::{Arc, Mutex};

    let loaded = common::Loaded::new().await;
    let set = common::default_fixtures();
    let spec = PipelineSpec::banknote();
    // The commands the driver sends, seen by its own command monitoring: what went on the wire.
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = sent.clone();
    let mut options = mongodb::options::ClientOptions::parse(common::mongodb_uri())
        .await
        .unwrap();
    options.command_event_handler = Some(mongodb::event::EventHandler::callback(
        move |e: CommandEvent| {
            if let CommandEvent::Started(s) = e {
                seen.lock().unwrap().push(s.command_name);
            }
        },
    ));
    let db = mongodb::Client::with_options(options)
        .unwrap()
        .database(loaded.mongo.name());
    let notes: Vec<String> = set
        .notes
        .iter()
        .take(1_000)
        .map(|n| n.note_id.clone())
        .collect();
    let limits = |chunk_keys| ml_pipeline::enrich::source::LookupLimits {
        chunk_keys,
        ..Default::default()
    };
    // Every key in one chunk: one find.
    let documents = ml_pipeline::enrich::mongo::MongoDocuments::new(db).with_limits(limits(1_000));
    let (doc_spec, paths) = (spec.documents.as_ref().unwrap(), spec.document_paths());
    let count = |names: &[String], name: &str| names.iter().filter(|n| *n == name).count();

    let found = documents.fetch(doc_spec, &paths, &notes).await.unwrap();
    let answered = found.len();
    // More documents than keys: a cursor batch the size of the keys would come back full and
    // need a getMore.
    assert!(
        answered > notes.len(),
        "{answered} documents for {} notes",
        notes.len()
    );
    let names = std::mem::take(&mut *sent.lock().unwrap());
    assert_eq!(
        (count(&names, "find"), count(&names, "getMore")),
        (1, 0),
        "{names:?}"
    );

    // In chunks (the default 500 keys, and 300): one find per chunk, each in one round trip,
    // the same documents.
    for (chunk_keys, finds) in [
        (ml_pipeline::enrich::source::DEFAULT_CHUNK_KEYS, 2),
        (300, 4),
    ] {
        let chunked = documents.clone().with_limits(limits(chunk_keys));
        let in_chunks = chunked.fetch(doc_spec, &paths, &notes).await.unwrap();
        assert_eq!(in_chunks.len(), answered);
        let names = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(
            (count(&names, "find"), count(&names, "getMore")),
            (finds, 0),
            "{chunk_keys} keys a chunk: {names:?}"
        );
    }
}

#[tokio::test]
async fn a_session_lock_is_held_once_and_free_as_soon_as_it_is_released() {
    use ml_pipeline::db::SessionLock;
    let db = common::TestDb::new().await;
    let key = "hashtext('test.lock/' || $1)";
    let take = |name: &'static str| SessionLock::try_take(&db.pool, key, name);
    let held = take("a").await.unwrap().expect("a free lock is taken");
    assert!(
        take("a").await.unwrap().is_none(),
        "held by another session"
    );
    let other = take("b")
        .await
        .unwrap()
        .expect("another name's lock is its own");
    // Released, it is free at once: a run started right after the last one ends (a retrain
    // on a timer) must not be refused. A dropped connection frees it only once the server has
    // noticed the disconnect; a test run on a busy machine saw a retrain refused that way.
    for round in 0..20 {
        let lock = take("c").await.unwrap();
        lock.unwrap_or_else(|| panic!("round {round}: free right after its release"))
            .release()
            .await;
    }
    held.release().await;
    take("a")
        .await
        .unwrap()
        .expect("free at once")
        .release()
        .await;
    other.release().await;
}
