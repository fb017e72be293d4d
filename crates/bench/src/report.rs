//! What a run measured, as JSON and as a table.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use raftkv_client::table::Table;
use serde::{Deserialize, Serialize};

use crate::{BenchArgs, CpuUse};

/// The workload a report measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workload {
    pub clients: usize,
    pub connections: usize,
    /// raftkv: batch RPCs in flight per connection (0: one RPC per operation).
    #[serde(default)]
    pub batch_in_flight: usize,
    /// Open-loop rate (operations per second), or `None` for a closed loop.
    pub rate: Option<f64>,
    pub reads: f64,
    pub stale: bool,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub warmup_s: f64,
    /// The measured window; for a fill, how long writing every key took.
    pub duration_s: f64,
    /// Each key was written exactly once (`--fill`); absent in older reports.
    #[serde(default)]
    pub fill: bool,
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One kind of operation (or all of them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OpStats {
    /// Successful operations completed in the measured window.
    pub ops: u64,
    /// Failed operations started in the measured window.
    pub errors: u64,
    /// `ops` per second of the measured window.
    pub throughput: f64,
    pub latency_ms: LatencySummary,
}

impl OpStats {
    fn of(h: &Histogram<u64>, errors: u64, secs: f64) -> OpStats {
        OpStats { ops: h.len(), errors, throughput: h.len() as f64 / secs, latency_ms: LatencySummary::of(h) }
    }
}

/// A run's results (`--json` prints exactly this).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `raftkv` or `etcd`.
    pub target: String,
    pub label: Option<String>,
    pub workload: Workload,
    /// Every operation in the measured window.
    pub total: OpStats,
    pub writes: OpStats,
    pub reads: OpStats,
    /// Every failed operation: preload, warmup and measured window.
    pub errors: u64,
    /// The first few errors' messages.
    pub error_samples: Vec<String>,
    /// CPU time in the measured window (`--cpu-pids`); absent when not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuUse>,
    /// raftkv with `--batch-in-flight`: the batch RPCs of the warmup and the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingUse>,
}

/// How many batch RPCs carried how many operations (warmup and measured window).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchingUse {
    pub batches: u64,
    pub ops: u64,
    pub mean_ops_per_batch: f64,
}

impl BatchingUse {
    pub fn new(batches: u64, ops: u64) -> BatchingUse {
        let mean_ops_per_batch = if batches == 0 { 0.0 } else { ops as f64 / batches as f64 };
        BatchingUse { batches, ops, mean_ops_per_batch }
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        target: &str,
        args: &BenchArgs,
        secs: f64,
        writes: &Histogram<u64>,
        reads: &Histogram<u64>,
        write_errors: u64,
        read_errors: u64,
        other_errors: u64,
        error_samples: Vec<String>,
    ) -> Report {
        let mut all = writes.clone();
        // Same bounds: adding cannot fail.
        let _ = all.add(reads);
        Report {
            target: target.to_string(),
            label: args.label.clone(),
            workload: Workload {
                clients: args.clients,
                connections: args.connections(),
                batch_in_flight: if target.starts_with("raftkv") { args.batch_in_flight } else { 0 },
                rate: args.rate,
                reads: args.reads,
                stale: args.stale,
                keys: args.keys,
                key_size: args.key_size,
                value_size: args.value_size,
                warmup_s: if args.fill { 0.0 } else { args.warmup.as_secs_f64() },
                duration_s: secs,
                fill: args.fill,
            },
            total: OpStats::of(&all, write_errors + read_errors, secs),
            writes: OpStats::of(writes, write_errors, secs),
            reads: OpStats::of(reads, read_errors, secs),
            errors: write_errors + read_errors + other_errors,
            error_samples,
            cpu: None,
            batching: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        let mode = match w.rate {
            _ if w.fill => format!("fill (each key written once), {} clients", w.clients),
            Some(r) => format!("open loop at {r} ops/s, at most {} in flight", w.clients),
            None => format!("closed loop, {} clients", w.clients),
        };
        let reads = if w.stale { "stale" } else { "linearizable" };
        let batching = match w.batch_in_flight {
            0 => String::new(),
            n => format!(" (batch RPCs, up to {n} in flight per connection)"),
        };
        let _ = writeln!(
            out,
            "target {}: {mode} over {} connections{batching}; {:.0}% {reads} reads; {} keys of {} B, values of {} B; {:.3}s measured after {}s warmup",
            self.target,
            w.connections,
            w.reads * 100.0,
            w.keys,
            w.key_size,
            w.value_size,
            w.duration_s,
            w.warmup_s
        );
        let mut table =
            Table::new(&["op", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"])
                .right(&[1, 2, 3, 4, 5, 6, 7, 8]);
        for (name, s) in [("write", &self.writes), ("read", &self.reads), ("total", &self.total)] {
            if name != "total" && s.ops == 0 && s.errors == 0 {
                continue;
            }
            let l = &s.latency_ms;
            let ms = |v: f64| format!("{v:.3}");
            table.row([
                name.to_string(),
                s.ops.to_string(),
                format!("{:.1}", s.throughput),
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                s.errors.to_string(),
            ]);
        }
        out.push_str(&table.render());
        if let Some(b) = &self.batching {
            let _ = writeln!(
                out,
                "batch RPCs (warmup and window): {} carrying {} operations, {:.1} per batch",
                b.batches, b.ops, b.mean_ops_per_batch
            );
        }
        if let Some(c) = &self.cpu {
            let _ = writeln!(
                out,
                "CPU in the window: servers {:?} {:.1} µs/op ({:.2} s), this load generator {:.1} µs/op ({:.2} s)",
                c.server_pids, c.server_us_per_op, c.server_s, c.client_us_per_op, c.client_s
            );
        }
        let _ = writeln!(out, "errors (preload, warmup and measured): {}", self.errors);
        for e in &self.error_samples {
            let _ = writeln!(out, "  {e}");
        }
        out
    }
}
