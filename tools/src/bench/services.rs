//! The local services' processes (LocalStack, PostgreSQL, the MongoDB-wire server), found from
//! the PID files the `localstack/` scripts keep, so that `bench` can charge each its CPU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process;

/// One local service's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name in the report: localstack, postgresql, mongo.
    pub name: &'static str,
    /// The process (PostgreSQL: the postmaster, whose backends are its children).
    pub pid: u32,
}

/// The services whose PID files name a living process: LocalStack and the MongoDB-wire server
/// from `run_dir` (`localstack/lib.sh`'s `$RUN_DIR`, `<state>/run`), PostgreSQL from the first
/// line of its cluster's `postmaster.pid` under `/var/lib/postgresql/<version>/main`.
pub fn find(run_dir: &Path) -> Vec<Service> {
    let postmaster = newest_cluster_pid_file(Path::new("/var/lib/postgresql"));
    [
        ("localstack", Some(run_dir.join("localstack.pid"))),
        ("postgresql", postmaster),
        ("mongo", Some(run_dir.join("mongo.pid"))),
    ]
    .into_iter()
    .filter_map(|(name, file)| {
        let pid = pid_in(&std::fs::read_to_string(file?).ok()?)?;
        Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some(Service { name, pid })
    })
    .collect()
}

/// The CPU time of each service's process tree now, in `services`' order (None when a process
/// has gone).
pub fn cpu_times(services: &[Service]) -> Vec<Option<Duration>> {
    services
        .iter()
        .map(|s| process::tree_cpu_time(s.pid).ok())
        .collect()
}

/// The process id on the first line of a PID file.
pub fn pid_in(pid_file: &str) -> Option<u32> {
    pid_file.lines().next()?.trim().parse().ok()
}

/// `<root>/<version>/main/postmaster.pid` of the highest version that has one (the cluster
/// `localstack/postgres.sh` starts).
fn newest_cluster_pid_file(root: &Path) -> Option<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let file = e.path().join("main").join("postmaster.pid");
            file.exists().then_some((version, file))
        })
        .collect();
    files.sort();
    files.pop().map(|(_, file)| file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_names_its_process_on_the_first_line() {
        // postmaster.pid: the pid, then the data directory, start time, port...
        assert_eq!(
            pid_in("6855\n/var/lib/postgresql/15/main\n1764614224\n5432\n"),
            Some(6855)
        );
        assert_eq!(pid_in("6928\n"), Some(6928));
        assert_eq!(pid_in(""), None);
        assert_eq!(pid_in("not a pid\n"), None);
    }

    #[test]
    fn a_missing_run_dir_finds_no_service_there() {
        let found = find(Path::new("/nonexistent/run"));
        assert!(found.iter().all(|s| s.name == "postgresql"));
    }
}
