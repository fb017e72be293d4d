//! The raftkv load generator, shared by `raftkv bench` (raftkv only) and the
//! `raftkv-bench` executable of `crates/bench/etcd` (raftkv and etcd).
//!
//! Its job: drive one key/value store with a configurable workload and measure it the
//! same way whatever the store is.
//!
//! - Closed loop: `--clients N` workers each issue their next operation as soon as the
//!   previous one finished, over `--connections M` connections (worker `i` uses
//!   connection `i % M`).
//! - Open loop (`--rate R`): operations are scheduled at `R` per second in total, and
//!   up to `N` of them are in flight; a latency is measured from the operation's
//!   *scheduled* start, so a store that falls behind shows it (no coordinated omission).
//! - Workload: `--reads` is the fraction of reads (0 = write-only, 1 = read-only),
//!   linearizable unless `--stale`; keys are chosen uniformly among `--keys` keys of
//!   `--key-size` bytes; every write puts a `--value-size`-byte value. When the workload
//!   reads, every key is written once first, so reads find values.
//! - It runs `--warmup`, then measures for `--duration`: only operations that complete
//!   inside the measured window count; throughput is that count over the window.
//! - Fill (`--fill`): instead, write every key exactly once (keys in ascending order,
//!   shared by the clients) and stop; every write counts, throughput is their number
//!   over the whole fill. For loading a data set of a known size.
//!
//! A [`Backend`] is the store: how to open connections and do one put or get.
//! [`raftkv::RaftKvBackend`] is raftkv's; the etcd one lives in its own crate.

mod cpu;
pub mod raftkv;
mod report;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use raftkv_client::duration::parse_duration;
use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};

pub use cpu::CpuUse;
pub use report::{BatchingUse, LatencySummary, OpStats, Report, Workload};

/// `--batch-in-flight` unless set.
pub const DEFAULT_BATCH_IN_FLIGHT: usize = 1;
/// The most `--batch-in-flight` takes.
const MAX_BATCH_IN_FLIGHT: usize = 64;

/// The workload and how to run it (the flags of `raftkv bench` and `raftkv-bench`).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients (closed loop: each has one operation in flight; open loop:
    /// at most this many operations in flight).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share (client i uses connection i % M); default: one
    /// per client, at most 64.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Open loop: issue this many operations per second in total instead of a closed
    /// loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fraction of operations that are reads, from 0.0 (write-only) to 1.0 (read-only).
    #[arg(long, default_value_t = 0.0)]
    pub reads: f64,
    /// Reads are stale (served by any node's local state) instead of linearizable.
    #[arg(long)]
    pub stale: bool,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Run this long before measuring (e.g. 1s, 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Measure for this long.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Deadline of one operation.
    #[arg(long = "op-timeout", value_parser = parse_duration, default_value = "5s")]
    pub op_timeout: Duration,
    /// A label for the report (e.g. the build or the machine).
    #[arg(long)]
    pub label: Option<String>,
    /// Write each of the `--keys` keys exactly once, in ascending order, and stop
    /// (no warmup, no `--duration`): loads a data set of a known size.
    #[arg(long)]
    pub fill: bool,
    /// raftkv only: send every request to one follower, which forwards it to the
    /// leader (what a client with one endpoint gets), instead of to the leader.
    #[arg(long)]
    pub via_follower: bool,
    /// raftkv only: the clients that share a connection send their operations in
    /// `batch` RPCs, with up to this many batches in flight per connection (a batch
    /// leaves at once while fewer are in flight, and holds what waits); 0: one RPC per
    /// operation.
    #[arg(long = "batch-in-flight", default_value_t = DEFAULT_BATCH_IN_FLIGHT)]
    pub batch_in_flight: usize,
    /// Linux: also report the CPU time these processes (the store's servers,
    /// PID,PID,...) and this load generator use in the measured window, per operation
    /// (utime + stime from /proc/PID/stat at the window's start and end).
    #[arg(long = "cpu-pids", value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
}

impl BenchArgs {
    pub fn connections(&self) -> usize {
        self.connections.unwrap_or(self.clients.min(64)).clamp(1, self.clients.max(1))
    }

