//! Tracing setup of every raftkv binary: human (or JSON) logs on stderr, and
//! OpenTelemetry traces exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Every binary calls [`init`] once, early, and keeps the returned [`Telemetry`] until it
//! exits; dropping it (or [`Telemetry::shutdown`]) flushes the spans still queued, so
//! short-lived programs (the CLI, a validation run) lose nothing.
//!
//! Its job:
//!
//! - read the standard variables ([`config`]): endpoint, protocol (`grpc` by default,
//!   `http/protobuf`), service name, resource attributes, sampler;
//! - put `service.name` and `service.instance.id` (a node id or pod name) on the
//!   resource;
//! - send the spans of raftkv's own code (targets `raftkv*`) and tarpc's RPC spans to
//!   the collector; tarpc carries the trace context in its request context, so a span
//!   open around a client call continues on the server.
//!
//! What it must never do:
//!
//! - with no endpoint: export, start threads or connections, or print anything;
//! - slow the caller when the collector is slow or gone: spans go through a bounded
//!   queue into the SDK's batch span processor, which exports on its own thread; when
//!   the queue is full, spans are dropped and counted ([`Telemetry::dropped_spans`]).
//!   An export failure is logged once, and again only after exports worked meanwhile.

pub mod config;
mod export;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use config::{Protocol, RootSampler, SamplerConfig, TelemetryConfig};
pub use export::ExportStats;
pub use opentelemetry;
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The name of the tracer (instrumentation scope) of raftkv's spans.
pub const TRACER_NAME: &str = "raftkv";
/// Spans waiting for export; more are dropped (and counted).
pub const MAX_QUEUE_SIZE: usize = 4096;
/// Spans sent in one export request.
pub const MAX_EXPORT_BATCH_SIZE: usize = 512;
/// How often queued spans are exported.
pub const SCHEDULED_DELAY: Duration = Duration::from_millis(500);
/// Deadline of one export request.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Telemetry::shutdown`] waits for the last export.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how logs go to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// Human-readable lines (filter from `RUST_LOG`, default `info`).
    Text,
    /// One JSON object per line (filter from `RUST_LOG`, default `info`).
    Json,
    /// Human-readable lines only when `RUST_LOG` is set (the CLI: its output is its
    /// result, not logs).
    TextIfRustLog,
}

/// What one program passes to [`init`].
#[derive(Clone, Debug)]
pub struct Options {
    /// `service.name` unless `OTEL_SERVICE_NAME` (or `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
    pub default_service_name: String,
    /// `service.instance.id`: the node (`node-<id>`) or pod name. It wins over a
    /// `service.instance.id` in `OTEL_RESOURCE_ATTRIBUTES`, which is used when this
    /// is `None`.
    pub instance_id: Option<String>,
    pub log: LogOutput,
}

impl Options {
    pub fn new(default_service_name: impl Into<String>, log: LogOutput) -> Options {
        Options { default_service_name: default_service_name.into(), instance_id: None, log }
    }

    pub fn instance_id(mut self, id: impl Into<String>) -> Options {
        self.instance_id = Some(id.into());
        self
    }
}

/// The installed telemetry: keep it until the program ends. Dropping it flushes and
/// stops the exporter (bounded by [`SHUTDOWN_TIMEOUT`]).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    stats: Arc<ExportStats>,
    endpoint: Option<String>,
}

impl Telemetry {
    /// A `Telemetry` that exports nothing.
    pub fn disabled() -> Telemetry {
        Telemetry { provider: None, stats: Arc::default(), endpoint: None }
    }

    /// Whether spans are exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The collector URL spans are sent to.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Spans dropped because the export queue was full.
    pub fn dropped_spans(&self) -> u64 {
        self.stats.dropped()
    }

    /// Counters of the exporter.
    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    /// Exports what is queued now (waits up to about 5 s). Blocking: from async code,
    /// call it through `spawn_blocking`.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    /// Exports the spans still queued and stops the exporter (waits up to
    /// [`SHUTDOWN_TIMEOUT`]). Blocking: from async code, call it through
    /// `spawn_blocking`. With the gRPC exporter, the tokio runtime it was created in
    /// must still be running.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "could not flush the last spans to the collector");
        }
        let dropped = self.stats.dropped();
        if dropped > 0 {
            tracing::warn!(dropped_spans = dropped, "spans were dropped because the export queue was full");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// Installs the global `tracing` subscriber (stderr logs and, when an endpoint is
/// configured, the OpenTelemetry layer) and the global tracer provider. Call once, at
/// start; with the gRPC protocol, from inside a tokio runtime (the exporter's
/// connection lives on it). If a subscriber is already installed (a test, an
/// embedding program), neither is installed and exporting is off.
pub fn init(opts: Options) -> Telemetry {
    init_with(opts, TelemetryConfig::from_env(""))
}

/// [`init`] with an explicit configuration (its empty `service_name` is replaced by
/// `opts.default_service_name`).
pub fn init_with(opts: Options, mut cfg: TelemetryConfig) -> Telemetry {
    if cfg.service_name.is_empty() {
        cfg.service_name = opts.default_service_name.clone();
    }
    let mut warnings = std::mem::take(&mut cfg.warnings);
    let mut provider = None;
    let mut stats = Arc::new(ExportStats::default());
    if let Some(endpoint) = &cfg.endpoint {
        match build_provider(&cfg, endpoint, opts.instance_id.as_deref()) {
            Ok((p, s)) => {
                provider = Some(p);
                stats = s;
            }
            Err(e) => warnings.push(format!("OpenTelemetry export to {endpoint} is off: {e}")),
        }
    }

    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(fmt) = fmt_layer(opts.log) {
        layers.push(fmt);
    }
    if let Some(p) = &provider {
        let tracer = p.tracer(TRACER_NAME);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(otel_filter())
                .boxed(),
        );
    }
    if tracing_subscriber::registry().with(layers).try_init().is_err() {
        // Someone else's subscriber: our spans would not reach our provider.
        if let Some(p) = provider.take() {
            let _ = p.shutdown();
        }
        return Telemetry::disabled();
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
        tracing::info!(
            endpoint = cfg.endpoint.as_deref().unwrap_or_default(),
            protocol = cfg.protocol.as_str(),
            service_name = %cfg.service_name,
            instance_id = opts.instance_id.as_deref().or(cfg.resource_attribute("service.instance.id")).unwrap_or("-"),
            sampler = %cfg.sampler,
            "exporting OpenTelemetry traces"
        );
    }
    Telemetry { provider, stats, endpoint: cfg.endpoint }
}

