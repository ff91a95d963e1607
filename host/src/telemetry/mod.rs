//! Telemetry: the spans of the host's work and its counters, exported to
//! OpenTelemetry over OTLP (gRPC or HTTP/protobuf), and the W3C trace
//! context every event, run and outbound call carries.
//!
//! Off by default (`config.rs` says when it is on). **Off, it costs one
//! branch per place that would make a span**: [`Telemetry`] is an
//! `Option`, and no span is built, no clock read, no attribute allocated
//! behind a `None`. On, spans are data (`spans.rs`: kinds, names, ids,
//! attributes) handed to the SDK's batch processor, which exports them
//! from a thread of its own and drops what does not fit its queue rather
//! than wait: **telemetry never holds up a delivery or a commit**.
//!
//! The trace context itself (`context.rs`) is not telemetry's to turn
//! off: an event from outside gets a `traceparent` (the producer's
//! trace, or a new one) whatever is exported, so every event of a cascade,
//! every command of a run, and every call out carries the same trace id.

pub mod config;
pub mod context;
mod http_client;
mod metrics;
pub mod spans;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanProcessor};

pub use config::{Protocol, Resolved};
pub use context::TraceContext;
pub use metrics::Observed;
pub use spans::Span;

/// How long an export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans held for export when the environment does not say
/// (`OTEL_BSP_MAX_QUEUE_SIZE`): a second of a busy host's work.
const QUEUE: usize = 1 << 16;
/// The longest a span waits for its batch (`OTEL_BSP_SCHEDULE_DELAY`).
const DELAY: Duration = Duration::from_millis(500);
/// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`): a busy host sends
/// fewer, larger requests.
const BATCH: usize = 2048;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

impl TelemetryError {
    pub fn new(message: String) -> TelemetryError {
        TelemetryError(message)
    }
}

/// The host's exporters, or nothing. Cloning shares them.
#[derive(Clone, Default)]
pub struct Telemetry(Option<Arc<Exporting>>);

struct Exporting {
    settings: Resolved,
    spans: Option<BatchSpanProcessor>,
    meters: Option<SdkMeterProvider>,
    scope: InstrumentationScope,
    /// What the metrics read, once the host has it.
    observed: Arc<OnceLock<metrics::Source>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Telemetry(off)"),
            Some(e) => write!(f, "Telemetry({:?})", e.settings),
        }
    }
}

impl Telemetry {
    /// No export.
    pub fn off() -> Telemetry {
        Telemetry(None)
    }

    /// Start exporting as `settings` say (from [`config::Telemetry::resolve`]).
    /// Must be called within the tokio runtime (gRPC's channel lives
    /// on it).
    pub fn start(settings: Resolved) -> Result<Telemetry, TelemetryError> {
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let scope = InstrumentationScope::builder("troupe")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let spans = if settings.traces {
            let exporter = span_exporter(&settings)?;
            let mut batch = BatchConfigBuilder::default();
            if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
                batch = batch.with_max_queue_size(QUEUE);
            }
            if std::env::var_os("OTEL_BSP_SCHEDULE_DELAY").is_none() {
                batch = batch.with_scheduled_delay(DELAY);
            }
            if std::env::var_os("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
                batch = batch.with_max_export_batch_size(BATCH);
            }
            let mut p = BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch.build())
                .build();
            p.set_resource(&resource);
            Some(p)
        } else {
            None
        };
        let observed = Arc::new(OnceLock::new());
        let meters = if settings.metrics {
            let exporter = metric_exporter(&settings)?;
            Some(metrics::provider(
                exporter,
                resource,
                settings.metrics_interval,
                observed.clone(),
            ))
        } else {
            None
        };
        tracing::info!(
            protocol = settings.protocol.name(),
            endpoint = settings.endpoint.as_deref().unwrap_or("(from OTEL_EXPORTER_OTLP_*)"),
            service = %settings.service_name,
            traces = settings.traces,
            metrics = settings.metrics,
            "exporting telemetry"
        );
        Ok(Telemetry(Some(Arc::new(Exporting {
            settings,
            spans,
            meters,
            scope,
            observed,
        }))))
    }

    /// Whether spans are exported: the one test before any span is made.
    #[inline]
    pub fn tracing(&self) -> bool {
        self.0.as_ref().is_some_and(|e| e.spans.is_some())
    }

    /// Whether the spans of trace `trace` are exported: tracing, and the
    /// trace among the `sample_ratio` kept. Decided by the trace id alone
    /// (as OpenTelemetry's `TraceIdRatioBased`), so every host and step
    /// decides the same for one trace.
    #[inline]
    pub fn samples(&self, trace: u128) -> bool {
        self.0
            .as_ref()
            .is_some_and(|e| e.spans.is_some() && kept(trace, e.settings.sample_ratio))
    }

    /// Hand finished spans to the exporter (nothing when off; the spans
    /// of traces not sampled are dropped).
    pub fn export(&self, spans: impl IntoIterator<Item = Span>) {
        if let Some(e) = &self.0
            && let Some(p) = &e.spans
        {
            for s in spans.into_iter().filter(|s| self.samples(s.ctx.trace)) {
                p.on_end(s.into_data(&e.scope));
            }
        }
    }

    /// What the exported metrics read from (the host's counters), once
    /// the host has them; later calls are ignored.
    pub fn observe(&self, source: impl Fn() -> Observed + Send + Sync + 'static) {
        if let Some(e) = &self.0 {
            let _ = e.observed.set(Arc::new(source));
        }
    }

    /// Export what is held and stop. Blocks (on the exporters' threads'
    /// answer): call it off the async runtime's workers.
    pub fn shutdown(&self) {
        let Some(e) = &self.0 else { return };
        if let Some(p) = &e.spans
            && let Err(err) = p.shutdown_with_timeout(EXPORT_TIMEOUT)
        {
            tracing::warn!("telemetry: spans not all exported at shutdown: {err}");
        }
        if let Some(m) = &e.meters
            && let Err(err) = m.shutdown_with_timeout(EXPORT_TIMEOUT)
        {
            tracing::warn!("telemetry: metrics not exported at shutdown: {err}");
        }
    }
}

