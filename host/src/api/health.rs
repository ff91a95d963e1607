//! `GET /readyz` (whether the host should be given work, and why not) and
//! the broker's part of `GET /metrics` (its store, what retention pruned,
//! failed commits). Liveness stays `GET /healthz`: a host that is alive
//! but cannot keep what it is given is not ready, nor one whose
//! orchestrator cannot reach its lease (a host that stands by while
//! another drives the flows is ready: it runs its steps).

use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use crate::broker::Health;

/// Readiness: `200` when the host can take work, else `503` with
/// `Retry-After` and the reasons. Needs no token.
#[utoipa::path(get, path = "/readyz", security(()), responses(
    (status = 200, description = "Ready: the broker takes writes, its store is sound, its server reachable, the orchestrator lease can be taken or renewed (`orchestrator.driving` says whether this host drives the flows or stands by)"),
    (status = 503, description = "Not ready: `problems` says why"),
))]
pub(super) async fn readyz(State(s): State<ApiState>) -> Response {
    let health = s.broker.health();
    let mut problems = health.problems();
    let standing = s.orchestrator.as_ref().map(|o| o.standing());
    if let Some(e) = standing.as_ref().and_then(|s| s.lease_error.as_ref()) {
        problems.push(format!(
            "the orchestrator cannot take or renew its lease, so this host cannot tell whether it may drive the flows: {e}"
        ));
    }
    if let Some(why) = s.deployer.unready() {
        problems.push(format!(
            "this host cannot load the app's current deployment, and takes no work until it can: {why}"
        ));
    }
    let ready = problems.is_empty();
    let mut body = json!({
        "ready": ready,
        "problems": problems,
        "broker": health,
        "deployments": { "serving": s.deployer.current(), "loaded": s.deployer.loaded() },
    });
    if let Some(standing) = standing {
        body["orchestrator"] = json!(standing);
    }
    if ready {
        return (StatusCode::OK, Json(body)).into_response();
    }
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(super::RETRY_AFTER),
    );
    r
}

/// Prometheus text for the broker's health.
pub(super) fn metrics(h: &Health) -> String {
    let mut out = String::new();
    let mut series = |name: &str, kind: &str, help: &str, value: Option<u64>| {
        if let Some(v) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    series(
        "troupe_store_bytes",
        "gauge",
        "Bytes of the broker's store in use (embedded: its file; NATS: the namespace's streams)",
        h.store_bytes,
    );
    series(
        "troupe_disk_free_bytes",
        "gauge",
        "Free bytes on the file system of the broker's store (embedded)",
        h.free_disk_bytes,
    );
    series(
        "troupe_broker_commits_failed_total",
        "counter",
        "Broker operations whose commit failed (each is tried again or refused, never lost)",
        Some(h.failed_commits),
    );
    series(
        "troupe_broker_writable",
        "gauge",
        "1 while the broker's store takes writes and is sound, else 0",
        Some(u64::from(h.failing.is_none() && h.damaged.is_none())),
    );
    series(
        "troupe_pruned_events_total",
        "counter",
        "Settled events pruned by [retention]",
        Some(h.pruned_events),
    );
    series(
        "troupe_pruned_dead_letters_total",
        "counter",
        "Dead letters pruned by [retention]",
        Some(h.pruned_dead_letters),
    );
    series(
        "troupe_pruned_runs_total",
        "counter",
        "Ended runs' records (and their idempotency keys) pruned by [retention]",
        Some(h.pruned_records),
    );
    series(
        "troupe_state_applier",
        "gauge",
        "1 while this host applies any of the app's state commits (NATS: it leads a state partition), else 0",
        h.state_applier.map(u64::from),
    );
    series(
        "troupe_state_partitions",
        "gauge",
        "How many of the app's 16 state partitions this host leads (NATS)",
        h.state_partitions.map(u64::from),
    );
    out
}
