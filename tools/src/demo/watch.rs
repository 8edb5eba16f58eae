//! The demo's model watch: traffic whose `variance` a replaced scanner fleet reports three times
//! too large reaches the worker; its monitor measures the served features against the training
//! statistics stored with the model and the PSI of `variance` crosses its threshold; `retrain`
//! starts for drift and records it as the reason; the challenger it trains, not promoted, gets
//! the `challenger` alias, and the worker shadow-scores it beside production on the next
//! traffic. `ml-pipeline models compare` then shows both, and writes its HTML page.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use ml_pipeline::learning::retrain::{RetrainOptions, RetrainOutcome};

use super::learning::Running;

/// The shadow alias the demo's worker follows.
pub const CHALLENGER: &str = "challenger";

/// `bundles` with fresh ids (suffixed by `tag`) and every request `variance` times `factor`.
fn shifted(bundles: &[Value], tag: &str, factor: f64) -> Vec<Value> {
    let mut out = bundles.to_vec();
    for b in &mut out {
        for key in ["bundle_id", "batch_id"] {
            if let Some(id) = b.get(key).and_then(Value::as_str) {
                b[key] = format!("{id}-{tag}").into();
            }
        }
        let Some(j) = b["columns"]
            .as_array()
            .and_then(|c| c.iter().position(|c| c == "variance"))
        else {
            continue;
        };
        for row in b["rows"].as_array_mut().into_iter().flatten() {
            if let Some(v) = row[j].as_f64() {
                row[j] = (v * factor).into();
            }
        }
    }
    out
}

/// Sends `bundles` and waits for their answers.
async fn answered(r: &Running<'_>, bundles: &[Value]) -> anyhow::Result<usize> {
    Ok(super::send_and_read(r, bundles).await?.len())
}

/// Waits until the monitors recorded something new after `after` that `ready` accepts.
async fn recorded(
    r: &Running<'_>,
    after: chrono::DateTime<chrono::Utc>,
    ready: impl Fn(&ml_pipeline::commands::compare::Comparison) -> bool,
) -> anyhow::Result<ml_pipeline::commands::compare::Comparison> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = ml_pipeline::commands::compare::read(
            r.pool,
            &r.settings.model_name,
            after,
            r.settings.drift_psi_threshold,
        )
        .await?;
        if ready(&c) {
            return Ok(c);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker's monitor recorded nothing new within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Step 10 of the demo.
pub async fn run(r: &Running<'_>, bundles: &[Value], report_dir: &Path) -> anyhow::Result<()> {
    let version = r.holder.current().version;
    let sent_at = chrono::Utc::now();
    let n = answered(r, &shifted(bundles, "drift-1", 3.0)).await?;
    let drifted = |c: &ml_pipeline::commands::compare::Comparison| {
        c.drift
            .iter()
            .any(|d| d.version == version && d.latest_psi > c.threshold)
    };
    let c = recorded(r, sent_at, drifted).await?;
    println!("10. {n} bundles sent whose variance a new scanner fleet reports 3 times too large; the worker's monitor (PSI of the served features against version {version}'s training data):");
    for d in c.drift.iter().filter(|d| d.version == version) {
        println!(
            "   {:<9} PSI {:.3}{}  out of the training range {:.1}%",
            d.feature,
            d.latest_psi,
            if d.latest_psi > c.threshold {
                " (over the threshold)"
            } else {
                ""
            },
            d.mean_out_of_range * 100.0
        );
    }
    // Drift that held for one monitor interval: the demo's stand-in for an hour.
    let opts = RetrainOptions {
        drift_minutes: r.settings.monitor_interval_secs as f64 / 60.0,
        challenger_alias: Some(CHALLENGER.into()),
        ..ml_pipeline::commands::learning::retrain_options(r.settings)
    };
    // The hourly schedule, sped up: the run does nothing until the drift has held long enough.
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcome = loop {
        let outcome = ml_pipeline::commands::learning::run(r.settings, &opts).await?;
        if matches!(outcome, RetrainOutcome::Ran(_)) || Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "   ml-pipeline retrain --drift-minutes {:.2} --challenger-alias {CHALLENGER}:",
        opts.drift_minutes
    );
    for line in outcome.to_string().lines() {
        println!("   {line}");
    }
    let RetrainOutcome::Ran(ran) = &outcome else {
        anyhow::bail!("retrain did not run for drift: {outcome}");
    };
    let challenger = ran.decision.challenger_version;
    // The worker loads the challenger alias within its poll interval, then shadows the traffic.
    let shadow_from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(2 * r.settings.model_poll_secs.max(1))).await;
    answered(r, &shifted(bundles, "drift-2", 3.0)).await?;
    let shadowed = |c: &ml_pipeline::commands::compare::Comparison| {
        c.shadow
            .iter()
            .any(|s| s.shadow_version == challenger && s.tally.records > 0)
    };
    let since = sent_at - chrono::TimeDelta::seconds(1);
    recorded(r, shadow_from, shadowed).await?;
    let c = ml_pipeline::commands::compare::read(
        r.pool,
        &r.settings.model_name,
        since,
        r.settings.drift_psi_threshold,
    )
    .await?;
    std::fs::create_dir_all(report_dir)?;
    let html = report_dir.join("compare.html");
    ml_pipeline::commands::compare::write_html(&html, &c)?;
    println!("   more shifted traffic, with version {challenger} shadow-scored beside production (ml-pipeline models compare):");
    for line in c.to_string().lines().skip(1) {
        println!("   {line}");
    }
    println!("   HTML page: {}", html.display());
    Ok(())
}
