//! The HTTP API, served by `troupe run` (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/flows/{flow}/runs` | start a run; `202` with its id and a `Location` to poll |
//! | `GET /v1/runs/{id}` | the run's aggregated status |
//! | `GET /v1/runs`, `GET /v1/runs/counts` | find runs (filters, cursor), counts per flow and state |
//! | `POST /v1/runs/{id}/cancel`, `POST /v1/runs/{id}/redrive` | cancel a run, run a failed one again |
//! | `POST /v1/runs/{id}/signals/{name}` | a signal for the flow step that awaits it |
//! | `POST /v1/events` | publish events into the choreography (CloudEvents HTTP binding: structured, binary or batch) |
//! | `GET /v1/dlq`, `GET /v1/dlq/{id}`, `POST /v1/dlq/{id}/replay` | dead letters (filtered), one, replay one |
//! | `POST /v1/dlq/replay`, `POST /v1/dlq/purge` | replay or purge the dead letters a filter picks (a dry run first) |
//! | `GET /v1/traces/{correlation_id}` | every event of a cascade or run |
//! | `GET /v1/kv/{bucket}`, `GET /v1/kv/{bucket}/{key}` | steps' buckets, read-only |
//! | `GET /v1/deployments`, `GET /v1/deployments/{n}`, `POST /v1/deployments` | deployments: list, show, deploy (or roll back) |
//! | `GET /healthz` | liveness (no token needed) |
//! | `GET /readyz` | readiness, with the reasons when not ready (no token needed) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/openapi.json` | this API, as OpenAPI 3.1, generated from the handlers |
//! | `GET /v1/app` | the app as the console draws it: steps, wiring, flows, buckets, counters |
//! | `GET /ui` | the web console (`console/`: the token once, then a cookie) |
//!
//! **Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`.**
//! Errors are JSON: `{"error": "..."}` with a 4xx or 5xx status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::broker::{Broker, BrokerError, ErrorKind};
use crate::event::Event;
use crate::orchestrator::Orchestrator;
use crate::runtime::step::LoadedStep;
use crate::stats::Stats;

mod app;
mod auth;
pub mod console;
mod deploys;
mod dlq;
mod health;
pub mod kv;
pub mod metrics;
mod openapi;
mod runs;
mod schedules;
pub mod status;
mod traced;

pub use openapi::openapi_json;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub broker: Arc<dyn Broker>,
    pub orchestrator: Option<Orchestrator>,
    /// The host's deployments (and the current one's steps, which the
    /// door checks events against).
    pub deployer: Arc<crate::deployer::Deployer>,
    pub stats: Arc<Stats>,
    pub app: String,
    pub token: Arc<str>,
    /// Where the requests' spans go (if anywhere).
    pub telemetry: crate::telemetry::Telemetry,
    /// The app's schedules (`None` when it has no flows).
    pub schedules: Option<crate::schedule::Schedules>,
}

/// An error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        // Every 503 is "not now": say when to try again.
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        }
        r
    }
}

/// A broker error as an answer: the caller's errors as `4xx`; the
/// broker's unavailability as `503` (try again); a bug as `500`, logged
/// with its source (the answer says only that it is logged).
impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match (e.kind(), &e) {
            (_, BrokerError::NoSuchDeadLetter(_)) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            (_, BrokerError::TooLarge(_)) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            (ErrorKind::Caller, _) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
            (ErrorKind::Unavailable, _) => {
                tracing::warn!("broker unavailable: {e}");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            (ErrorKind::Internal, _) => {
                tracing::error!(error = ?e, "internal error answering a request");
                ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (logged by the host)".into(),
                )
            }
        }
    }
}

/// The body's bytes, with a JSON error (413 over the limit) when it cannot
/// be read.
struct RawBody(axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError(e.status(), e.body_text()))
    }
}

/// A body that is optional JSON: `null` when empty, a JSON 400 when it is
/// not JSON.
fn json_or_null(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// A JSON body, with a JSON 400 for anything that is not JSON.
struct Body(Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {e}"),
            )
        })
    }
}

/// The router, with the token check on every route but `/healthz` and
/// `/readyz`.
pub fn router(state: ApiState) -> Router {
    let guarded = Router::new()
        .route("/v1/flows/{flow}/runs", post(runs::start_run))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/counts", get(runs::counts))
        .route("/v1/runs/{id}", get(runs::run_status))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/redrive", post(runs::redrive))
        .route("/v1/runs/{id}/signals/{name}", post(runs::signal))
        .route("/v1/schedules", get(schedules::list))
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route("/v1/schedules/{name}/trigger", post(schedules::trigger))
        .route("/v1/events", post(publish))
        .route("/v1/dlq", get(dlq::list))
        .route("/v1/dlq/replay", post(dlq::replay_many))
        .route("/v1/dlq/purge", post(dlq::purge_many))
        .route("/v1/dlq/{id}", get(dlq::show))
        .route("/v1/dlq/{id}/replay", post(dlq::replay))
        .route("/v1/traces/{correlation_id}", get(trace))
        .route("/v1/deployments", get(deploys::list).post(deploys::deploy))
        .route("/v1/deployments/{n}", get(deploys::show))
        .route("/v1/kv/{bucket}", get(kv::bucket))
        .route("/v1/kv/{bucket}/{key}", get(kv::entry))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/app", get(app::app))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::auth,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(health::readyz))
        .merge(guarded)
        .merge(console::routes())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            traced::layer,
        ))
        .with_state(state)
}

