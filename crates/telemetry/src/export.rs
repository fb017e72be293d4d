//! The bounded queue in front of the SDK's batch span processor, export counters, and
//! the sampler wrapper.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanExporter, SpanProcessor,
};

/// Counters of one exporter.
#[derive(Debug, Default)]
pub struct ExportStats {
    dropped: AtomicU64,
    exported: AtomicU64,
    failed_exports: AtomicU64,
    /// The last drop count reported in the log.
    reported_dropped: AtomicU64,
}

impl ExportStats {
    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Export requests that failed.
    pub fn failed_exports(&self) -> u64 {
        self.failed_exports.load(Ordering::Relaxed)
    }
}

/// Splits the bound between a [`Gate`] (on the caller's side) and the exporter (on
/// the export thread) that share a count of spans queued or being exported.
pub(crate) fn bounded<E: SpanExporter>(
    exporter: E,
    capacity: usize,
    stats: Arc<ExportStats>,
    endpoint: String,
) -> (CountingExporter<E>, Gate) {
    let pending = Arc::new(AtomicUsize::new(0));
    (
        CountingExporter {
            inner: exporter,
            pending: pending.clone(),
            stats: stats.clone(),
            endpoint,
            failing: AtomicBool::new(false),
        },
        Gate { pending, capacity, stats },
    )
}

/// Admits a span into the batch processor only while fewer than `capacity` are queued
/// or being exported; otherwise drops and counts it. Never blocks.
pub(crate) struct Gate {
    pending: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<ExportStats>,
}

impl Gate {
    pub fn wrap<P: SpanProcessor>(self, inner: P) -> GatedProcessor<P> {
        GatedProcessor { inner, gate: self }
    }
}

pub(crate) struct GatedProcessor<P> {
    inner: P,
    gate: Gate,
}

impl<P> fmt::Debug for GatedProcessor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedProcessor").field("capacity", &self.gate.capacity).finish()
    }
}

impl<P: SpanProcessor> SpanProcessor for GatedProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Why not log here: this runs inside the tracing subscriber's callbacks; the
        // export thread reports drops instead.
        if self.gate.pending.fetch_add(1, Ordering::AcqRel) >= self.gate.capacity {
            self.gate.pending.fetch_sub(1, Ordering::AcqRel);
            self.gate.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and reporting failures once per outage.
pub(crate) struct CountingExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    stats: Arc<ExportStats>,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> fmt::Debug for CountingExporter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingExporter").field("endpoint", &self.endpoint).finish()
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            self.pending.fetch_sub(n.min(self.pending.load(Ordering::Acquire)), Ordering::AcqRel);
            match &result {
                Ok(()) => {
                    self.stats.exported.fetch_add(n as u64, Ordering::Relaxed);
                    if self.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(endpoint = %self.endpoint, "exporting spans to the collector again");
                    }
                }
                Err(e) => {
                    let failed = self.stats.failed_exports.fetch_add(1, Ordering::Relaxed) + 1;
                    // Every failure at debug level (off by default): lets a test wait
                    // for several failures instead of sleeping and hoping.
                    tracing::debug!(failed_exports = failed, error = %e, "span export failed");
                    if !self.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            error = %e,
                            "cannot export spans to the collector; they are dropped until it is reachable \
                             (reported again only after it recovers)"
                        );
                    }
                }
            }
            let dropped = self.stats.dropped();
            let reported = self.stats.reported_dropped.load(Ordering::Relaxed);
            if dropped > reported && (dropped.is_power_of_two() || dropped >= reported.saturating_mul(2)) {
                self.stats.reported_dropped.store(dropped, Ordering::Relaxed);
                tracing::warn!(dropped_spans = dropped, "the span export queue was full; spans were dropped");
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The configured sampler, except that a span whose parent is an invalid (all-zero)
/// remote context is dropped: tarpc sends such a context when its caller traced
/// nothing (peer heartbeats, clients without telemetry), and those server spans would
/// otherwise become traces of their own under `always_on`.
#[derive(Clone, Debug)]
pub(crate) struct DropInvalidParent(pub Sampler);

impl ShouldSample for DropInvalidParent {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if let Some(cx) = parent_context
            && cx.has_active_span()
            && !cx.span().span_context().is_valid()
        {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.0.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}
