//! CPU time over the measured window (`--cpu-pids`): the store's server processes and
//! this load generator, from `/proc/<pid>/stat` (utime + stime, all threads), read at
//! the window's start and end. Per operation, it shows where a store's throughput goes
//! on a machine whose cores the servers and the load generator share.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// CPU used in the measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// The processes counted as the store (`--cpu-pids`).
    pub server_pids: Vec<u32>,
    /// Their CPU seconds (user + system) in the window, summed.
    pub server_s: f64,
    /// This load generator's CPU seconds in the window.
    pub client_s: f64,
    /// `server_s` per operation completed in the window, in microseconds.
    pub server_us_per_op: f64,
    /// `client_s` per operation, in microseconds.
    pub client_us_per_op: f64,
}

/// Reads the CPU time of `pids` and of this process at `from` and at `to` (both
/// instants ahead), giving (servers, client) seconds in between.
pub(crate) async fn measure(pids: Vec<u32>, from: Instant, to: Instant) -> Result<(Vec<u32>, f64, f64), String> {
    tokio::time::sleep_until(from.into()).await;
    let (s0, c0) = (servers_now(&pids)?, cpu_seconds("self")?);
    tokio::time::sleep_until(to.into()).await;
    let (s1, c1) = (servers_now(&pids)?, cpu_seconds("self")?);
    Ok((pids, s1 - s0, c1 - c0))
}

impl CpuUse {
    pub(crate) fn new(pids: Vec<u32>, server_s: f64, client_s: f64, ops: u64) -> CpuUse {
        let per_op = |s: f64| if ops == 0 { 0.0 } else { s * 1e6 / ops as f64 };
        CpuUse {
            server_pids: pids,
            server_s,
            client_s,
            server_us_per_op: per_op(server_s),
            client_us_per_op: per_op(client_s),
        }
    }
}

fn servers_now(pids: &[u32]) -> Result<f64, String> {
    pids.iter().map(|p| cpu_seconds(&p.to_string())).sum()
}

/// utime + stime of `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let ticks = stat_ticks(&stat).ok_or_else(|| format!("{path}: no utime/stime fields"))?;
    Ok(ticks as f64 / clock_ticks())
}

/// utime + stime (fields 14 and 15 of proc(5)) in clock ticks. The command name (field
/// 2) may hold spaces and parentheses, so the fields are counted after its last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(field(14)? + field(15)?)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // 100 is Linux's value wherever sysconf cannot say.
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_utime_plus_stime_even_with_a_name_holding_spaces_and_parens() {
        let stat = "4242 (raft kv) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 9 0 123 456 789";
        assert_eq!(stat_ticks(stat), Some(42));
    }

    #[test]
    fn a_truncated_or_garbled_stat_is_refused() {
        assert_eq!(stat_ticks("4242 (raftkv) S 1 4242 4242 0 -1 4194560 100 0 0 0 37"), None);
        assert_eq!(stat_ticks("4242 (raftkv) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 5 0"), None);
        assert_eq!(stat_ticks("no name here"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time_and_a_missing_pid_is_named() {
        assert!(cpu_seconds("self").is_ok_and(|s| s >= 0.0));
        let err = servers_now(&[u32::MAX]).unwrap_err();
        assert!(err.contains(&format!("/proc/{}/stat", u32::MAX)), "{err}");
    }

    #[test]
    fn per_operation_figures_divide_by_ops_and_survive_zero_ops() {
        let c = CpuUse::new(vec![1], 0.5, 0.25, 10_000);
        assert_eq!((c.server_us_per_op, c.client_us_per_op), (50.0, 25.0));
        assert_eq!(CpuUse::new(vec![1], 0.5, 0.25, 0).server_us_per_op, 0.0);
    }
}
