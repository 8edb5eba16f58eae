//! Benchmarks of the worker's in-process path on the default fixtures (`fixtures/default`),
//! with a linear and a Gaussian SVM fitted on the fixture notes by the crate's own
//! `train::fit::fit` and the CLI's default hyperparameters.
//!
//! Every benchmark reports records per second (`Throughput::Elements`). Criterion runs on one
//! thread, so that is records per second per core. Nothing here touches the network: enrichment
//! answers from in-memory maps built from the fixture set (see `common`), so the figures are the
//! CPU cost of a batch, without the SQS, PostgreSQL and MongoDB round trips.
//!
//! Groups:
//! - `decode`: `bundle::decode` of a v1 bundle of 100 and of 1 000 records, plain and gzip.
//! - `prepare_in_memory`: `batch::prepare` of 1 bundle (100 records) and of 10 bundles
//!   (1 000 records): standardize, enrichment from memory, normalize into the matrix.
//! - `stages`: the parts of `prepare` alone, on one bundle: `StandardBatch::standardize_row`
//!   per row (keys interned once per distinct text); the in-memory sources answering each
//!   distinct key once (the cost of this benchmark's stand-ins, to tell apart from the worker's
//!   own); and `Normalizer` writing each record's row of the canonical matrix (this is how the
//!   matrix is built: `prepare` builds it while normalizing, there is no separate step).
//! - `predict_linear`, `predict_gaussian`: `Classifier::decision_values` (scaling included) on
//!   1, 100 and 10 000 canonical rows (the fixture notes, repeated).
//! - `encode`: `Answer::encode` of a 100-record answer, identity, gzip and zstd.
//! - `in_process_path`: 10 bundles x 100 records from message bodies to answer bodies: decode,
//!   prepare (in memory), decision values (linear, then Gaussian), answers, encode (identity).
//! - `prediction_log`: the log's cost of 10 bundles x 100 predicted records with every bundle
//!   logged (`ML_PIPELINE_PREDICTION_LOG=all`): `capture` on the worker's step, and the writer's
//!   `prediction_log::encode` of those rows as binary `COPY` into its reused buffer.
//!
//! Run all: `cargo bench --bench pipeline`. One group: `cargo bench --bench pipeline -- decode`.
//! Shorter runs: `cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3`.
//! Setup reads the fixtures and fits both models first (a few seconds).

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use tokio::runtime::Runtime;

use ml_pipeline::batch::prepare;
use ml_pipeline::bundle::ColumnIndex;
use ml_pipeline::bundle::{decode, ContentEncoding, InputBundle, Limits};
use ml_pipeline::enrich::{DocumentSource, Enrichment, ReferenceSource};
use ml_pipeline::learning::prediction_log::{capture, encode, LogBatch, ModelFacts};
use ml_pipeline::learning::LogMode;
use ml_pipeline::model::Classifier;
use ml_pipeline::normalize::Normalizer;
use ml_pipeline::standardize::StandardBatch;

use common::{body, runtime, workload, Workload};

fn decode_bundles(c: &mut Criterion) {
    let w = workload();
    let mut group = c.benchmark_group("decode");
    for bundles in [1, 10] {
        let bundle = w.merged_bundle(bundles);
        let records = bundle.rows.len();
        group.throughput(Throughput::Elements(records as u64));
        for encoding in [ContentEncoding::Identity, ContentEncoding::Gzip] {
            let message = body(&bundle, encoding);
            let limits = Limits::default();
            group.bench_with_input(
                BenchmarkId::new(encoding.to_string(), records),
                &message,
                |b, message| {
                    b.iter(|| decode(black_box(message), encoding.attribute(), &limits).unwrap())
                },
            );
        }
    }
    group.finish();
}

fn prepare_batches(c: &mut Criterion) {
    let w = workload();
    let rt = runtime();
    let mut group = c.benchmark_group("prepare_in_memory");
    for n in [1, 10] {
        let bundles = w.bundles(n);
        let records: usize = bundles.iter().map(InputBundle::len).sum();
        group.throughput(Throughput::Elements(records as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(records),
            &bundles,
            |b, bundles| b.iter(|| rt.block_on(prepare(&w.spec, bundles, &w.enricher))),
        );
    }
    group.finish();
}

fn stages(c: &mut Criterion) {
    let w = workload();
    let bundle = &w.set.bundles[0];
    let index = ColumnIndex::new(&w.spec, &bundle.columns).expect("fixture columns");
    let records = bundle.rows.len();
    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(records as u64));

    let standardize = || {
        let mut batch = StandardBatch::new(&w.spec);
        let staged: Vec<_> = bundle
            .rows
            .iter()
            .map(|row| batch.standardize_row(&index, row))
            .collect();
        (batch, staged)
    };
    group.bench_function(BenchmarkId::new("standardize", records), |b| {
        b.iter(|| black_box(standardize()))
    });

    let (batch, staged) = standardize();
    let rt = runtime();
    group.bench_function(BenchmarkId::new("enrich_in_memory", records), |b| {
        b.iter(|| enrichment_of(w, &rt, black_box(&batch)))
    });

    let enrichment = enrichment_of(w, &rt, &batch);
    let n_features = w.spec.features.len();
    group.bench_function(BenchmarkId::new("normalize_into_matrix", records), |b| {
        b.iter(|| {
            let normalizer = Normalizer::new(&w.spec, &batch, &enrichment);
            let mut cells = Vec::with_capacity(records * n_features);
            let mut rows = 0;
            for r in staged.iter().flatten() {
                let start = cells.len();
                cells.resize(start + n_features, 0.0);
                match normalizer.normalize(&batch.record(*r), &mut cells[start..]) {
                    Ok(()) => rows += 1,
                    Err(_) => cells.truncate(start),
                }
            }
            Array2::from_shape_vec((rows, n_features), cells).expect("rows x features")
        })
    });
    group.finish();
}

