//! A minimal OTLP trace receiver for the tests: accepts OTLP/HTTP (`POST /v1/traces`, protobuf)
//! and OTLP/gRPC (`TraceService/Export` over cleartext HTTP/2) on one port, and keeps what
//! arrived, flattened to what the assertions need.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// The gRPC method the exporter calls.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How the spans reached the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` value that makes the services use it.
    pub fn env_value(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

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
    /// So a test can tell the services used the protocol it asked for, not a fallback.
    pub protocol: Protocol,
}

/// The receiver; lives as long as the test.
pub struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

/// The reply's frames, given all at once: gRPC needs a trailers frame after the data.
type Reply =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&spans);
        tokio::spawn(async move {
            // The auto builder tells HTTP/1.1 from the HTTP/2 preface, so one port serves the
            // HTTP exporter and tonic's prior-knowledge h2c alike.
            let builder = auto::Builder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let store = Arc::clone(&store);
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let grpc = request.uri().path() == GRPC_EXPORT;
                        // A body cut short is just an export that did not arrive.
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(if grpc {
                            grpc_export(&body, &store)
                        } else {
                            http_export(body, &store)
                        })
                    }
                });
                tokio::spawn(
                    builder
                        .serve_connection(TokioIo::new(socket), service)
                        .into_owned(),
                );
            }
        });
        Self { endpoint, spans }
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT`, either protocol: the HTTP exporter appends
    /// `/v1/traces`, the gRPC one calls `TraceService/Export` on it.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }
}

/// Stores an OTLP/HTTP export. One that does not decode is dropped: the assertions on what
/// arrived are what catch it.
fn http_export(body: Bytes, store: &Mutex<Vec<ReceivedSpan>>) -> hyper::Response<Reply> {
    if let Ok(export) = ExportTraceServiceRequest::decode(body) {
        store
            .lock()
            .expect("lock")
            .extend(flatten(export, Protocol::HttpProtobuf));
    }
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    let mut response = hyper::Response::new(frames(vec![Frame::data(Bytes::from(reply))]));
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

/// Stores a unary gRPC export: exactly one length-prefixed message. A compressed or malformed
/// one is refused with a status, as a collector would, rather than acknowledged and dropped.
fn grpc_export(body: &[u8], store: &Mutex<Vec<ReceivedSpan>>) -> hyper::Response<Reply> {
    // INVALID_ARGUMENT: not even the 5-byte prefix.
    let Some((&[compressed, length @ ..], message)) = body.split_first_chunk::<5>() else {
        return grpc_reply(Bytes::new(), 3);
    };
    if compressed != 0 {
        // UNIMPLEMENTED: no compression was agreed; the services do not compress by default.
        return grpc_reply(Bytes::new(), 12);
    }
    let export = usize::try_from(u32::from_be_bytes(length))
        .ok()
        .filter(|&length| length == message.len())
        .and_then(|_| ExportTraceServiceRequest::decode(message).ok());
    let Some(export) = export else {
        // INVALID_ARGUMENT: the length prefix disagrees with the body, or it does not decode.
        return grpc_reply(Bytes::new(), 3);
    };
    store
        .lock()
        .expect("lock")
        .extend(flatten(export, Protocol::Grpc));
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + reply.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(reply.len()).expect("an empty response fits"));
    framed.put_slice(&reply);
    grpc_reply(framed.freeze(), 0)
}

/// A gRPC answer: HTTP 200 whatever happened, the outcome in the `grpc-status` trailer.
fn grpc_reply(message: Bytes, status: u16) -> hyper::Response<Reply> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    let mut body = Vec::new();
    if !message.is_empty() {
        body.push(Frame::data(message));
    }
    body.push(Frame::trailers(trailers));
    let mut response = hyper::Response::new(frames(body));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

fn frames(frames: Vec<Frame<Bytes>>) -> Reply {
    StreamBody::new(futures_util::stream::iter(
        frames.into_iter().map(Ok).collect::<Vec<_>>(),
    ))
}

fn flatten(export: ExportTraceServiceRequest, protocol: Protocol) -> Vec<ReceivedSpan> {
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
                    protocol,
                });
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
