//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`: spans arrive as an OTLP protobuf POST
//! on `/v1/traces` of a minimal HTTP receiver in this test, with the resource's
//! service name and instance id, and are flushed by `shutdown`.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use raftkv_telemetry::{LogOutput, Options, Protocol, TelemetryConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// (path, decoded request) of every POST.
type Posts = Arc<Mutex<Vec<(String, ExportTraceServiceRequest)>>>;

async fn serve(listener: TcpListener, posts: Posts) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { return };
        let posts = posts.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let header_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                if let Some(end) = header_end {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                        let body = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        if let Ok(req) = ExportTraceServiceRequest::decode(body.as_slice()) {
                            posts.lock().unwrap().push((path, req));
                        }
                        let reply =
                            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_posted_as_otlp_protobuf() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let posts = Posts::default();
    tokio::spawn(serve(listener, posts.clone()));

    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test".to_string()),
    ];
    let cfg = TelemetryConfig::from_lookup("http-test", |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
    assert_eq!(cfg.protocol, Protocol::HttpProtobuf);
    let telemetry =
        raftkv_telemetry::init_with(Options::new("http-test", LogOutput::TextIfRustLog).instance_id("i-1"), cfg);
    assert!(telemetry.is_exporting());

    {
        let span = tracing::info_span!(target: "raftkv::test", "test.outer", answer = 42u64);
        let _entered = span.enter();
        tracing::info_span!(target: "raftkv::test", "test.inner").in_scope(|| {});
        // Not raftkv's: not exported.
        tracing::info_span!(target: "other_crate", "test.ignored").in_scope(|| {});
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.expect("shutdown");

    let posts = posts.lock().unwrap().clone();
    assert!(!posts.is_empty(), "nothing was posted");
    let mut names = Vec::new();
    for (path, req) in &posts {
        assert_eq!(path, "/v1/traces");
        for rs in &req.resource_spans {
            let attrs = &rs.resource.as_ref().expect("a resource").attributes;
            let get = |k: &str| {
                attrs.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.clone())
            };
            assert_eq!(get("service.name"), Some(any_value::Value::StringValue("http-test".into())));
            assert_eq!(get("service.instance.id"), Some(any_value::Value::StringValue("i-1".into())));
            assert_eq!(get("deployment.environment"), Some(any_value::Value::StringValue("test".into())));
            for ss in &rs.scope_spans {
                names.extend(ss.spans.iter().map(|s| s.name.clone()));
            }
        }
    }
    names.sort();
    assert_eq!(names, vec!["test.inner".to_string(), "test.outer".to_string()]);
}
