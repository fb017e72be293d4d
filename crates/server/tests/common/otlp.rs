//! A real OTLP/gRPC trace receiver for tests: the collector's `TraceService` from
//! `opentelemetry-proto`, served by tonic on 127.0.0.1, keeping every span it is sent
//! with its resource's `service.name` and `service.instance.id`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

/// One received span.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub instance: Option<String>,
    pub span: Span,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<&any_value::Value> {
        attr(&self.span.attributes, key)
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            any_value::Value::IntValue(i) => Some(*i),
            any_value::Value::StringValue(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attr(key)? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v: &AnyValue| v.value.as_ref())
}

/// What the receiver holds.
#[derive(Clone, Default)]
pub struct Store {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<u64>>,
    raw: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

impl Store {
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Every export request as received (resources and scopes included).
    pub fn raw_requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.raw.lock().unwrap().clone()
    }

    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        self.raw.lock().unwrap().push(req.clone());
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let text = |k: &str| match attr(&attrs, k) {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            };
            let service = text("service.name").unwrap_or_default();
            let instance = text("service.instance.id");
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Received { service: service.clone(), instance: instance.clone(), span });
                }
            }
        }
        self.spans.lock().unwrap().extend(out);
        *self.requests.lock().unwrap() += 1;
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts the receiver; returns its address and what it receives.
pub async fn start_receiver() -> (SocketAddr, Store) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
    let addr = listener.local_addr().expect("receiver address");
    let store = Store::default();
    let service = TraceServiceServer::new(store.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(e) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
            eprintln!("OTLP receiver stopped: {e}");
        }
    });
    (addr, store)
}

/// Lower-case hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