    /// Checks the flags; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.reads) {
            return Err("--reads must be from 0.0 to 1.0".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if !(8..=4096).contains(&self.key_size) {
            return Err("--key-size must be from 8 to 4096".into());
        }
        if self.value_size > (1 << 20) {
            return Err("--value-size must be at most 1 MiB".into());
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err("--rate must be a positive number of operations per second".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if self.fill && (self.reads > 0.0 || self.rate.is_some()) {
            return Err("--fill writes each key once; it takes neither --reads nor --rate".into());
        }
        if self.batch_in_flight > MAX_BATCH_IN_FLIGHT {
            return Err(format!("--batch-in-flight must be at most {MAX_BATCH_IN_FLIGHT}"));
        }
        if self.fill && !self.cpu_pids.is_empty() {
            return Err("--cpu-pids measures the timed window, which --fill does not have".into());
        }
        Ok(())
    }
}

/// A store under test. `Conn` is one connection (cheap to clone, shared by the
/// clients assigned to it); `Session` is one client's own state (e.g. its client id
/// and sequence numbers).
pub trait Backend: Send + Sync + 'static {
    type Conn: Clone + Send + Sync + 'static;
    type Session: Send + 'static;

    /// The target's name in reports (`raftkv`, `etcd`).
    fn name(&self) -> &'static str;
    /// Opens connection `index` of `count`; `stale_reads`: the connection serves stale
    /// reads too, so it may go to any node rather than the leader.
    fn connect(
        &self,
        index: usize,
        count: usize,
        stale_reads: bool,
    ) -> impl Future<Output = anyhow::Result<Self::Conn>> + Send;
    /// Client `index`'s own state.
    fn session(&self, index: usize) -> Self::Session;
    /// Sets `key` to `value`; returns once the store acknowledged it.
    fn put(
        &self,
        conn: &Self::Conn,
        session: &mut Self::Session,
        key: Bytes,
        value: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Reads `key` (linearizable unless `stale`).
    fn get(
        &self,
        conn: &Self::Conn,
        session: &mut Self::Session,
        key: Bytes,
        stale: bool,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// The batches and operations sent over `conn` so far, if it batches.
    fn batches(_conn: &Self::Conn) -> Option<raftkv_client::BatchStats> {
        None
    }
}

/// The batches sent over `conns` so far, summed; `None` if none batches.
fn batches_of<B: Backend>(conns: &[B::Conn]) -> Option<raftkv_client::BatchStats> {
    conns
        .iter()
        .filter_map(B::batches)
        .reduce(|a, b| raftkv_client::BatchStats { batches: a.batches + b.batches, ops: a.ops + b.ops })
}

/// The `i`th key: `k` and its number, zero-padded to `size` bytes.
pub fn key(i: u64, size: usize) -> Bytes {
    let digits = size.saturating_sub(1).max(1);
    Bytes::from(format!("k{i:0digits$}"))
}

/// The most errors a report quotes.
const ERROR_SAMPLES: usize = 5;

/// One client's measurements.
struct Tally {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    write_errors: u64,
    read_errors: u64,
    /// Errors before the measured window (preload and warmup).
    early_errors: u64,
    samples: Vec<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            writes: new_histogram(),
            reads: new_histogram(),
            write_errors: 0,
            read_errors: 0,
            early_errors: 0,
            samples: Vec::new(),
        }
    }

    fn error(&mut self, what: &str, e: String) {
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(format!("{what}: {e}"));
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds: adding cannot fail.
        let _ = self.writes.add(&other.writes);
        let _ = self.reads.add(&other.reads);
        self.write_errors += other.write_errors;
        self.read_errors += other.read_errors;
        self.early_errors += other.early_errors;
        for s in other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(s);
            }
        }
    }
}