fn fmt_layer(log: LogOutput) -> Option<Box<dyn Layer<Registry> + Send + Sync>> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    if log == LogOutput::TextIfRustLog && rust_log.is_none() {
        return None;
    }
    let mut filter =
        rust_log.as_deref().and_then(|v| EnvFilter::try_new(v).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    // The SDK's own diagnostics repeat on every failed export; the exporter wrapper
    // reports failures once instead. RUST_LOG can still turn them on by name.
    for target in ["opentelemetry", "opentelemetry_sdk", "opentelemetry_otlp"] {
        if !rust_log.as_deref().unwrap_or_default().contains(target)
            && let Ok(d) = format!("{target}=off").parse()
        {
            filter = filter.add_directive(d);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let filter = filter.and(tracing_subscriber::filter::filter_fn(|meta| !is_per_request_span(meta)));
    Some(match log {
        LogOutput::Json => layer.json().with_filter(filter).boxed(),
        LogOutput::Text | LogOutput::TextIfRustLog => layer.with_filter(filter).boxed(),
    })
}

/// A span opened for every client request (raftkv's `kv.request`, tarpc's RPC spans).
/// They are for traces; the log layer skips them, because formatting their fields for
/// lines that are rarely printed cost about 5% of a loaded leader's CPU. Events inside
/// them are still logged, without those fields.
fn is_per_request_span(meta: &Metadata<'_>) -> bool {
    meta.is_span() && (meta.name() == "kv.request" || meta.target().starts_with("tarpc::"))
}

/// Which spans become OpenTelemetry spans: raftkv's own (info and above), and tarpc's
/// RPC spans, its client spans only inside one of ours (so background traffic such as
/// heartbeats or status polls opens no traces of its own).
fn otel_filter<S>() -> DynFilterFn<S, impl Fn(&Metadata<'_>, &LayerContext<'_, S>) -> bool>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    DynFilterFn::new(|meta: &Metadata<'_>, cx: &LayerContext<'_, S>| {
        if *meta.level() > Level::INFO {
            return false;
        }
        let target = meta.target();
        if target.starts_with("raftkv") {
            true
        } else if target.starts_with("tarpc::client") {
            meta.is_span() && cx.lookup_current().is_some()
        } else {
            target.starts_with("tarpc::server") && meta.is_span()
        }
    })
}

fn build_provider(
    cfg: &TelemetryConfig,
    endpoint: &str,
    instance_id: Option<&str>,
) -> Result<(SdkTracerProvider, Arc<ExportStats>), String> {
    let exporter = match cfg.protocol {
        Protocol::Grpc => {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err("the gRPC exporter must be created inside a tokio runtime".into());
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .map_err(|e| e.to_string())?;

    let stats = Arc::new(ExportStats::default());
    let (exporter, gate) = export::bounded(exporter, MAX_QUEUE_SIZE, stats.clone(), endpoint.to_string());
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE_SIZE)
        .with_max_export_batch_size(MAX_EXPORT_BATCH_SIZE)
        .with_scheduled_delay(SCHEDULED_DELAY)
        .build();
    let processor = gate.wrap(BatchSpanProcessor::new(exporter, batch));

    let mut resource = Resource::builder_empty().with_service_name(cfg.service_name.clone());
    for (k, v) in &cfg.resource_attributes {
        if k == "service.instance.id" && instance_id.is_some() {
            continue;
        }
        resource = resource.with_attribute(opentelemetry::KeyValue::new(k.clone(), v.clone()));
    }
    if let Some(id) = instance_id {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", id.to_string()));
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(export::DropInvalidParent(sampler(cfg.sampler)))
        .with_span_processor(processor)
        .build();
    Ok((provider, stats))
}

fn sampler(cfg: SamplerConfig) -> Sampler {
    let root = |r: RootSampler| match r {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::TraceIdRatio(p) => Sampler::TraceIdRatioBased(p),
    };
    match cfg {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(p) => Sampler::TraceIdRatioBased(p),
        SamplerConfig::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
    }
}

/// The global tracer, for spans the `tracing` macros cannot express (a start time in
/// the past, links known only at the start). A no-op when nothing is exported.
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer(TRACER_NAME)
}

/// The OpenTelemetry context of a `tracing` span (empty when the span is not
/// recorded).
pub fn context_of(span: &tracing::Span) -> opentelemetry::Context {
    span.context()
}

/// The span context of `cx` if it is a valid, sampled one (worth linking to or
/// parenting on).
pub fn sampled_span_context(cx: &opentelemetry::Context) -> Option<SpanContext> {
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then_some(sc)
}

/// Hex trace id of a `tracing` span, for log lines (`None` when it is not recorded).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    sampled_span_context(&span.context()).map(|sc| sc.trace_id().to_string())
}