/// Every error is JSON: an error response made by axum itself (a method
/// the route does not take, a path that does not decode) gets its text as
/// `{"error": ...}`, its status and headers (`Allow`) kept.
async fn json_errors(r: Response) -> Response {
    // JSON already, or a page of the console (its sign-in form says why).
    let own = r.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json") || v.as_bytes().starts_with(b"text/html")
    });
    if !(r.status().is_client_error() || r.status().is_server_error()) || own {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": message }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The header that makes a start idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Seconds a producer refused for `max_active_runs` is told to wait.
pub const RETRY_AFTER: &str = "1";

/// Publish events into the choreography, in any of the CloudEvents HTTP
/// binding's modes (`event::http`): one event (structured or binary) or a
/// batch, stored whole or not at all. Each is checked against every step
/// that consumes its type.
#[utoipa::path(post, path = "/v1/events",
    request_body(content = Object, description = "A CloudEvents 1.0 event; `type` and `data` are required, the host fills in the rest"),
    responses(
        (status = 202, description = "Stored durably: `id` (a batch: `ids`)"),
        (status = 400, description = "Not a CloudEvents document"),
        (status = 413, description = "Too large for the app's broker"),
        (status = 415, description = "An event format other than JSON"),
        (status = 422, description = "It breaks the contract of a consuming step (its data, or its content type), or checking it ran out of that contract's budget"),
    ))]
async fn publish(
    State(s): State<ApiState>,
    parent: Option<axum::Extension<traced::Parent>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    use crate::event::http::{HttpError, from_http};
    let source = crate::event::source(&s.app, "api");
    let content_type = match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(ct)) => Some(ct),
        Some(Err(_)) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "the Content-Type header is not text".into(),
            ));
        }
    };
    let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
    let batch = content_type
        .and_then(crate::event::media_type)
        .is_some_and(|(e, _)| e == "application/cloudevents-batch+json");
    let events = from_http(content_type, pairs, &body, &source).map_err(|e| match e {
        HttpError::Format(_) => ApiError(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string()),
        _ => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    // Apart: a contract check may take up to its budget, and the threads
    // that serve the API (and everyone else's requests) never wait on it.
    let steps = s.deployer.door();
    let (events, checked) = crate::contract::check_apart(move || {
        let checked = events.iter().enumerate().try_for_each(|(i, event)| {
            let which = if batch {
                format!("event {i} of the batch: ")
            } else {
                String::new()
            };
            check_incoming(&steps, event)
                .map_err(|ApiError(status, m)| ApiError(status, which + &m))
        });
        (events, checked)
    })
    .await
    .ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is stopping".into(),
        )
    })?;
    checked?;
    let mut events = events;
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let parent = parent.map(|axum::Extension(p)| p).unwrap_or_default();
    let producers: Vec<_> = match s.telemetry.tracing() {
        true => events
            .iter()
            .map(crate::telemetry::spans::trace_of)
            .collect(),
        false => Vec::new(),
    };
    traced::place(&mut events, parent, &s.telemetry);
    let spans = traced::published(&events, &producers, parent);
    let start = std::time::SystemTime::now();
    let stored = s.broker.publish(events).await;
    let error = stored.as_ref().err().map(ToString::to_string);
    s.telemetry.export(traced::ended(spans, start, error));
    stored?;
    let answer = if batch {
        json!({ "ids": ids })
    } else {
        json!({ "id": ids[0] })
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// What an event from outside must pass before it is stored
/// ([`crate::ingress::check`]): a malformed one is a `400`, one a
/// consuming step's contract refuses a `422`.
fn check_incoming(steps: &[Arc<LoadedStep>], event: &Event) -> Result<(), ApiError> {
    crate::ingress::check(event, steps).map_err(|r| {
        let status = if r.malformed() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        ApiError(status, r.to_string())
    })
}

/// Every event of a cascade or a run, in the order they were published,
/// each with its `causationid`.
#[utoipa::path(get, path = "/v1/traces/{correlation_id}",
    params(("correlation_id" = String, Path, description = "A cascade's first event id, or a run id")),
    responses((status = 200, description = "The events"), (status = 404, description = "No such cascade or run")))]
async fn trace(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let events = s.broker.trace(&id).await?;
    if events.is_empty() {
        // The note is a courtesy: a store that cannot say still answers 404.
        let note = s
            .broker
            .horizon()
            .await
            .map(|h| h.events_note())
            .unwrap_or_default();
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no events with correlation id {id:?}{note}"),
        ));
    }
    Ok(Json(Value::Array(
        events.iter().map(Event::to_json).collect(),
    )))
}

