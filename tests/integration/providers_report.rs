//! `providers report` against the real servers: a worker answers traffic whose notes are
//! picked from the stored documents (some only aurum covers, some only lumen, some both, some
//! none), aurum's second delivery makes the providers disagree, and the report's numbers are
//! checked against counts made here straight from the stored BSON and the sent rows.

use crate::common;

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use common::harness::TestWorker;
use futures::TryStreamExt;
use ml_pipeline::bundle::compression::ContentEncoding;
use ml_pipeline::providers::report::{self, ReportOptions};
use ml_pipeline::providers::{
    DeliverySource, DocumentStore, Ingest, IngestOptions, IngestRequest, Ledger, Silent,
    SourceClients,
};
use ml_pipeline::spec::PipelineSpec;
use mongodb::bson::{doc, Bson, Document};
use serde_json::json;

/// A finite number at `path` (`scan.kurtosis`) of a stored document.
fn number(doc: &Document, path: &str) -> Option<f64> {
    let (outer, inner) = path.split_once('.').unwrap();
    match doc.get_document(outer).ok()?.get(inner)? {
        Bson::Double(v) if v.is_finite() => Some(*v),
        Bson::Int32(v) => Some(f64::from(*v)),
        Bson::Int64(v) => Some(*v as f64),
        _ => None,
    }
}

/// Per note: (aurum's curtosis and entropy, lumen's), canonical, for complete documents only.
type Stored = BTreeMap<String, [Option<(f64, f64)>; 2]>;

