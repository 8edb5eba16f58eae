//! The fixture generator is deterministic and the committed default set is what the seed gives.

use std::path::Path;

use ml_pipeline::fixtures;
use ml_pipeline::spec::PipelineSpec;
use ml_pipeline_tools::generator::generate::{generate, GenerateOptions};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn generate_into(dir: &Path, opts: &GenerateOptions) {
    fixtures::write_set(&generate(&PipelineSpec::banknote(), opts), dir).unwrap();
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let tmp = std::env::temp_dir().join(format!("fixtures-{}", uuid::Uuid::new_v4()));
    let opts = GenerateOptions {
        seed: 7,
        notes: 300,
        ..GenerateOptions::default()
    };
    generate_into(&tmp.join("a"), &opts);
    generate_into(&tmp.join("b"), &opts);
    generate_into(
        &tmp.join("c"),
        &GenerateOptions {
            seed: 8,
            ..opts.clone()
        },
    );
    let (a, b, c) = (
        files(&tmp.join("a")),
        files(&tmp.join("b")),
        files(&tmp.join("c")),
    );
    assert_eq!(a.len(), 9);
    assert_eq!(a, b);
    assert_ne!(
        a.iter().find(|f| f.0 == "notes.csv"),
        c.iter().find(|f| f.0 == "notes.csv")
    );
    std::fs::remove_dir_all(tmp).unwrap();
}

#[test]
fn the_committed_default_set_is_what_seed_42_generates() {
    let tmp = std::env::temp_dir().join(format!("fixtures-{}", uuid::Uuid::new_v4()));
    generate_into(&tmp, &GenerateOptions::default());
    let committed = files(&fixtures::files::default_dir());
    let fresh = files(&tmp);
    for ((name, want), (_, got)) in fresh.iter().zip(&committed) {
        assert!(want == got, "fixtures/default/{name} differs from a fresh `ml-pipeline-tools fixtures generate --seed 42`: regenerate it");
    }
    assert_eq!(committed.len(), fresh.len());
    std::fs::remove_dir_all(tmp).unwrap();
}

#[test]
fn a_written_set_reads_back_equal() {
    let tmp = std::env::temp_dir().join(format!("fixtures-{}", uuid::Uuid::new_v4()));
    let set = generate(
        &PipelineSpec::banknote(),
        &GenerateOptions {
            notes: 200,
            ..GenerateOptions::default()
        },
    );
    fixtures::write_set(&set, &tmp).unwrap();
    let back = fixtures::read_set(&tmp).unwrap();
    assert_eq!(back.notes, set.notes);
    assert_eq!(back.bundles, set.bundles);
    assert_eq!(back.seed_bundles, set.seed_bundles);
    assert_eq!(back.provider_scans, set.provider_scans);
    assert_eq!(back.provider_update, set.provider_update);
    assert_eq!(back.expectations, set.expectations);
    assert_eq!(back.poison, set.poison);
    assert_eq!(back.reference, set.reference);
    std::fs::remove_dir_all(tmp).unwrap();
}

#[test]
fn about_three_percent_of_requests_name_something_unknown() {
    let set = common_set();
    let unknown = set
        .expectations
        .values()
        .filter(|e| e.error.as_deref().is_some_and(|r| r.starts_with("unknown")))
        .count();
    let share = unknown as f64 / set.expectations.len() as f64;
    assert!((0.02..=0.045).contains(&share), "{share}");
}

fn common_set() -> fixtures::FixtureSet {
    fixtures::read_set(&fixtures::files::default_dir()).unwrap()
}