/// Liveness. Needs no token.
#[utoipa::path(get, path = "/healthz", security(()), responses((status = 200, description = "Serving")))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Counters per step and the broker's backlog, Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let mut out = String::new();
    let snap = s.stats.snapshot();
    type Series = (
        &'static str,
        &'static str,
        fn(&crate::stats::StepSnapshot) -> u64,
    );
    let series: [Series; 7] = [
        ("troupe_step_handled_total", "Events a step handled", |x| {
            x.handled
        }),
        ("troupe_step_emitted_total", "Events a step emitted", |x| {
            x.emitted
        }),
        (
            "troupe_step_retried_total",
            "Deliveries scheduled again after a failure",
            |x| x.retried,
        ),
        (
            "troupe_step_dead_lettered_total",
            "Events dead-lettered",
            |x| x.dead_lettered,
        ),
        (
            "troupe_contract_violations_total",
            "Contract violations, in or out (each raised an alert)",
            |x| x.contract_violations,
        ),
        (
            "troupe_step_guest_seconds_total",
            "Time spent in the guest",
            |x| x.guest_micros,
        ),
        (
            "troupe_kv_conflicts_total",
            "Invocations run again because state they read changed before their commit",
            |x| x.kv_conflicts,
        ),
    ];
    for (name, help, f) in series {
        let kind = "counter";
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (step, v) in &snap {
            let value = f(v);
            if name.ends_with("_seconds_total") {
                out.push_str(&format!(
                    "{name}{{step=\"{step}\"}} {}\n",
                    value as f64 / 1e6
                ));
            } else {
                out.push_str(&format!("{name}{{step=\"{step}\"}} {value}\n"));
            }
        }
    }
    let name = "troupe_guest_log_dropped_total";
    out.push_str(&format!(
        "# HELP {name} Guest log lines dropped by the step's limits.log_lines_per_second\n# TYPE {name} counter\n"
    ));
    for step in s.deployer.door().iter() {
        let dropped = step.sandbox.log_lines_dropped();
        out.push_str(&format!("{name}{{step=\"{}\"}} {dropped}\n", step.name()));
    }
    if let Some(o) = &s.orchestrator {
        let load = o.load();
        out.push_str(&format!(
            "# HELP troupe_runs_active Runs started and not yet ended\n# TYPE troupe_runs_active gauge\ntroupe_runs_active {}\n\
             # HELP troupe_runs_max_active The most runs active at once ([orchestrator] max_active_runs)\n# TYPE troupe_runs_max_active gauge\ntroupe_runs_max_active {}\n\
             # HELP troupe_runs_refused_total Starts refused because max_active_runs runs were active\n# TYPE troupe_runs_refused_total counter\ntroupe_runs_refused_total {}\n\
             # HELP troupe_runs_parked Runs asleep and parked in the store until they wake (not in troupe_runs_active)\n# TYPE troupe_runs_parked gauge\ntroupe_runs_parked {}\n",
            load.active(),
            load.limit,
            load.refused(),
            load.parked()
        ));
        // Counted by the run index; a store slow to answer leaves them out
        // rather than hold the scrape.
        let wait = std::time::Duration::from_secs(2);
        if let Ok(Ok(counts)) = tokio::time::timeout(wait, o.counts()).await {
            out.push_str(
                "# HELP troupe_runs Runs stored, by flow and state\n# TYPE troupe_runs gauge\n",
            );
            for c in counts {
                out.push_str(&format!(
                    "troupe_runs{{flow=\"{}\",state=\"{}\"}} {}\n",
                    c.flow, c.state, c.count
                ));
            }
        }
        let standing = o.standing();
        out.push_str(&format!(
            "# HELP troupe_orchestrator_driving 1 while this host drives the app's flows (holds the orchestrator lease), 0 while it stands by
# TYPE troupe_orchestrator_driving gauge
troupe_orchestrator_driving {}
\
             # HELP troupe_orchestrator_lease_lost_total Times this host stopped driving the flows because it lost the orchestrator lease
# TYPE troupe_orchestrator_lease_lost_total counter
troupe_orchestrator_lease_lost_total {}
",
            u8::from(standing.driving),
            standing.lost
        ));
    }
    out.push_str(&metrics::outbound(&s.deployer.door()));
    out.push_str(&deploys::metrics(&s.deployer));
    let backlog = s.broker.backlog().await?;
    out.push_str(&format!(
        "# HELP troupe_broker_backlog Deliveries not yet settled\n# TYPE troupe_broker_backlog gauge\ntroupe_broker_backlog {backlog}\n"
    ));
    out.push_str(&health::metrics(&s.broker.health()));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "OpenAPI 3.1")))]
async fn openapi() -> Json<Value> {
    Json(openapi_json())
}

/// Where a running host's API is, written to `APP/.troupe/api.json` so the
/// CLI finds it from the app directory.
pub fn write_discovery(state_dir: &std::path::Path, url: &str) -> std::io::Result<()> {
    let v: HashMap<&str, &str> = [("url", url)].into();
    std::fs::write(
        state_dir.join("api.json"),
        serde_json::to_vec(&v).expect("JSON"),
    )
}
