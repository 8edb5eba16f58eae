//! `ml-pipeline`: parses the command line, sets up logging, and runs the command with the
//! shutdown signal passed in.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // At most two malloc arenas instead of eight per core: the worker's peak RSS under a burst is
    // a few MiB lower. The mmap threshold keeps glibc's own, which rises to the largest block
    // freed. A fixed 64 KiB made every message body and batch buffer a mmap, page faults and a
    // munmap: a tenth of the worker's CPU under a burst, for about 1 MiB less RSS (BENCHMARKS.md).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before this code allocates much.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
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
