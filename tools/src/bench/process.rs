//! CPU time and peak memory of another process, from Linux's `/proc`.

use std::time::Duration;

/// User + system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = read_stat(pid)?;
    Ok(ticks_to_duration(stat.utime + stat.stime))
}

/// User + system CPU time of `pid`, of its children that have exited (and were waited for) and
/// of its living descendants: a server's whole cost when it works in child processes, as
/// PostgreSQL's backends do. A backend that exits between two readings moves from the living
/// to the exited share, so differences of two readings stay right.
pub fn tree_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let root = read_stat(pid)?;
    let mut ticks = root.utime + root.stime + root.cutime + root.cstime;
    let mut parents = vec![pid];
    // One pass over /proc gives each process's parent; descendants are found from it.
    let all: Vec<(u32, Stat)> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, read_stat(p).ok()?)))
        .collect();
    while let Some(parent) = parents.pop() {
        for (child, stat) in all.iter().filter(|(_, s)| s.ppid == parent) {
            // A child's own exited children are already in its cutime and cstime.
            ticks += stat.utime + stat.stime + stat.cutime + stat.cstime;
            parents.push(*child);
        }
    }
    Ok(ticks_to_duration(ticks))
}

/// The fields of `/proc/<pid>/stat` the CPU readings use, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The parent process (field 4).
    pub ppid: u32,
    /// User time (field 14).
    pub utime: u64,
    /// System time (field 15).
    pub stime: u64,
    /// User time of exited children it waited for (field 16).
    pub cutime: u64,
    /// System time of exited children it waited for (field 17).
    pub cstime: u64,
}

fn read_stat(pid: u32) -> anyhow::Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&std::fs::read_to_string(&path)?)
        .ok_or_else(|| anyhow::anyhow!("{path} is not readable as a stat line"))
}

/// Parses a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    // Fields after the command name (which may hold spaces and parentheses) start at state,
    // field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// The peak resident set size of `pid` so far (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmHWM").map(|kib| kib * 1024)
}

/// A `kB` field (`VmHWM`, `VmRSS`) of a `/proc/<pid>/status` file, in KiB.
pub fn status_kib(path: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path)?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .ok_or_else(|| anyhow::anyhow!("{path} has no {field}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("unreadable {field} line: {line}"))?
        .parse()?)
}

/// Resets this process's peak RSS (VmHWM) to its current RSS (`5` to `/proc/self/clear_refs`,
/// Linux 4.0 and later), so the next reading covers only what ran since. False when refused.
pub fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_past_a_command_holding_spaces_and_parentheses() {
        let line = "6855 (postgres: w (x) 1) S 1 6855 6855 0 -1 4194560 2127 114 0 0 \
                    17 9 33 21 20 0 1 0 1234 225312768 7046 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 1,
                utime: 17,
                stime: 9,
                cutime: 33,
                cstime: 21
            })
        );
        assert_eq!(parse_stat("12 (cut) S 1 2 3"), None);
        assert_eq!(parse_stat("no command field"), None);
    }

    #[test]
    fn a_tree_holds_at_least_its_root() {
        let pid = std::process::id();
        let own = cpu_time(pid).unwrap();
        assert!(tree_cpu_time(pid).unwrap() >= own);
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        assert!(peak_rss(pid).unwrap() > 1 << 20);
    }

    #[test]
    fn own_rss_is_below_its_peak_and_a_reset_brings_the_peak_down() {
        const OWN: &str = "/proc/self/status";
        // 64 MiB written page by page, then returned to the system (glibc maps blocks this
        // large on their own and unmaps them on free).
        let block = std::hint::black_box(vec![1u8; 64 << 20]);
        drop(block);
        let peak = status_kib(OWN, "VmHWM").unwrap();
        assert!(status_kib(OWN, "VmRSS").unwrap() <= peak);
        assert!(peak >= 64 << 10, "peak {peak} KiB");
        if reset_own_peak_rss() {
            let after = status_kib(OWN, "VmHWM").unwrap();
            assert!(
                after + (32 << 10) < peak,
                "peak {peak} KiB, after the reset {after} KiB"
            );
        }
        assert!(status_kib(OWN, "NoSuchField").is_err());
    }
}
