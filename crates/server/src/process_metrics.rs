//! The standard `process_*` metrics of a Prometheus client, read from `/proc/self` on
//! each scrape (Linux; elsewhere none): CPU seconds, resident and virtual memory, open
//! file descriptors and their limit, threads, start time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads `/proc/self` when scraped.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// What `/proc/self` says, in Prometheus units.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    start_time_seconds: f64,
    open_fds: f64,
    max_fds: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = read_stats() else { return Ok(()) };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size, in bytes.", stats.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size, in bytes.", stats.virtual_bytes),
            ("process_threads", "Number of OS threads.", stats.threads),
            ("process_start_time_seconds", "Start time since the Unix epoch, in seconds.", stats.start_time_seconds),
            ("process_open_fds", "Number of open file descriptors.", stats.open_fds),
            ("process_max_fds", "The limit of open file descriptors.", stats.max_fds),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// `None` where `/proc/self` cannot be read (not Linux).
fn read_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    let mut stats = parse_stat(&stat, clock_ticks(), page_size(), boot_time)?;
    stats.open_fds = open_fds;
    stats.max_fds = limits.as_deref().and_then(max_open_files).unwrap_or(0.0);
    Some(stats)
}

/// Parses `/proc/self/stat` (fields after the command name, which may hold spaces).
fn parse_stat(stat: &str, ticks_per_second: f64, page_size: f64, boot_time: Option<f64>) -> Option<ProcessStats> {
    // `get`, not indexing: a stat cut off right after the name is refused, not a panic.
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3 of proc(5), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    let start_ticks = field(22)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks_per_second,
        threads: field(20)?,
        start_time_seconds: boot_time.map_or(0.0, |b| b + start_ticks / ticks_per_second),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page_size,
        ..ProcessStats::default()
    })
}

/// `btime` of `/proc/stat`: the boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// USER_HZ, the unit of `/proc`'s CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The page size, the unit of `/proc`'s resident set.
fn page_size() -> f64 {
    // SAFETY: as above.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as f64 } else { 4096.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_name_with_spaces_and_parens() {
        let stat = "4242 (raftkv (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 7 0 1000 \
                    104857600 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(stat, 100.0, 4096.0, Some(1_700_000_000.0)).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7.0);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 104_857_600.0);
        assert_eq!(s.resident_bytes, 2560.0 * 4096.0);
        assert_eq!(parse_stat("garbage", 100.0, 4096.0, None), None);
        assert_eq!(parse_stat("4242 (raftkv)", 100.0, 4096.0, None), None);
        assert_eq!(boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000.0));
        let limits =
            "Limit Soft Hard Units\nMax open files            1024                 4096                 files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_is_read() {
        let Some(s) = read_stats() else { return };
        assert!(s.resident_bytes > 0.0 && s.threads >= 1.0 && s.open_fds >= 1.0, "{s:?}");
    }
}
