//! The `[telemetry]` table of `troupe.toml`, and the standard
//! `OTEL_*` variables it leaves to the environment.
//!
//! Export is off unless an endpoint is named: `endpoint` here, or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`).
//! `enabled = false` or `OTEL_SDK_DISABLED=true` turns it off whatever
//! else is set. What the table sets wins over the environment (the
//! OpenTelemetry rule: configuration in code over variables); what it
//! leaves out (headers, timeout, compression, TLS) the exporter reads
//! from the `OTEL_EXPORTER_OTLP_*` variables.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How spans and metrics go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP, protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

impl Protocol {
    fn parse(s: &str) -> Result<Protocol, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "protocol `{other}` is not one Troupe exports with (`grpc` or `http/protobuf`)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What the table says, checked, before the environment is read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    pub enabled: Option<bool>,
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub service_name: Option<String>,
    pub traces: bool,
    pub metrics: bool,
    pub metrics_interval: Duration,
    pub headers: BTreeMap<String, String>,
    pub sample_ratio: Option<f64>,
}

/// The table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryTable {
    enabled: Option<bool>,
    endpoint: Option<String>,
    protocol: Option<String>,
    service_name: Option<String>,
    traces: Option<bool>,
    metrics: Option<bool>,
    metrics_interval: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    sample_ratio: Option<f64>,
}

/// The shortest interval between metric exports.
pub const MIN_METRICS_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);

impl TelemetryTable {
    /// The settings it describes; the error names the field.
    pub fn check(self) -> Result<Telemetry, String> {
        if let Some(e) = &self.endpoint {
            check_endpoint(e).map_err(|m| format!("endpoint: {m}"))?;
        }
        let protocol = self
            .protocol
            .as_deref()
            .map(Protocol::parse)
            .transpose()
            .map_err(|m| format!("protocol: {m}"))?;
        let metrics_interval = match self.metrics_interval.as_deref() {
            None => DEFAULT_METRICS_INTERVAL,
            Some(s) => {
                let d = humantime::parse_duration(s)
                    .map_err(|e| format!("metrics_interval: `{s}` is not a duration ({e})"))?;
                if d < MIN_METRICS_INTERVAL {
                    return Err(format!(
                        "metrics_interval: `{s}` is shorter than {}",
                        humantime::format_duration(MIN_METRICS_INTERVAL)
                    ));
                }
                d
            }
        };
        for (name, value) in &self.headers {
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: `{name}` is not a header name"))?;
            http::HeaderValue::from_str(value)
                .map_err(|_| format!("headers: the value of `{name}` is not a header value"))?;
        }
        if let Some(s) = &self.service_name
            && s.trim().is_empty()
        {
            return Err("service_name: it is empty".into());
        }
        if let Some(r) = self.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!("sample_ratio: {r} is not between 0 and 1"));
        }
        Ok(Telemetry {
            enabled: self.enabled,
            endpoint: self.endpoint,
            protocol,
            service_name: self.service_name,
            traces: self.traces.unwrap_or(true),
            metrics: self.metrics.unwrap_or(true),
            metrics_interval,
            headers: self.headers,
            sample_ratio: self.sample_ratio,
        })
    }
}

impl Telemetry {
    /// The defaults of an app with no `[telemetry]` table.
    pub fn none() -> Telemetry {
        TelemetryTable::default()
            .check()
            .expect("the defaults are valid")
    }

