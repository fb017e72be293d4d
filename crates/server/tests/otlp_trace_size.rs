//! What a traced write costs a trace store, measured: the figure `max_traces` in
//! observability/jaeger.yaml is sized from, and a check that it still fits.
//!
//! Three `raftkv-server` processes and this process (a client with telemetry, as
//! `raftkv validate` or a traced `raftkv bench` is) export to a real OTLP/gRPC receiver
//! (`common/otlp.rs`). The workload: `SEQUENTIAL_WRITES` puts one after another, then
//! `CLIENTS` clients writing `WRITES_PER_CLIENT` puts each at once (batched: fsyncs,
//! replication and commits are shared by several requests and linked to the others),
//! 100-byte values. The servers are then stopped with SIGTERM, which flushes their
//! spans, so the receiver holds everything they recorded.
//!
//! For the traces of those writes (one per write: the client's `kv.put` is the root) it
//! reports spans per write and bytes per span, encoded (the OTLP protobuf on the wire)
//! and retained: Jaeger v2's memory store keeps each trace as its own `ptrace.Traces`,
//! with a copy of the resource and scope of every export request that brought spans of
//! it (jaeger internal/storage/v2/memory: reshuffleResourceSpans, Tenant.storeTraces).
//! The test rebuilds exactly that grouping from the requests received, encodes each
//! trace, and measures the heap its decoded form holds with a counting allocator (this
//! thread's allocations minus its frees). That is the Rust (prost) form of the same
//! messages; Jaeger's Go form is not measured here (see observability/README.md for the
//! margin kept for it).
//!
//! It then checks observability/jaeger.yaml: `max_traces` write traces at the larger of
//! the two phases' retained size must fit in `LIVE_FRACTION` of the container's memory
//! limit.
//!
//! Then the sampling observability/README.md recommends, checked on the same servers:
//!
//! - writes under a parent the client did *not* sample (what a traced client with
//!   `OTEL_TRACES_SAMPLER=traceidratio` sends for the traces it drops) leave no span on
//!   the servers: they follow the client's decision;
//! - writes with no trace context (what `raftkv bench` sends: it opens no span of its
//!   own, so its tarpc calls carry none) are traced by the servers as roots, every one
//!   under the default sampler: the figure printed is what a benchmark costs;
//! - a second cluster started with `OTEL_TRACES_SAMPLER=parentbased_traceidratio` and
//!   argument 0 records nothing for such writes (nor any other root: elections too),
//!   while it still records the writes of a client that samples them.
//!
//! `scripts/measure-trace-size` runs it and prints the figures.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::otlp::{Received, start_receiver};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use raftkv_client::local::{LocalCluster, LocalClusterOptions, ServerCommand};
use raftkv_client::{Client, ClientOptions};
use raftkv_kv::{Command, WriteOp};
use raftkv_telemetry::opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use raftkv_telemetry::{LogOutput, OpenTelemetrySpanExt as _, Options, TelemetryConfig};
use tracing::Instrument as _;

const CLIENT_SERVICE: &str = "raftkv-trace-size";
const SEQUENTIAL_WRITES: usize = 100;
const CLIENTS: usize = 16;
const WRITES_PER_CLIENT: usize = 25;
const UNSAMPLED_WRITES: usize = 20;
const UNTRACED_WRITES: usize = 20;
const TRACED_WRITES: usize = 5;
const VALUE_BYTES: usize = 100;
/// The share of Jaeger's memory limit the stored traces may take: Go's collector lets
/// the heap grow to twice the live data before collecting (GOGC=100), and the rest of
/// the process (receivers, batches, queries) needs room too.
const LIVE_FRACTION: f64 = 0.4;

// ---- a counting allocator: net bytes allocated by the current thread ----------------------

struct Counting;

