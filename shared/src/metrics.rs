//! Prometheus metrics: the text encoding both services serve at `/metrics`, and the small HTTP
//! listener the worker (which serves nothing else) uses for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What Prometheus is told it gets (prometheus-client writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets for durations, 0.5 ms to about 16 s.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16)
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// A `/metrics` response.
pub fn response(registry: &Registry) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(encode(registry))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    response
}

/// Binds the metrics listener. Port 0 (the default) takes a free port, so a second process with
/// the same settings never collides; the bound address is logged.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (and `GET /healthz`) from `registry` until `shutdown` fires.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(5));
    loop {
        let socket = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    continue;
                }
            },
        };
        let registry = Arc::clone(&registry);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let registry = Arc::clone(&registry);
            async move {
                let response = match (request.method(), request.uri().path()) {
                    (&Method::GET, "/metrics") => response(&registry),
                    (&Method::GET, "/healthz") => {
                        Response::new(Full::new(Bytes::from_static(b"ok\n")))
                    }
                    _ => {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(b"not found\n")));
                        *response.status_mut() = StatusCode::NOT_FOUND;
                        response
                    }
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(socket), service);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}
