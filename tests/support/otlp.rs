//! A real OTLP receiver, started by a test: it takes what an exporter
//! sends over gRPC (tonic, the collector's own services) or HTTP/protobuf
//! (`POST /v1/traces`, `/v1/metrics`), decodes it with
//! `opentelemetry-proto`, and keeps every span and metric name for the
//! test to look at.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Got {
    pub service: String,
    pub trace: String,
    pub span: String,
    /// Empty for a root span.
    pub parent: String,
    pub name: String,
    /// `SpanKind` as the protocol numbers it (2 server, 3 client, 4
    /// producer, 5 consumer, 1 internal).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// (trace, span) of each link.
    pub links: Vec<(String, String)>,
    /// 2 = error.
    pub status: i32,
    pub start_ns: u64,
    pub end_ns: u64,
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const PRODUCER: i32 = 4;
pub const CONSUMER: i32 = 5;
pub const INTERNAL: i32 = 1;

impl Got {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Kept {
    /// Count only (a bench's receiver): spans are decoded, counted by
    /// name, and dropped.
    counting: bool,
    counted: Mutex<BTreeMap<String, u64>>,
    spans: Mutex<Vec<Got>>,
    metrics: Mutex<BTreeSet<String>>,
    requests: Mutex<u64>,
}

impl Kept {
    fn traces(&self, r: ExportTraceServiceRequest) {
        *self.requests.lock().unwrap() += 1;
        if self.counting {
            let mut counted = self.counted.lock().unwrap();
            for s in r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans)
            {
                *counted.entry(s.name.clone()).or_default() += 1;
            }
            return;
        }
        let mut out = self.spans.lock().unwrap();
        for rs in r.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        trace: hex(&s.trace_id),
                        span: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: s
                            .attributes
                            .iter()
                            .filter_map(|kv| {
                                Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                            })
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        status: s.status.map_or(0, |st| st.code),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                    });
                }
            }
        }
    }

    fn metrics(&self, r: ExportMetricsServiceRequest) {
        let mut out = self.metrics.lock().unwrap();
        for rm in r.resource_metrics {
            for sm in rm.scope_metrics {
                out.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &AnyValue) -> Option<String> {
    Some(match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

/// A receiver listening on loopback; stops when dropped.
pub struct Receiver {
    /// The endpoint to give an exporter: `http://127.0.0.1:PORT`.
    pub url: String,
    kept: Arc<Kept>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Grpc(Arc<Kept>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Receiver {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// OTLP over gRPC.
    pub fn grpc() -> Receiver {
        Self::grpc_with(Kept::default())
    }

    /// OTLP over gRPC, counting spans by name rather than keeping them.
    pub fn counting_grpc() -> Receiver {
        Self::grpc_with(Kept {
            counting: true,
            ..Kept::default()
        })
    }

    /// OTLP over HTTP/protobuf, counting spans by name rather than
    /// keeping them.
    pub fn counting_http() -> Receiver {
        Self::http_with(Kept {
            counting: true,
            ..Kept::default()
        })
    }

    fn grpc_with(kept: Kept) -> Receiver {
        let runtime = Self::runtime();
        let kept = Arc::new(kept);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tokio_stream_of(listener);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(kept.clone())))
            .add_service(MetricsServiceServer::new(Grpc(kept.clone())))
            .serve_with_incoming(incoming);
        runtime.spawn(server);
        Receiver {
            url,
            kept,
            runtime: Some(runtime),
        }
    }

    /// OTLP over HTTP with protobuf bodies.
    pub fn http() -> Receiver {
        Self::http_with(Kept::default())
    }

    fn http_with(kept: Kept) -> Receiver {
        use axum::body::Bytes;
        use axum::routing::post;
        let runtime = Self::runtime();
        let kept = Arc::new(kept);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (t, m) = (kept.clone(), kept.clone());
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(move |body: Bytes| async move {
                    answer(body, |r: ExportTraceServiceRequest| {
                        t.traces(r);
                        ExportTraceServiceResponse::default()
                    })
                }),
            )
            .route(
                "/v1/metrics",
                post(move |body: Bytes| async move {
                    answer(body, |r: ExportMetricsServiceRequest| {
                        m.metrics(r);
                        ExportMetricsServiceResponse::default()
                    })
                }),
            );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            kept,
            runtime: Some(runtime),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Got> {
        self.kept.spans.lock().unwrap().clone()
    }

    /// Spans counted by name (a counting receiver).
    pub fn counted(&self) -> BTreeMap<String, u64> {
        self.kept.counted.lock().unwrap().clone()
    }

    /// The names of the metrics received so far.
    pub fn metric_names(&self) -> BTreeSet<String> {
        self.kept.metrics.lock().unwrap().clone()
    }

    /// Export requests received (of spans).
    pub fn requests(&self) -> u64 {
        *self.kept.requests.lock().unwrap()
    }

    /// Wait until `done` holds of the spans received (or panic after
    /// `timeout`, showing what came).
    pub fn wait(&self, timeout: Duration, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if std::time::Instant::now() > end {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{} [{}]", s.name, s.trace))
                    .collect();
                panic!("{what}: not received within {timeout:?}; got {names:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An OTLP/HTTP answer: `body` decoded as `Req` and kept by `keep`
/// (`200` with its response, encoded), or a `400`.
fn answer<Req: Message + Default, Res: Message>(
    body: axum::body::Bytes,
    keep: impl FnOnce(Req) -> Res,
) -> (axum::http::StatusCode, Vec<u8>) {
    match Req::decode(body) {
        Ok(r) => (axum::http::StatusCode::OK, keep(r).encode_to_vec()),
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
    }
}

/// The listener as the stream of connections tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}