thread_local! {
    static NET: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = NET.try_with(|c| c.set(c.get() + n));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn net_allocated() -> i64 {
    NET.with(|c| c.get())
}

// ---- the measurement ------------------------------------------------------------------------

/// The traces of one phase's writes, as Jaeger's memory store would keep them.
struct Phase {
    name: &'static str,
    writes: usize,
    traces: usize,
    spans: usize,
    span_bytes: usize,
    trace_bytes: usize,
    retained_bytes: i64,
    resource_copies: usize,
    links: usize,
}

impl Phase {
    fn spans_per_write(&self) -> f64 {
        self.spans as f64 / self.traces as f64
    }
    fn retained_per_trace(&self) -> f64 {
        self.retained_bytes as f64 / self.traces as f64
    }
    fn print(&self) {
        eprintln!(
            "{:<10} writes {:>4}  traces {:>4}  spans/write {:>5.1}  encoded B/span {:>5.0}  \
             encoded B/trace {:>6.0}  retained B/span {:>5.0}  retained B/trace {:>6.0}  \
             resource copies/trace {:>4.1}  links/trace {:>4.1}",
            self.name,
            self.writes,
            self.traces,
            self.spans_per_write(),
            self.span_bytes as f64 / self.spans as f64,
            self.trace_bytes as f64 / self.traces as f64,
            self.retained_bytes as f64 / self.spans as f64,
            self.retained_per_trace(),
            self.resource_copies as f64 / self.traces as f64,
            self.links as f64 / self.traces as f64,
        );
    }
}

/// Jaeger's grouping (reshuffleResourceSpans): per request, per resource, per scope,
/// the spans of each trace, with their own copy of the resource and the scope.
fn per_trace(
    requests: &[ExportTraceServiceRequest],
    wanted: &BTreeSet<Vec<u8>>,
) -> BTreeMap<Vec<u8>, Vec<ResourceSpans>> {
    let mut out: BTreeMap<Vec<u8>, Vec<ResourceSpans>> = BTreeMap::new();
    for req in requests {
        for rs in &req.resource_spans {
            let mut by_trace: HashMap<Vec<u8>, Vec<ScopeSpans>> = HashMap::new();
            for ss in &rs.scope_spans {
                let mut spans_by_trace: HashMap<Vec<u8>, Vec<_>> = HashMap::new();
                for span in &ss.spans {
                    if wanted.contains(&span.trace_id) {
                        spans_by_trace.entry(span.trace_id.clone()).or_default().push(span.clone());
                    }
                }
                for (trace, spans) in spans_by_trace {
                    by_trace.entry(trace).or_default().push(ScopeSpans {
                        scope: ss.scope.clone(),
                        spans,
                        schema_url: ss.schema_url.clone(),
                    });
                }
            }
            for (trace, scope_spans) in by_trace {
                out.entry(trace).or_default().push(ResourceSpans {
                    resource: rs.resource.clone(),
                    scope_spans,
                    schema_url: rs.schema_url.clone(),
                });
            }
        }
    }
    out
}

fn measure(name: &'static str, writes: usize, traces: &BTreeMap<Vec<u8>, Vec<ResourceSpans>>) -> Phase {
    let mut spans = 0;
    let mut span_bytes = 0;
    let mut links = 0;
    let mut resource_copies = 0;
    let mut encoded = Vec::with_capacity(traces.len());
    for rss in traces.values() {
        resource_copies += rss.len();
        for rs in rss {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    spans += 1;
                    span_bytes += s.encoded_len();
                    links += s.links.len();
                }
            }
        }
        encoded.push(ExportTraceServiceRequest { resource_spans: rss.clone() }.encode_to_vec());
    }
    let trace_bytes = encoded.iter().map(Vec::len).sum();
    // The heap the decoded traces hold, counted on this thread only.
    let mut decoded: Vec<ExportTraceServiceRequest> = Vec::new();
    decoded.reserve_exact(encoded.len());
    let before = net_allocated();
    for bytes in &encoded {
        decoded.push(ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decode a trace we encoded"));
    }
    let retained_bytes = net_allocated() - before;
    drop(decoded);
    Phase { name, writes, traces: traces.len(), spans, span_bytes, trace_bytes, retained_bytes, resource_copies, links }
}

/// Root `kv.put` spans of the client in `keys`' writes: their trace ids.
fn write_traces(spans: &[Received], prefix: &str) -> BTreeSet<Vec<u8>> {
    spans
        .iter()
        .filter(|s| s.service == CLIENT_SERVICE && s.span.name == "kv.put" && s.span.parent_span_id.is_empty())
        .filter(|s| s.str("key").is_some_and(|k| k.starts_with(prefix)))
        .map(|s| s.span.trace_id.clone())
        .collect()
}

