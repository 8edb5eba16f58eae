//! `ml-pipeline`: parses the command line, sets up logging, runs the command.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ml_pipeline::cli::Cli::parse();
    ml_pipeline::telemetry::init();
    match ml_pipeline::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "command failed");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