    /// What to export, with the environment `env` (a variable's value by
    /// name) read for what the table leaves out; `None` when export is
    /// off. An error is a variable that cannot be used.
    pub fn resolve(
        &self,
        app: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
        if disabled || self.enabled == Some(false) || !(self.traces || self.metrics) {
            return Ok(None);
        }
        let from_env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .any(|v| set(v).is_some());
        if self.endpoint.is_none() && !from_env {
            if self.enabled == Some(true) {
                return Err(
                    "[telemetry] enabled = true, but no endpoint is set (`endpoint`, or \
                     OTEL_EXPORTER_OTLP_ENDPOINT)"
                        .into(),
                );
            }
            return Ok(None);
        }
        let protocol = match self.protocol {
            Some(p) => p,
            None => match set("OTEL_EXPORTER_OTLP_PROTOCOL") {
                Some(p) => {
                    Protocol::parse(&p).map_err(|m| format!("OTEL_EXPORTER_OTLP_PROTOCOL: {m}"))?
                }
                None => Protocol::Grpc,
            },
        };
        let sample_ratio = match self.sample_ratio {
            Some(r) => r,
            None => sampler(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?,
        };
        let service_name = self
            .service_name
            .clone()
            .or_else(|| set("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| format!("troupe-{app}"));
        Ok(Some(Resolved {
            endpoint: self.endpoint.clone(),
            protocol,
            service_name,
            traces: self.traces,
            metrics: self.metrics,
            metrics_interval: self.metrics_interval,
            headers: self.headers.clone(),
            sample_ratio,
        }))
    }
}

/// What the exporters are built with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The table's endpoint (a base URL: the signal's path is added for
    /// HTTP); `None`: the exporter reads the environment's.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    pub service_name: String,
    pub traces: bool,
    pub metrics: bool,
    pub metrics_interval: Duration,
    pub headers: BTreeMap<String, String>,
    /// The share of traces whose spans are exported, 0 to 1.
    pub sample_ratio: f64,
}

impl Resolved {
    /// The URL a signal (`traces`, `metrics`) is sent to, when the table
    /// names the endpoint: as is for gRPC, with `/v1/SIGNAL` for HTTP.
    pub fn url(&self, signal: &str) -> Option<String> {
        let base = self.endpoint.as_deref()?;
        Some(match self.protocol {
            Protocol::Grpc => base.to_string(),
            Protocol::HttpProtobuf => format!("{}/v1/{signal}", base.trim_end_matches('/')),
        })
    }
}

/// The share of traces `OTEL_TRACES_SAMPLER` (and its argument) asks
/// for. Troupe decides by trace id (a trace is exported whole or not at
/// all, on every host), so the parent-based samplers are read as their
/// ratio.
fn sampler(name: Option<String>, arg: Option<String>) -> Result<f64, String> {
    let ratio = || -> Result<f64, String> {
        match arg.as_deref().map(str::trim) {
            None => Ok(1.0),
            Some(a) => a
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("OTEL_TRACES_SAMPLER_ARG: `{a}` is not a ratio between 0 and 1")
                }),
        }
    };
    match name.as_deref().map(str::trim) {
        None | Some("always_on" | "parentbased_always_on") => Ok(1.0),
        Some("always_off" | "parentbased_always_off") => Ok(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => ratio(),
        Some(other) => Err(format!(
            "OTEL_TRACES_SAMPLER: `{other}` is not a sampler Troupe knows (always_on, always_off, \
             traceidratio, or their parentbased_ forms)"
        )),
    }
}

/// An endpoint is an absolute `http` or `https` URL with a host.
fn check_endpoint(e: &str) -> Result<(), String> {
    let uri: http::Uri = e.parse().map_err(|_| format!("`{e}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{e}` is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{e}` names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<Telemetry, String> {
        let t: TelemetryTable = toml::from_str(text).map_err(|e| e.to_string())?;
        t.check()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn off_unless_an_endpoint_is_named() {
        assert_eq!(Telemetry::none().resolve("shop", no_env), Ok(None));
        let env = |k: &str| (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c:4317".into());
        let r = Telemetry::none().resolve("shop", env).unwrap().unwrap();
        assert_eq!(r.endpoint, None);
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.service_name, "troupe-shop");
        let off = |k: &str| match k {
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => env(k),
        };
        assert_eq!(Telemetry::none().resolve("shop", off), Ok(None));
        let t = table("enabled = true").unwrap();
        assert!(
            t.resolve("shop", no_env)
                .unwrap_err()
                .contains("no endpoint")
        );
    }

    #[test]
    fn the_table_wins_over_the_environment() {
        let t = table(
            "endpoint = \"http://127.0.0.1:4318/\"\nprotocol = \"http/protobuf\"\nservice_name = \"orders\"",
        )
        .unwrap();
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".into()),
            "OTEL_SERVICE_NAME" => Some("other".into()),
            _ => None,
        };
        let r = t.resolve("shop", env).unwrap().unwrap();
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.service_name, "orders");
        assert_eq!(r.url("traces").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(r.sample_ratio, 1.0);
        let sampled = |k: &str| match k {
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".into()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".into()),
            _ => None,
        };
        assert_eq!(
            t.resolve("shop", sampled).unwrap().unwrap().sample_ratio,
            0.25
        );
        let t2 = table("endpoint = \"http://c:4317\"\nsample_ratio = 0.5").unwrap();
        assert_eq!(
            t2.resolve("shop", sampled).unwrap().unwrap().sample_ratio,
            0.5
        );
        let odd = |k: &str| (k == "OTEL_TRACES_SAMPLER").then(|| "jaeger_remote".into());
        assert!(
            t.resolve("shop", odd)
                .unwrap_err()
                .contains("jaeger_remote")
        );
        let bad = |k: &str| (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".into());
        let t = table("endpoint = \"http://c:4317\"").unwrap();
        assert!(t.resolve("shop", bad).unwrap_err().contains("http/json"));
    }

    #[test]
    fn bad_tables_name_the_field() {
        for (text, field) in [
            ("endpoint = \"c:4317\"", "endpoint"),
            ("endpoint = \"ftp://c\"", "endpoint"),
            ("protocol = \"http/json\"", "protocol"),
            ("metrics_interval = \"10ms\"", "metrics_interval"),
            ("metrics_interval = \"soon\"", "metrics_interval"),
            ("headers = { \"a b\" = \"x\" }", "headers"),
            ("service_name = \" \"", "service_name"),
            ("sample_ratio = 1.5", "sample_ratio"),
        ] {
            let e = table(text).unwrap_err();
            assert!(e.starts_with(field), "{text}: {e}");
        }
        assert!(table("sampler = 1").unwrap_err().contains("unknown field"));
    }
}
