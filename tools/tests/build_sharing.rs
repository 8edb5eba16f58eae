//! The release build and the test build compile the shared dependencies with the same
//! features, so `cargo test --release --workspace` reuses what `cargo build --release` built
//! (README, "The two commands"). A dev-dependency that turns on a new feature of a shared crate
//! would make the tests compile that crate, and everything above it, a second time: this test
//! names the crate and the features so they can be declared in the worker's Cargo.toml.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Package -> features, from `cargo tree` over the given selection and edge kinds.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "tree",
            "--locked",
            "--offline",
            "--prefix",
            "none",
            "-f",
            "{p}|{f}",
        ])
        .args(args)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((package, feats)) = line.trim_end_matches(" (*)").split_once('|') else {
            continue;
        };
        map.entry(package.to_owned()).or_default().extend(
            feats
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
        );
    }
    map
}

/// Only crates compiled for the target are compared: build scripts' and proc-macros'
/// dependencies are compiled for the host, apart from them.
#[test]
fn dev_dependencies_turn_on_no_feature_of_a_shared_dependency() {
    let release = features(&["-p", "ml-pipeline", "-e", "normal,no-proc-macro"]);
    let tests = features(&["--workspace", "-e", "normal,dev,no-proc-macro"]);
    let drifted: Vec<String> = release
        .iter()
        .filter_map(|(package, feats)| {
            let extra: Vec<&String> = tests.get(package)?.difference(feats).collect();
            (!extra.is_empty()).then(|| format!("{package}: {extra:?}"))
        })
        .collect();
    assert!(
        drifted.is_empty(),
        "the test build turns on features the release build lacks, so it would compile these \
         crates (and all above them) twice; declare the features in Cargo.toml's [dependencies]:\n{}",
        drifted.join("\n")
    );
}