async fn stored(mongo: &mongodb::Database) -> Stored {
    let mut out = Stored::new();
    let mut cursor = mongo
        .collection::<Document>("provider_scans")
        .find(doc! {})
        .await
        .unwrap();
    while let Some(d) = cursor.try_next().await.unwrap() {
        let note = d.get_str("note_id").unwrap().to_owned();
        let entry = out.entry(note).or_default();
        match d.get_str("provider").unwrap() {
            "aurum" => {
                entry[0] = number(&d, "scan.kurtosis").zip(number(&d, "scan.entropy"));
            }
            "lumen" => {
                entry[1] = number(&d, "wavelet.curt_centi")
                    .zip(number(&d, "wavelet.ent_milli"))
                    .map(|(c, e)| (c * 0.01, e * 0.001));
            }
            other => panic!("unexpected provider {other}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_coverage_agreement_and_freshness_from_the_stored_data() {
    let t = TestWorker::new(30).await;
    let spec = PipelineSpec::banknote();
    let mongo = &t.loaded.mongo;
    let pool = &t.loaded.db.pool;
    let before = stored(mongo).await;

    // Traffic: 6 notes only aurum can enrich, 5 only lumen, 4 both, 3 no provider (unknown).
    let pick = |want: [bool; 2], n: usize| -> Vec<String> {
        before
            .iter()
            .filter(|(_, v)| [v[0].is_some(), v[1].is_some()] == want)
            .take(n)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let (only_aurum, only_lumen, both) = (
        pick([true, false], 6),
        pick([false, true], 5),
        pick([true, true], 4),
    );
    let unknown: Vec<String> = (0..3).map(|i| format!("SN-NONE-{i}")).collect();
    let notes: Vec<&String> = only_aurum
        .iter()
        .chain(&only_lumen)
        .chain(&both)
        .chain(&unknown)
        .collect();
    assert_eq!(notes.len(), 18);
    let rows: Vec<_> = notes
        .iter()
        .enumerate()
        .map(|(i, note)| {
            json!([
                format!("r-{i}"),
                note,
                "Bank of England",
                "sc-09",
                2.1305,
                12.58878
            ])
        })
        .collect();
    let bundle = json!({
        "bundle_id": "report-traffic-1",
        "model": "banknote",
        "columns": ["id", "note", "issuer", "scanner", "variance", "skewness"],
        "rows": rows,
    });
    let window_start = Utc::now() - chrono::TimeDelta::minutes(5);
    let (stop, handle) = t.spawn(t.config(), Default::default());
    t.send_json(&[bundle], ContentEncoding::Identity).await;
    let answers = t.outputs(1).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(answers.len(), 1, "the traffic bundle is answered");

    // Aurum's second delivery: rescans change values, so the providers now disagree.
    let store = DocumentStore::new(mongo.clone(), spec.documents.as_ref().unwrap());
    store.ensure_indexes().await.unwrap();
    let ledger = Ledger::new(pool.clone());
    let ingest = Ingest {
        spec: &spec,
        store: &store,
        ledger: &ledger,
        clients: &SourceClients::default(),
        progress: &Silent,
    };
    let update = ingest
        .run(
            &IngestRequest {
                provider: "aurum".into(),
                source: DeliverySource::File(
                    ml_pipeline::fixtures::files::default_dir().join("provider_update_aurum.jsonl"),
                ),
                format: None,
                delivery_id: None,
            },
            IngestOptions::default(),
        )
        .await
        .unwrap();
    let after = stored(mongo).await;

    let mut options = ReportOptions::since(window_start, "banknote");
    options.disagreements = 5;
    options.metrics_url = Some("http://127.0.0.1:9/metrics".into());
    let r = report::gather(&spec, pool, mongo, &options).await.unwrap();

    // Traffic coverage: what the worker counted for the rows sent.
    let traffic = &r.coverage.traffic;
    assert_eq!(traffic.total, 18, "{traffic:?}");
    assert_eq!(traffic.per_provider["aurum"], 10);
    assert_eq!(traffic.per_provider["lumen"], 9);
    assert_eq!(traffic.none, 3);

    // Training-data coverage: every fixture note, looked up now (after the update).
    let training_notes: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT example_id FROM training_examples")
            .fetch_all(pool)
            .await
            .unwrap();
    let covered = |i: usize| {
        training_notes
            .iter()
            .filter(|n| after.get(*n).is_some_and(|v| v[i].is_some()))
            .count() as u64
    };
    let training = &r.coverage.training;
    assert_eq!(training.total, training_notes.len() as u64);
    assert_eq!(training.per_provider["aurum"], covered(0));
    assert_eq!(training.per_provider["lumen"], covered(1));
    let none = training_notes
        .iter()
        .filter(|n| {
            after
                .get(*n)
                .is_none_or(|v| v[0].is_none() && v[1].is_none())
        })
        .count() as u64;
    assert_eq!(training.none, none);
    assert!(none > 0, "some fixture notes lack a complete document");

    // Agreement: aurum minus lumen per feature, beyond 0.01, over notes both cover.
    let pair = &r.agreement[0];
    assert_eq!(pair.providers, ["aurum".to_owned(), "lumen".to_owned()]);
    let shared: Vec<&[Option<(f64, f64)>; 2]> = after
        .values()
        .filter(|v| v[0].is_some() && v[1].is_some())
        .collect();
    for (i, feature) in ["curtosis", "entropy"].iter().enumerate() {
        let diffs: Vec<f64> = shared
            .iter()
            .map(|v| {
                let (a, b) = (v[0].unwrap(), v[1].unwrap());
                if i == 0 {
                    a.0 - b.0
                } else {
                    a.1 - b.1
                }
            })
            .collect();
        let beyond = diffs.iter().filter(|d| d.abs() > 0.01).count() as u64;
        let s = pair.features[i].summary.as_ref().unwrap();
        assert_eq!(pair.features[i].feature, *feature);
        assert_eq!(s.notes, diffs.len() as u64);
        assert_eq!(s.beyond_tolerance, beyond, "{feature}");
        assert!(
            beyond > 0,
            "the rescans moved some shared notes beyond 0.01"
        );
        let max = diffs.iter().fold(0.0f64, |m, d| m.max(d.abs()));
        assert!((s.max_abs - max).abs() < 1e-9, "{} vs {max}", s.max_abs);
    }
    // Documents of notes both providers have, complete or not.
    let mongo_both = {
        let mut per_note: HashMap<String, usize> = HashMap::new();
        let mut c = mongo
            .collection::<Document>("provider_scans")
            .find(doc! {})
            .await
            .unwrap();
        while let Some(d) = c.try_next().await.unwrap() {
            *per_note
                .entry(d.get_str("note_id").unwrap().to_owned())
                .or_default() += 1;
        }
        per_note.values().filter(|n| **n == 2).count() as u64
    };
    assert_eq!(pair.notes_both, mongo_both);
    assert_eq!(r.disagreements.len(), 5);
    let worst = &r.disagreements[0];
    let v = after[&worst.note];
    let (a, b) = (v[0].unwrap(), v[1].unwrap());
    let expected = if worst.feature == "curtosis" {
        (a.0, b.0)
    } else {
        (a.1, b.1)
    };
    assert!(
        (worst.values[0] - expected.0).abs() < 1e-9 && (worst.values[1] - expected.1).abs() < 1e-9
    );
    assert!(r
        .disagreements
        .windows(2)
        .all(|w| w[0].tolerances_apart >= w[1].tolerances_apart));

    // Freshness: aurum's last delivery is the update; its dated documents are those it wrote.
    let aurum = &r.freshness[0];
    assert_eq!(
        aurum.last_delivery.as_ref().unwrap().delivery_id,
        update.delivery_id
    );
    let dated = mongo
        .collection::<Document>("provider_scans")
        .count_documents(doc! {"provider": "aurum", "_delivery": {"$exists": true}})
        .await
        .unwrap();
    assert_eq!(aurum.documents_dated, dated);
    assert_eq!(dated, update.counts.inserted + update.counts.updated);
    assert!(aurum.median_document_age_hours.unwrap() < 1.0);
    let lumen = &r.freshness[1];
    assert!(lumen.last_delivery.is_none());
    assert_eq!(lumen.documents_dated, 0);
    assert!(lumen.documents > 0);

    // No HTTP deliveries; the serving section says why it has no latency.
    assert!(r.api.is_empty());
    assert!(r.serving.enrichment_latency.is_empty());
    assert!(r
        .serving
        .enrichment_latency_note
        .as_ref()
        .unwrap()
        .contains("127.0.0.1:9"));
    let predicted: u64 = r.serving.predictions.iter().map(|p| p.predictions).sum();
    let labelled = answers[0]["rows"].as_array().unwrap().len() as u64;
    assert_eq!(predicted, labelled, "{:?}", answers[0]);
    assert_eq!(labelled, 15, "every note some provider covers is predicted");

    // The three forms.
    let text = report::text::render(&r);
    for needle in [
        "traffic covered",
        "agreement aurum vs lumen",
        "freshness",
        &update.delivery_id,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["coverage"]["traffic"]["total"], 18);
    let dir = std::env::temp_dir().join(format!("report-{}", common::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let html_path = dir.join("providers.html");
    report::html::write_html(&html_path, &r).unwrap();
    let html = std::fs::read_to_string(&html_path).unwrap();
    for id in [
        "coverage",
        "agreement-aurum-lumen-curtosis",
        "agreement-aurum-lumen-entropy",
        "disagreements",
        "freshness",
        "serving-predictions",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "figure {id} missing"
        );
    }
    assert!(html.contains("<svg"), "figures are inline SVG");
    std::fs::remove_dir_all(&dir).unwrap();
}
