//! A minimal OTLP/HTTP trace receiver for the tests: accepts `POST /v1/traces` (protobuf) and
//! keeps what arrived, flattened to what the assertions need.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    /// The resource's `service.version`.
    pub version: String,
    pub name: String,
    /// Lowercase hex, as W3C `traceparent` and the services' JSON log lines write it.
    pub trace_id: String,
    pub span_id: String,
    /// Attributes and events, as text, for the personal-data check.
    pub text: String,
}

/// The receiver; lives as long as the test.
pub struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&spans);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let body = request.into_body().collect().await.map(|b| b.to_bytes());
                        if let Ok(body) = body
                            && let Ok(export) = ExportTraceServiceRequest::decode(body)
                        {
                            store.lock().expect("lock").extend(flatten(export));
                        }
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        let mut response = hyper::Response::new(Full::new(Bytes::from(reply)));
                        response.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(socket), service));
            }
        });
        Self { endpoint, spans }
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let attribute = |key: &str| {
            resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    Value::StringValue(text) => text.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        let (service, version) = (attribute("service.name"), attribute("service.version"));
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    version: version.clone(),
                    text: format!("{:?} {:?}", span.attributes, span.events),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                });
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
