//! The `train` command as an operator runs it: the real `ml-pipeline train` binary on its own
//! PostgreSQL and MongoDB databases, stopped with Ctrl-C (SIGINT) once its progress shows. The
//! job row is failed with the reason, nothing is published or reported, the exit is non-zero.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

const BIN: &str = env!("CARGO_BIN_EXE_ml-pipeline");

/// Long enough for a busy 2-core machine: the test never waits for a duration, only up to one.
const PATIENCE: Duration = Duration::from_secs(300);

/// The child process, killed if the test fails before it exits.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The default notes as the canonical CSV `train --data` reads.
fn notes_csv(path: &std::path::Path) {
    let mut text = String::from("variance,skewness,curtosis,entropy,label\n");
    for n in &common::default_fixtures().notes {
        let [v, s, c, e] = n.features();
        text.push_str(&format!("{v},{s},{c},{e},{}\n", n.label));
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn ctrl_c_stops_training_and_records_the_job_as_failed() {
    let db = common::TestDb::new().await;
    let mongo = common::mongo_db().await;
    let dir = std::env::temp_dir().join(format!("train-cancel-{}", common::suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("notes.csv");
    notes_csv(&csv);
    let name = format!("cancel-{}", common::suffix());
    // A search of 2 000 candidates x 10 folds: far more fits than any solver finishes before
    // the signal, so the run ends by cancellation whatever the machine's speed.
    let c_values: Vec<String> = (0..100)
        .map(|i| format!("{:.5}", 0.01 * 1.1f64.powi(i)))
        .collect();
    let widths: Vec<String> = (0..20)
        .map(|i| format!("{:.4}", 0.25 * 1.2f64.powi(i)))
        .collect();
    let html = dir.join("report.html");
    let mut running = Running(
        Command::new(BIN)
            .args([
                "train",
                "--dry-run",
                "--kernel",
                "gaussian",
                "--folds",
                "10",
            ])
            .args(["--search", "--search-c", &c_values.join(",")])
            .args(["--search-width", &widths.join(",")])
            .arg("--name")
            .arg(&name)
            .arg("--data")
            .arg(&csv)
            .arg("--report")
            .arg(dir.join("report.json"))
            .arg("--html-report")
            .arg(&html)
            .env("DATABASE_URL", db.url.expose_secret())
            .env("MONGODB_URI", common::mongodb_uri())
            .env("MONGODB_DATABASE", mongo.name())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut running.0;

    // stderr is read to its end on a thread, so the child never blocks on a full pipe.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen
        .iter()
        .any(|l: &String| l.contains(" fits done (search: "))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "no progress line ({e}); stderr so far:\n{}",
                seen.join("\n")
            ),
        }
    }

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    // The pipe closes when the process exits.
    while let Ok(line) = lines.recv_timeout(PATIENCE) {
        seen.push(line);
    }
    let status = child.wait().unwrap();
    let stderr = seen.join("\n");
    assert!(
        !status.success(),
        "train exit after SIGINT: {status}\n{stderr}"
    );
    assert!(
        stderr.contains("Ctrl-C (SIGINT): stopping;"),
        "the run says it is stopping:\n{stderr}"
    );

    let (status, error, report_path): (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, error, report_path FROM training_jobs WHERE model_name = $1",
    )
    .bind(&name)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "failed");
    let error = error.expect("the reason is recorded");
    let fits = error
        .strip_prefix("cancelled by Ctrl-C (SIGINT) after ")
        .and_then(|rest| rest.strip_suffix(" fits"))
        .unwrap_or_else(|| panic!("reason: {error}"));
    let (done, total) = fits.split_once(" of ").expect("'<done> of <total>'");
    let done: usize = done.parse().unwrap();
    assert!(done >= 1, "progress showed a finished fit: {error}");
    assert_eq!(
        total, "20012",
        "2 000 candidates x 10 folds, then 10 folds, hold-out, final"
    );
    assert!(
        stderr.contains(&error),
        "the command's error names the reason:\n{stderr}"
    );
    assert_eq!(report_path, None);
    assert!(!html.exists(), "a cancelled run writes no HTML report");
    std::fs::remove_dir_all(&dir).unwrap();
}