/// Latencies in microseconds, from 1 µs to 10 min, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs the workload against `backend` and reports what it measured.
pub async fn run<B: Backend>(backend: B, args: &BenchArgs) -> anyhow::Result<Report> {
    args.validate().map_err(anyhow::Error::msg)?;
    let backend = Arc::new(backend);
    let n_conns = args.connections();
    let mut conns = Vec::with_capacity(n_conns);
    for i in 0..n_conns {
        conns.push(backend.connect(i, n_conns, args.stale && args.reads > 0.0).await?);
    }
    let value = Bytes::from((0..args.value_size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());

    if args.fill {
        let start = Instant::now();
        let tally = write_each_key_once(&backend, &conns, &value, args, args.clients, 0, "put").await?;
        let secs = start.elapsed().as_secs_f64();
        let name = backend.name();
        let (w, r) = (&tally.writes, &tally.reads);
        return Ok(Report::new(name, args, secs, w, r, tally.write_errors, 0, 0, tally.samples));
    }

    // Preload every key when the workload reads, so reads find values.
    let mut preload_errors = 0u64;
    let mut samples = Vec::new();
    if args.reads > 0.0 {
        let workers = args.clients.clamp(16, 64);
        let preload = write_each_key_once(&backend, &conns, &value, args, workers, args.clients, "preload put").await?;
        preload_errors = preload.write_errors;
        samples = preload.samples;
    }

    let batched_before = batches_of::<B>(&conns);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let measure_to = measure_from + args.duration;
    let slot = Arc::new(AtomicU64::new(0));
    let cpu = (!args.cpu_pids.is_empty())
        .then(|| tokio::spawn(cpu::measure(args.cpu_pids.clone(), measure_from, measure_to)));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let (backend, conn, slot, value) = (backend.clone(), conns[c % n_conns].clone(), slot.clone(), value.clone());
        let session = backend.session(c);
        let args = args.clone();
        tasks.spawn(client_loop(backend, conn, session, args, value, slot, start, measure_from, measure_to));
    }
    let mut tally = Tally::new();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t?);
    }
    let elapsed = args.duration.as_secs_f64();
    samples.extend(tally.samples.iter().cloned());
    samples.truncate(ERROR_SAMPLES);
    let mut report = Report::new(
        backend.name(),
        args,
        elapsed,
        &tally.writes,
        &tally.reads,
        tally.write_errors,
        tally.read_errors,
        tally.early_errors + preload_errors,
        samples,
    );
    if let (Some(before), Some(after)) = (batched_before, batches_of::<B>(&conns)) {
        report.batching = Some(BatchingUse::new(after.batches - before.batches, after.ops - before.ops));
    }
    if let Some(cpu) = cpu {
        let (pids, server_s, client_s) = cpu.await?.map_err(anyhow::Error::msg)?;
        report.cpu = Some(CpuUse::new(pids, server_s, client_s, report.total.ops));
    }
    Ok(report)
}

/// Writes keys `0..args.keys` once each, in ascending order, shared by `workers`
/// tasks (sessions `first_session..`). Write latencies, errors and error samples
/// (prefixed with `what`) go into the returned tally.
async fn write_each_key_once<B: Backend>(
    backend: &Arc<B>,
    conns: &[B::Conn],
    value: &Bytes,
    args: &BenchArgs,
    workers: usize,
    first_session: usize,
    what: &'static str,
) -> anyhow::Result<Tally> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (backend, conn, next, value) =
            (backend.clone(), conns[w % conns.len()].clone(), next.clone(), value.clone());
        let mut session = backend.session(first_session + w);
        let (keys, key_size, timeout) = (args.keys, args.key_size, args.op_timeout);
        tasks.spawn(async move {
            let mut tally = Tally::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    break;
                }
                let began = Instant::now();
                match backend.put(&conn, &mut session, key(i, key_size), value.clone(), timeout).await {
                    Ok(()) => tally.writes.saturating_record(micros(began.elapsed())),
                    Err(e) => {
                        tally.write_errors += 1;
                        tally.error(what, e);
                    }
                }
            }
            tally
        });
    }
    let mut tally = Tally::new();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t?);
    }
    Ok(tally)
}

/// A latency in whole microseconds, within the histogram's bounds.
fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, 600_000_000) as u64
}

