//! CPU time and peak memory of another process, from Linux's `/proc`.

use std::time::Duration;

/// User + system CPU time `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat has no command field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the state field.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second))
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