/// What the in-memory sources answer for a standardized batch, asked as `prepare` asks: each
/// distinct key once.
fn enrichment_of(w: &Workload, rt: &Runtime, batch: &StandardBatch<'_>) -> Enrichment {
    let lookup_keys: Vec<&[String]> = batch.lookups.iter().map(|t| t.keys()).collect();
    let doc_keys = batch
        .documents
        .as_ref()
        .expect("the banknote spec has documents")
        .keys();
    let docs = w
        .spec
        .documents
        .as_ref()
        .expect("the banknote spec has documents");
    let paths = w.spec.document_paths();
    Enrichment {
        lookups: rt
            .block_on(w.enricher.reference.fetch(&w.spec.lookups, &lookup_keys))
            .unwrap(),
        documents: rt
            .block_on(w.enricher.documents.fetch(docs, &paths, doc_keys))
            .unwrap(),
        refused: Default::default(),
        unavailable: Default::default(),
    }
}

fn predict(c: &mut Criterion) {
    let w = workload();
    predict_group(c, "predict_linear", &w.linear, w);
    predict_group(c, "predict_gaussian", &w.gaussian, w);
}

fn predict_group(c: &mut Criterion, name: &str, classifier: &Classifier, w: &Workload) {
    let mut group = c.benchmark_group(name);
    for rows in [1, 100, 10_000] {
        let matrix = w.canonical_rows(rows);
        // `decision_values` consumes its matrix; the copy is made outside the measurement.
        let size = if rows > 100 {
            BatchSize::LargeInput
        } else {
            BatchSize::SmallInput
        };
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::from_parameter(rows), &matrix, |b, matrix| {
            b.iter_batched(|| matrix.clone(), |m| classifier.decision_values(m), size)
        });
    }
    group.finish();
}

/// What the monitor adds to a batch on the answer's path: binning its canonical rows for the
/// drift window (set beside `predict_linear` of the same rows).
fn drift_observe(c: &mut Criterion) {
    let w = workload();
    let spec = ml_pipeline::spec::PipelineSpec::banknote();
    let stats = ml_pipeline::model::TrainingStats::compute(
        &spec.feature_names(),
        w.canonical_rows(2000).view(),
    );
    let mut group = c.benchmark_group("drift_observe");
    for rows in [100, 10_000] {
        let matrix = w.canonical_rows(rows);
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_with_input(BenchmarkId::from_parameter(rows), &matrix, |b, matrix| {
            b.iter(|| ml_pipeline::monitor::drift::Counts::of(&stats, black_box(matrix.view())))
        });
    }
    group.finish();
}

fn encode_answers(c: &mut Criterion) {
    let w = workload();
    let rt = runtime();
    let answer = w.answers(&rt, w.bundles(1)).remove(0);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(answer.records() as u64));
    for encoding in [
        ContentEncoding::Identity,
        ContentEncoding::Gzip,
        ContentEncoding::Zstd,
    ] {
        group.bench_with_input(
            BenchmarkId::new(encoding.to_string(), answer.records()),
            &answer,
            |b, answer| b.iter(|| answer.encode(encoding)),
        );
    }
    group.finish();
}

fn whole_path(c: &mut Criterion) {
    let w = workload();
    let rt = runtime();
    let limits = Limits::default();
    let messages: Vec<String> = w.set.bundles[..10]
        .iter()
        .map(|b| body(b, ContentEncoding::Identity))
        .collect();
    let records: usize = w.set.bundles[..10].iter().map(|b| b.rows.len()).sum();
    let mut group = c.benchmark_group("in_process_path");
    group.throughput(Throughput::Elements(records as u64));
    for (kernel, model) in [("linear", &w.linear), ("gaussian", &w.gaussian)] {
        group.bench_function(BenchmarkId::new(kernel, records), |b| {
            b.iter(|| {
                let bundles = messages
                    .iter()
                    .map(|m| decode(black_box(m), None, &limits).unwrap())
                    .collect();
                w.answers_by(model, &rt, bundles)
                    .iter()
                    .map(|a| a.encode(ContentEncoding::Identity))
                    .collect::<Vec<String>>()
            })
        });
    }
    group.finish();
}

fn prediction_log(c: &mut Criterion) {
    let w = workload();
    let rt = runtime();
    let bundles = w.bundles(10);
    let prepared = rt.block_on(prepare(&w.spec, &bundles, &w.enricher));
    let scores = w.gaussian.decision_values(prepared.matrix.clone());
    let capture_all = || {
        capture(
            LogMode::All,
            &bundles,
            &prepared.plans,
            &prepared.matrix,
            &scores,
            &[],
        )
    };
    let batch = LogBatch {
        model: std::sync::Arc::new(ModelFacts {
            name: w.spec.name.clone(),
            version: 1,
            features: w.spec.features.iter().map(|f| f.name.clone()).collect(),
            classes: vec!["fake".into(), "real".into()],
        }),
        predicted_at: chrono::Utc::now(),
        bundles: capture_all().into_iter().flatten().collect(),
    };
    let records: usize = batch.bundles.iter().map(|b| b.records.len()).sum();
    let mut group = c.benchmark_group("prediction_log");
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function(BenchmarkId::new("capture", records), |b| {
        b.iter(capture_all)
    });
    let mut buf = Vec::new();
    group.bench_function(BenchmarkId::new("encode_binary_copy", records), |b| {
        b.iter(|| encode(&mut buf, std::slice::from_ref(black_box(&batch))))
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_bundles,
    prepare_batches,
    stages,
    predict,
    drift_observe,
    encode_answers,
    whole_path,
    prediction_log
);
criterion_main!(benches);