fn metadata(s: &Resolved) -> opentelemetry_otlp::tonic_types::metadata::MetadataMap {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &s.headers {
        // Checked when the table was read.
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.insert(k, v);
        }
    }
    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers)
}

/// An OTLP exporter of one signal (`SpanExporter` or `MetricExporter`,
/// sent to `/v1/SIGNAL` over HTTP) as the settings say: the endpoint and
/// headers the table gives, the rest from `OTEL_EXPORTER_OTLP_*`.
macro_rules! exporter {
    ($kind:ty, $signal:literal, $s:expr) => {{
        let s: &Resolved = $s;
        let b = <$kind>::builder();
        match s.protocol {
            Protocol::Grpc => {
                let mut b = b.with_tonic().with_timeout(EXPORT_TIMEOUT);
                if let Some(url) = s.url($signal) {
                    b = b.with_endpoint(url);
                }
                if !s.headers.is_empty() {
                    b = b.with_metadata(metadata(s));
                }
                b.build()
            }
            Protocol::HttpProtobuf => {
                let mut b = b
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(http_client::Ureq::new(EXPORT_TIMEOUT))
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(url) = s.url($signal) {
                    b = b.with_endpoint(url);
                }
                if !s.headers.is_empty() {
                    b = b.with_headers(s.headers.clone().into_iter().collect());
                }
                b.build()
            }
        }
        .map_err(|e| TelemetryError(format!("cannot build the {} exporter: {e}", $signal)))
    }};
}

fn span_exporter(s: &Resolved) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    exporter!(opentelemetry_otlp::SpanExporter, "traces", s)
}

fn metric_exporter(s: &Resolved) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    exporter!(opentelemetry_otlp::MetricExporter, "metrics", s)
}

/// Whether trace `trace` is among the `ratio` of traces kept: a mix of
/// all its bits (splitmix64's finaliser) below the ratio's share of
/// 2^64. Mixed, not read raw: the ids Troupe draws are UUIDs, whose
/// version and variant bits are fixed, and any host decides the same for
/// one trace.
fn kept(trace: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let mut z = (trace as u64) ^ ((trace >> 64) as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z as f64) < ratio * 18_446_744_073_709_551_616.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_ratio_keeps_that_share_of_traces_and_decides_the_same_each_time() {
        let traces: Vec<u128> = (0..20_000)
            .map(|_| super::TraceContext::root().trace)
            .collect();
        for ratio in [0.0, 0.1, 0.5, 1.0] {
            let kept = traces.iter().filter(|t| super::kept(**t, ratio)).count();
            let share = kept as f64 / traces.len() as f64;
            assert!((share - ratio).abs() < 0.02, "{ratio}: kept {share}");
        }
        // A trace kept at a ratio is kept at every larger one: raising the
        // ratio on some hosts first never splits a trace the others keep.
        assert!(
            traces
                .iter()
                .filter(|t| super::kept(**t, 0.3))
                .all(|t| super::kept(*t, 0.5))
        );
    }
}