#[allow(clippy::too_many_arguments)]
async fn client_loop<B: Backend>(
    backend: Arc<B>,
    conn: B::Conn,
    mut session: B::Session,
    args: BenchArgs,
    value: Bytes,
    slot: Arc<AtomicU64>,
    start: Instant,
    measure_from: Instant,
    measure_to: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    loop {
        // When this operation starts (or, in the open loop, was scheduled to).
        let began = match args.rate {
            None => Instant::now(),
            Some(rate) => {
                let n = slot.fetch_add(1, Ordering::Relaxed);
                let at = start + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
                at
            }
        };
        if began >= measure_to {
            break;
        }
        let k = key(rng.random_range(0..args.keys), args.key_size);
        let read = args.reads >= 1.0 || (args.reads > 0.0 && rng.random_bool(args.reads));
        let result = if read {
            backend.get(&conn, &mut session, k, args.stale, args.op_timeout).await
        } else {
            backend.put(&conn, &mut session, k, value.clone(), args.op_timeout).await
        };
        let done = Instant::now();
        let measured = began >= measure_from && done <= measure_to;
        match result {
            Ok(()) if measured => {
                let h = if read { &mut tally.reads } else { &mut tally.writes };
                h.saturating_record(micros(done.duration_since(began)));
            }
            Ok(()) => {}
            Err(e) => {
                if began < measure_from {
                    tally.early_errors += 1;
                } else if read {
                    tally.read_errors += 1;
                } else {
                    tally.write_errors += 1;
                }
                tally.error(if read { "get" } else { "put" }, e);
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    fn parse(flags: &[&str]) -> BenchArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        Cli::parse_from(std::iter::once("bench").chain(flags.iter().copied())).bench
    }

    /// Counts the puts of each key.
    struct Counting(Arc<Mutex<HashMap<Bytes, u32>>>);

    impl Backend for Counting {
        type Conn = ();
        type Session = ();

        fn name(&self) -> &'static str {
            "counting"
        }

        async fn connect(&self, _: usize, _: usize, _: bool) -> anyhow::Result<()> {
            Ok(())
        }

        fn session(&self, _: usize) {}

        async fn put(&self, _: &(), _: &mut (), key: Bytes, _: Bytes, _: Duration) -> Result<(), String> {
            *self.0.lock().unwrap().entry(key).or_default() += 1;
            tokio::task::yield_now().await;
            Ok(())
        }

        async fn get(&self, _: &(), _: &mut (), _: Bytes, _: bool, _: Duration) -> Result<(), String> {
            Err("a fill must not read".into())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fill_writes_every_key_exactly_once() {
        let args = parse(&["--fill", "--keys", "1000", "--clients", "8"]);
        let counts = Arc::default();
        let report = run(Counting(Arc::clone(&counts)), &args).await.unwrap();
        let counts = counts.lock().unwrap();
        assert_eq!(counts.len(), 1000);
        assert!((0..1000).all(|i| counts.get(&key(i, 16)) == Some(&1)), "some key was not written exactly once");
        assert_eq!((report.writes.ops, report.reads.ops, report.errors), (1000, 0, 0));
        assert!(report.workload.fill);
        // The table: a header, then the write and total rows, numbers right-aligned
        // under their titles.
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("op  ") && lines[1].ends_with("errors"), "{table}");
        for (line, op) in lines[2..4].iter().zip(["write", "total"]) {
            assert!(line.starts_with(op) && line.ends_with(" 0"), "{table}");
            assert_eq!(line.len(), lines[1].len(), "{table}");
            assert_eq!(line.split_whitespace().nth(1), Some("1000"), "{table}");
        }
    }

    #[test]
    fn fill_takes_no_reads() {
        let args = parse(&["--fill", "--reads", "0.5"]);
        assert!(args.validate().unwrap_err().contains("--fill"));
    }

    #[test]
    fn batches_in_flight_are_bounded_and_default_to_one() {
        assert_eq!(parse(&[]).batch_in_flight, DEFAULT_BATCH_IN_FLIGHT);
        assert!(parse(&["--batch-in-flight", "64"]).validate().is_ok());
        let err = parse(&["--batch-in-flight", "65"]).validate().unwrap_err();
        assert!(err.contains("--batch-in-flight") && err.contains("64"), "{err}");
    }

    #[test]
    fn batching_figures_are_per_batch() {
        let b = BatchingUse::new(4, 256);
        assert_eq!(b.mean_ops_per_batch, 64.0);
        assert_eq!(BatchingUse::new(0, 0).mean_ops_per_batch, 0.0);
    }

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key(7, 16).len(), 16);
        assert_eq!(&key(7, 8)[..], b"k0000007");
        assert_ne!(key(1, 16), key(2, 16));
    }

    #[test]
    fn duration_flags_take_the_tools_forms_and_refuse_garbage_at_parse_time() {
        let args = parse(&["--warmup", "1.5s", "--duration", "1m30s", "--op-timeout", "3"]);
        assert_eq!(args.warmup, Duration::from_millis(1500));
        assert_eq!(args.duration, Duration::from_secs(90));
        assert_eq!(args.op_timeout, Duration::from_secs(3));
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let err = Cli::try_parse_from(["bench", "--duration", "5x"]).err().expect("5x is refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