/// `max_traces` and the container memory limit (bytes) of observability/jaeger.yaml.
fn jaeger_sizing() -> (u64, u64) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../observability/jaeger.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let max_traces = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_traces:"))
        .unwrap_or_else(|| panic!("{path} has no max_traces"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{path}: max_traces: {e}"));
    // The first `memory:` after `limits:` (comments between them are skipped).
    let mut lines = text.lines().map(str::trim).skip_while(|l| *l != "limits:").filter(|l| !l.starts_with('#'));
    let limit = lines.nth(1).and_then(|m| m.strip_prefix("memory:")).map(|q| quantity(q.trim()));
    (max_traces, limit.unwrap_or_else(|| panic!("{path} has no container memory limit")))
}

/// Why `max_traces` traces of `per_trace` bytes do not fit the budget of a `limit`-byte
/// pod (None: they fit).
fn over_budget(max_traces: u64, limit: u64, per_trace: f64) -> Option<String> {
    let need = max_traces as f64 * per_trace;
    let budget = limit as f64 * LIVE_FRACTION;
    (need > budget).then(|| {
        format!(
            "max_traces {max_traces} traces of {per_trace:.0} B take {:.0} MiB, more than {:.0}% of the {} MiB \
             limit: at most {}",
            need / (1 << 20) as f64,
            LIVE_FRACTION * 100.0,
            limit >> 20,
            (budget / per_trace).floor()
        )
    })
}

fn quantity(q: &str) -> u64 {
    for (suffix, unit) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("memory limit {q}: {e}")) * unit;
        }
    }
    panic!("memory limit {q}: only Ki, Mi and Gi are understood here")
}

