//! The client's spans: one `kv.request` per operation, named for OpenTelemetry by
//! what it does (`kv.put`, `kv.get`, ...), with what the operation came to.

use raftkv_kv::WriteOp;
use raftkv_rpc::ScanStart;

use crate::client::WriteOutcome;
use crate::error::ClientError;

/// The client span of one write: `kv.put`, `kv.delete` or `kv.cas` (the OpenTelemetry
/// name; the `tracing` name is `kv.request` for all of them).
pub(crate) fn write_span(op: &WriteOp, client_id: u64, retry: bool) -> tracing::Span {
    let (name, key) = match op {
        WriteOp::Put { key, .. } => ("kv.put", key),
        WriteOp::Delete { key } => ("kv.delete", key),
        WriteOp::Cas { key, .. } => ("kv.cas", key),
    };
    tracing::info_span!(
        "kv.request",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        key = %key_text(key),
        client_id,
        seq = tracing::field::Empty,
        retry,
        index = tracing::field::Empty,
        term = tracing::field::Empty,
        leader = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        duplicate = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

pub(crate) fn record_write(span: &tracing::Span, o: &WriteOutcome) {
    span.record("index", o.index);
    span.record("term", o.term);
    span.record("leader", o.leader);
    span.record("endpoint", o.endpoint.as_str());
    span.record("duplicate", o.duplicate);
}

pub(crate) fn record_error(span: &tracing::Span, e: &ClientError) {
    span.record("otel.status_code", "ERROR");
    span.record("error", tracing::field::display(e));
}

/// Where a scan page starts, as span attribute.
pub(crate) fn start_text(start: &ScanStart) -> String {
    match start {
        ScanStart::First => "first".into(),
        ScanStart::AtOrAfter(key) => format!(">= {}", key_text(key)),
        ScanStart::After(key) => format!("> {}", key_text(key)),
    }
}

/// A key as span attribute: UTF-8 (lossy), at most 64 characters.
pub(crate) fn key_text(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        text.into_owned()
    }
}
