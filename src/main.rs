//! `ml-pipeline`: parses the command line, sets up logging, and runs the command with the
//! shutdown signal passed in.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // At most two malloc arenas instead of eight per core, and blocks of 64 KiB and more (message
    // bodies, batch buffers) mapped and returned to the system when freed: the worker's peak RSS
    // under a burst is a few MiB lower, at no measurable cost (BENCHMARKS.md).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before this code allocates much.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
    }
    let cli = ml_pipeline::cli::Cli::parse();
    ml_pipeline::telemetry::init();
    match ml_pipeline::cli::run(cli, ml_pipeline::startup::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Logged once: readable on a terminal, a JSON line (with the cause chain) otherwise.
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!("error: {e:#}");
            } else {
                tracing::error!(error = format!("{e:#}"), "command failed");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