fn start_cluster(dir: &std::path::Path, endpoint: &str, env: &[(&str, &str)]) -> LocalCluster {
    let mut command = ServerCommand::binary(env!("CARGO_BIN_EXE_raftkv-server"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("RUST_LOG", "info");
    for (k, v) in env {
        command = command.env(k, v);
    }
    LocalCluster::start(LocalClusterOptions {
        nodes: 3,
        base_port: None,
        dir: dir.to_path_buf(),
        command,
        extra_args: vec!["--tick-ms".into(), "50".into()],
    })
    .expect("start the cluster")
}

/// Puts as `raftkv bench` sends them: a bare tarpc call with no span of ours around it,
/// so no trace context travels; tried on each node until the leader takes it. Returns
/// the log indexes.
async fn untraced_puts(cluster: &LocalCluster, prefix: &str, n: usize, value: &str) -> BTreeSet<i64> {
    let mut conns = Vec::new();
    for ep in cluster.endpoints() {
        conns.push(raftkv_rpc::connect(&ep).await.unwrap_or_else(|e| panic!("connect to {ep}: {e}")));
    }
    let client_id = 0x00be_ec40_0000_0000 + n as u64 + prefix.len() as u64;
    let mut indexes = BTreeSet::new();
    'puts: for seq in 1..=n as u64 {
        let command = Command {
            client_id,
            seq,
            op: WriteOp::Put { key: format!("{prefix}{seq:06}").into(), value: value.to_string().into() },
        };
        for _ in 0..50 {
            for c in &conns {
                let mut ctx = raftkv_rpc::tarpc::context::current();
                ctx.deadline = std::time::Instant::now() + Duration::from_secs(5);
                if let Ok(Ok(reply)) = c.write(ctx, command.clone()).await {
                    indexes.insert(reply.index as i64);
                    continue 'puts;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no node took the untraced put {seq}");
    }
    indexes
}

fn server_kv_spans<'a>(spans: &'a [Received], indexes: &BTreeSet<i64>) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.service == "raftkv-server" && s.span.name.starts_with("kv."))
        .filter(|s| s.int("index").is_some_and(|i| indexes.contains(&i)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_write_fits_the_jaeger_memory_budget() {
    let (addr, store) = start_receiver().await;
    let endpoint = format!("http://{addr}");
    let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()), ("OTEL_SERVICE_NAME", CLIENT_SERVICE.to_string())];
    let cfg =
        TelemetryConfig::from_lookup(CLIENT_SERVICE, |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
    let telemetry =
        raftkv_telemetry::init_with(Options::new(CLIENT_SERVICE, LogOutput::TextIfRustLog).instance_id("test"), cfg);
    assert!(telemetry.is_exporting());

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start_cluster(dir.path(), &endpoint, &[]);
    cluster.wait_for_leader(Duration::from_secs(30)).await.expect("a leader");
    let opts = ClientOptions::with_timeout(Duration::from_secs(20));
    let value = "v".repeat(VALUE_BYTES);

    let client = cluster.client(opts.clone());
    for i in 0..SEQUENTIAL_WRITES {
        client.put(format!("seq/k{i:06}"), value.clone()).await.expect("a sequential put");
    }

    let clients: Vec<Arc<Client>> = (0..CLIENTS).map(|_| Arc::new(cluster.client(opts.clone()))).collect();
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let (client, value) = (client.clone(), value.clone());
            tokio::spawn(async move {
                for i in 0..WRITES_PER_CLIENT {
                    client.put(format!("par/c{c:02}/k{i:06}"), value.clone()).await.expect("a concurrent put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a writer task");
    }

    // Writes whose parent the client did not sample: what a client sampling at a ratio
    // sends for the traces it drops. The servers (parent-based) must record nothing.
    let mut unsampled_indexes = BTreeSet::new();
    for i in 0..UNSAMPLED_WRITES {
        // Any ids will do: nothing may be recorded under them.
        let parent = SpanContext::new(
            TraceId::from_bytes((0x5eed_0000_0000_0000_0000_0000_0000_0000u128 + i as u128 + 1).to_be_bytes()),
            SpanId::from_bytes((i as u64 + 1).to_be_bytes()),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        // A raftkv target: the telemetry layer drops other crates' spans (and then
        // their children would be roots).
        let span = tracing::info_span!(target: "raftkv_trace_size", "unsampled.op");
        span.set_parent(raftkv_telemetry::opentelemetry::Context::new().with_remote_span_context(parent))
            .expect("the unsampled parent is set");
        let out = client.put(format!("off/k{i:06}"), value.clone()).instrument(span).await.expect("an unsampled put");
        unsampled_indexes.insert(out.index as i64);
    }

    let untraced_indexes = untraced_puts(&cluster, "bench/k", UNTRACED_WRITES, &value).await;

    // SIGTERM flushes each server's spans before it exits.
    cluster.stop_all(Duration::from_secs(20)).await.expect("stop the servers");
    let first_cluster_spans = store.spans().len();

    // A cluster whose root sampler keeps nothing: untraced writes leave no span, a
    // client's sampled writes are still recorded.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let mut ratio0 = start_cluster(
        dir2.path(),
        &endpoint,
        &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")],
    );
    ratio0.wait_for_leader(Duration::from_secs(30)).await.expect("a leader of the second cluster");
    let ratio0_untraced = untraced_puts(&ratio0, "bench2/k", UNTRACED_WRITES, &value).await;
    let client2 = ratio0.client(opts.clone());
    let mut ratio0_traced = BTreeSet::new();
    for i in 0..TRACED_WRITES {
        ratio0_traced
            .insert(client2.put(format!("traced2/k{i:06}"), value.clone()).await.expect("a traced put").index as i64);
    }
    ratio0.stop_all(Duration::from_secs(20)).await.expect("stop the second cluster");

    // Flush ours too.
    let telemetry = tokio::task::spawn_blocking(move || {
        telemetry.flush();
        telemetry
    })
    .await
    .expect("flush");
    assert_eq!(telemetry.dropped_spans(), 0, "the client dropped spans: the figures would be low");
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.expect("telemetry shutdown");
    for d in [dir.path(), dir2.path()] {
        for entry in std::fs::read_dir(d).expect("the cluster dir") {
            let path = entry.expect("a dir entry").path();
            if path.extension().is_some_and(|e| e == "log") {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !log.contains("spans were dropped"),
                    "{} dropped spans: the figures would be low",
                    path.display()
                );
            }
        }
    }

    let spans = store.spans();
    let requests = store.raw_requests();
    let sequential = write_traces(&spans, "seq/");
    let concurrent = write_traces(&spans, "par/");
    assert_eq!(sequential.len(), SEQUENTIAL_WRITES, "one client root span per sequential write");
    assert_eq!(concurrent.len(), CLIENTS * WRITES_PER_CLIENT, "one client root span per concurrent write");
    let phases = [
        measure("sequential", SEQUENTIAL_WRITES, &per_trace(&requests, &sequential)),
        measure("concurrent", CLIENTS * WRITES_PER_CLIENT, &per_trace(&requests, &concurrent)),
    ];
    let all: usize =
        requests.iter().flat_map(|r| &r.resource_spans).flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
    assert_eq!(all, spans.len());

    eprintln!("\n---- trace size of a write (tests/otlp_trace_size.rs) ----");
    eprintln!("spans received: {all} in {} export requests", requests.len());
    for p in &phases {
        p.print();
    }
    let worst = phases.iter().map(Phase::retained_per_trace).fold(0.0, f64::max);
    let (max_traces, limit) = jaeger_sizing();
    let fits = (limit as f64 * LIVE_FRACTION / worst).floor() as u64;
    eprintln!(
        "jaeger.yaml: max_traces {max_traces}, memory limit {} MiB; at {worst:.0} B per trace, {:.0}% of the limit \
         ({:.0} MiB) holds {fits} traces; max_traces takes {:.0} MiB",
        limit >> 20,
        LIVE_FRACTION * 100.0,
        limit as f64 * LIVE_FRACTION / (1 << 20) as f64,
        max_traces as f64 * worst / (1 << 20) as f64,
    );

    // Sanity: a sequential write is one trace across the client, the leader and both
    // followers (the span tree in observability/README.md, 18-19 spans).
    let seq = &phases[0];
    assert!(seq.spans_per_write() >= 12.0, "only {:.1} spans per sequential write", seq.spans_per_write());
    assert!(
        seq.resource_copies >= 3 * seq.traces,
        "a write's trace has spans of the client, the leader and a follower at least"
    );
    if let Some(problem) = over_budget(max_traces, limit, worst) {
        panic!("observability/jaeger.yaml: {problem}");
    }
    // The check catches the configuration that OOM-killed Jaeger: 100,000 traces in 1 GiB.
    assert!(over_budget(100_000, 1 << 30, worst).is_some(), "the budget check passed 100,000 traces in 1 GiB");

    // The unsampled writes: no server span of theirs (kv.put and kv.apply carry the
    // log index), and none on the client.
    let leaked = server_kv_spans(&spans[..first_cluster_spans], &unsampled_indexes);
    assert!(
        leaked.is_empty(),
        "writes under an unsampled parent left {} server spans (first: {:?})",
        leaked.len(),
        leaked.first().map(|s| &s.span.name)
    );
    assert!(
        !spans.iter().any(|s| s.service == CLIENT_SERVICE && s.str("key").is_some_and(|k| k.starts_with("off/"))),
        "the client recorded spans under an unsampled parent"
    );

    // Untraced writes (as `raftkv bench` sends them): the servers trace each as a root.
    let roots: BTreeSet<&Vec<u8>> = server_kv_spans(&spans[..first_cluster_spans], &untraced_indexes)
        .iter()
        .filter(|s| s.span.name == "kv.put")
        .map(|s| &s.span.trace_id)
        .collect();
    let untraced_spans = spans[..first_cluster_spans].iter().filter(|s| roots.contains(&s.span.trace_id)).count();
    eprintln!(
        "untraced writes (raftkv bench): {UNTRACED_WRITES} writes, {} server traces, {:.1} server spans per write \
         under the default sampler",
        roots.len(),
        untraced_spans as f64 / UNTRACED_WRITES as f64
    );
    assert_eq!(roots.len(), UNTRACED_WRITES, "each untraced write is a server root trace under the default sampler");

    // The cluster with parentbased_traceidratio 0: nothing but the client's sampled writes.
    let second: Vec<&Received> = spans[first_cluster_spans..].iter().filter(|s| s.service == "raftkv-server").collect();
    let kept: BTreeSet<&Vec<u8>> = second
        .iter()
        .filter(|s| s.span.name == "kv.put" && s.int("index").is_some_and(|i| ratio0_traced.contains(&i)))
        .map(|s| &s.span.trace_id)
        .collect();
    assert_eq!(
        kept.len(),
        TRACED_WRITES,
        "a server with a ratio root sampler still records the writes a client samples"
    );
    let stray: Vec<&str> =
        second.iter().filter(|s| !kept.contains(&s.span.trace_id)).map(|s| s.span.name.as_str()).collect();
    assert!(
        stray.is_empty(),
        "a server sampling roots at ratio 0 recorded {} spans outside the client's sampled writes: {stray:?}",
        stray.len()
    );
    assert!(server_kv_spans(&spans[first_cluster_spans..], &ratio0_untraced).is_empty());
    eprintln!(
        "parentbased_traceidratio 0 on the servers: 0 spans for {UNTRACED_WRITES} untraced writes, {} traces for \
         {TRACED_WRITES} writes the client sampled",
        kept.len()
    );
}
