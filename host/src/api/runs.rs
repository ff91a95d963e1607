//! Runs over HTTP: start one, its status, find them (`GET /v1/runs`, with
//! filters and a cursor, from the broker's run index), counts, and an
//! operator's cancel, redrive and signals.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiState, Body, IDEMPOTENCY_KEY, RawBody, json_or_null, status};
use crate::broker::runs::{DEFAULT_LIMIT, MAX_LIMIT, RunEntry, RunQuery};
use crate::orchestrator::control::Ask;
use crate::orchestrator::run::RunState;
use crate::orchestrator::{ControlError, Orchestrator, StartError};

/// Start a run of a flow; the body is the input event's data.
#[utoipa::path(post, path = "/v1/flows/{flow}/runs",
    params(
        ("flow" = String, Path, description = "The flow's name (its file name under flows/)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "Makes the start idempotent: the same key for the same flow within 24 hours returns the run it started (200) instead of starting another. 1 to 255 printable ASCII characters"),
    ),
    request_body(content = Object, description = "The data of the run's input event"),
    responses(
        (status = 200, description = "Already started with this `Idempotency-Key` (within 24 hours): that run's `run_id`, and `Location` of its status; nothing is started"),
        (status = 202, description = "Started: `run_id`, and `Location` of its status"),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key is not 1 to 255 printable ASCII characters"),
        (status = 404, description = "No such flow"),
        (status = 413, description = "The input is larger than a run's record may hold on this broker"),
        (status = 422, description = "The input breaks the contract of the flow's first step, or checking it ran out of the contract's budget"),
        (status = 503, description = "Not now: `max_active_runs` runs are active (with `Retry-After`), or this host stands by"),
    ))]
pub(super) async fn start_run(
    State(s): State<ApiState>,
    parent: Option<axum::Extension<super::traced::Parent>>,
    Path(flow): Path<String>,
    headers: HeaderMap,
    Body(input): Body,
) -> Result<Response, ApiError> {
    let Some(o) = &s.orchestrator else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no flow named {flow:?}: the app has no flows"),
        ));
    };
    let key = idempotency_key(&headers)?;
    let parent = parent.and_then(|axum::Extension(p)| p.0);
    match o.start_in(&flow, input, key, parent).await {
        Ok((id, new)) => Ok(started(&id, new)),
        Err(e) => Err(start_failed(e)),
    }
}

/// The `Idempotency-Key` header, if given.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get(IDEMPOTENCY_KEY).map(HeaderValue::to_str) {
        None => Ok(None),
        Some(Ok(k)) => Ok(Some(k)),
        Some(Err(_)) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the Idempotency-Key header is not printable ASCII".into(),
        )),
    }
}

/// The answer to a start: `202` for a new run (`200` for one an
/// idempotency key started before), its id and where its status is.
pub(super) fn started(id: &str, new: bool) -> Response {
    let location = format!("/v1/runs/{id}");
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut r = (
        status,
        Json(json!({ "run_id": id, "status_url": location })),
    )
        .into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("an ASCII path"),
    );
    r
}

/// The answer to a start that failed.
pub(super) fn start_failed(e: StartError) -> ApiError {
    let code = match &e {
        StartError::BadKey(_) => StatusCode::BAD_REQUEST,
        StartError::UnknownFlow(_) => StatusCode::NOT_FOUND,
        StartError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StartError::BadInput { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        // Busy (with Retry-After, as every 503), stopped, standing by.
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    match e {
        StartError::Broker(b) => b.into(),
        e => ApiError(code, e.to_string()),
    }
}

/// The aggregated status of a run: its state, and each step's state,
/// attempts, timings, output and errors.
#[utoipa::path(get, path = "/v1/runs/{id}",
    params(("id" = String, Path, description = "The run id")),
    responses((status = 200, description = "The run's status"), (status = 404, description = "No such run")))]
pub(super) async fn run_status(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = match &s.orchestrator {
        Some(o) => o.status(&id).await?,
        None => None,
    };
    let Some(run) = run else {
        return Err(not_found(&s, &id).await);
    };
    let status = status::RunStatus::from(&run);
    Ok(Json(
        serde_json::to_value(status).expect("a status serialises"),
    ))
}

/// The filters `GET /v1/runs` takes.
const FILTERS: [&str; 7] = ["flow", "status", "since", "until", "key", "limit", "cursor"];

/// Runs, newest first, a page at a time: filtered by flow, status, start
/// time and idempotency key, from the run index (never a scan of every
/// run). `next_cursor` is the cursor of the next page, while there is one.
#[utoipa::path(get, path = "/v1/runs",
    params(
        ("flow" = Option<String>, Query, description = "Only runs of this flow"),
        ("status" = Option<String>, Query, description = "Only runs in this state: running, compensating, completed, compensated, failed, timed_out, cancelled"),
        ("since" = Option<String>, Query, description = "Only runs started at or after this time: RFC 3339, or a duration before now (90s, 15m, 1h, 2d)"),
        ("until" = Option<String>, Query, description = "Only runs started before this time: RFC 3339, or a duration before now"),
        ("key" = Option<String>, Query, description = "Only the runs started with this Idempotency-Key"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Runs per page (default 50)"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of runs, newest first"),
        (status = 400, description = "A filter that is not one, or not valid"),
        (status = 404, description = "The app has no flows"),
    ))]
pub(super) async fn list(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let o = orchestrator(&s)?;
    let q = query(&params).map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))?;
    let page = o.list(&q).await?;
    let runs: Vec<Value> = page.runs.iter().map(entry_json).collect();
    let mut answer = json!({ "runs": runs });
    if let Some(next) = page.next {
        answer["next_cursor"] = json!(next);
    }
    Ok(Json(answer))
}

/// How many runs of each flow are in each state (the run index keeps them
/// counted: no run is read).
#[utoipa::path(get, path = "/v1/runs/counts",
    responses((status = 200, description = "Counts per flow and state"), (status = 404, description = "The app has no flows")))]
pub(super) async fn counts(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let o = orchestrator(&s)?;
    let counts = o.counts().await?;
    let total: u64 = counts.iter().map(|c| c.count).sum();
    Ok(Json(json!({ "counts": counts, "total": total })))
}

/// Cancel a run: steps not started are cancelled, steps in flight
/// superseded (a late completion is refused and noted on the step),
/// completed steps with a compensation undone; the run ends `cancelled`,
/// with who and why. Idempotent.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "Cancelled: the run's status"),
        (status = 202, description = "Cancelling: compensations are still running; the run's status"),
        (status = 400, description = "The body is not `{by, reason}`"),
        (status = 404, description = "No such run"),
        (status = 409, description = "The run already ended otherwise, or failed and is being compensated: `error`, and its `state`"),
    ))]
pub(super) async fn cancel(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let o = orchestrator(&s)?;
    let ask = ask(body)?;
    controlled(&s, &id, o.cancel(&id, ask).await).await
}

/// Run a failed or timed-out run again from the steps that failed, on the
/// current deployment: completed steps keep their outputs, each failed
/// step starts again from its first attempt.
#[utoipa::path(post, path = "/v1/runs/{id}/redrive",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 202, description = "Redriven: the run's status"),
        (status = 400, description = "The body is not `{by, reason}`"),
        (status = 404, description = "No such run"),
        (status = 409, description = "The run cannot be redriven (it did not fail, it was compensated, or its flow lost a step): `error`, and its `state`"),
    ))]
pub(super) async fn redrive(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let o = orchestrator(&s)?;
    let ask = ask(body)?;
    let answer = controlled(&s, &id, o.redrive(&id, ask).await).await?;
    Ok(accepted(answer))
}

/// Send a signal to a run, for the flow step that awaits it (`await = {
/// signal = NAME }`): the body is the signal's data, checked against the
/// schema the flow declares for it; it becomes the step's output. A
/// signal for a step the run has not reached yet is kept until it does.
#[utoipa::path(post, path = "/v1/runs/{id}/signals/{name}",
    params(
        ("id" = String, Path, description = "The run id"),
        ("name" = String, Path, description = "The signal's name, as the flow's `await = { signal = ... }` says"),
        ("by" = Option<String>, Query, description = "Who sends it (kept with the run; default `api`)"),
    ),
    request_body(content = Object, description = "The signal's data (any JSON the flow's schema for it accepts)"),
    responses(
        (status = 202, description = "Delivered to the waiting step, or kept for it: the run's status (its `signals`)"),
        (status = 400, description = "The body is not JSON"),
        (status = 404, description = "No such run"),
        (status = 409, description = "Nothing will wait for it: the run ended, no step awaits it, or its step received one already or will not wait (`error`, and the run's `state`)"),
        (status = 413, description = "The data is more than 64 KiB (as JSON)"),
        (status = 422, description = "The data breaks the schema the flow declares for the signal"),
    ))]
pub(super) async fn signal(
    State(s): State<ApiState>,
    Path((id, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let o = orchestrator(&s)?;
    let data = json_or_null(&body)?;
    if let Some(k) = params.keys().find(|k| k.as_str() != "by") {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown parameter {:?} (a signal takes `by`)",
                crate::text::clean(k, 80)
            ),
        ));
    }
    let by = params
        .get("by")
        .map(|b| crate::text::clean(b, crate::orchestrator::control::MAX_TEXT))
        .unwrap_or_else(|| "api".into());
    let answer = controlled(&s, &id, o.signal(&id, &name, data, &by).await).await?;
    Ok(accepted(answer))
}

/// A success as `202` (what was asked is under way, or done); a refusal
/// as it is.
fn accepted(answer: Response) -> Response {
    let (mut parts, body) = answer.into_parts();
    if parts.status.is_success() {
        parts.status = StatusCode::ACCEPTED;
    }
    Response::from_parts(parts, body)
}

fn orchestrator(s: &ApiState) -> Result<&Orchestrator, ApiError> {
    s.orchestrator
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "the app has no flows".into()))
}

/// Who asks and why, from an optional JSON body.
fn ask(body: axum::body::Bytes) -> Result<Ask, ApiError> {
    let body = json_or_null(&body)?;
    Ask::from_body(&body, "api").map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))
}

/// The answer to a cancel or a redrive: the run's status, `200` when done,
/// `202` when on its way; a conflict as `409` with the run's state.
async fn controlled(
    s: &ApiState,
    id: &str,
    r: Result<crate::orchestrator::Controlled, ControlError>,
) -> Result<Response, ApiError> {
    match r {
        Ok(c) => {
            let code = if c.done {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let status = serde_json::to_value(status::RunStatus::from(&c.run)).expect("JSON");
            Ok((code, Json(status)).into_response())
        }
        Err(ControlError::NotFound(_)) => Err(not_found(s, id).await),
        Err(ControlError::Conflict { run, why }) => {
            let body = json!({
                "error": why,
                "state": run.state,
                "run": status::RunStatus::from(&*run),
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(ControlError::Invalid(why)) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why)),
        Err(ControlError::TooLarge(why)) => Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, why)),
        Err(ControlError::Broker(e)) => Err(e.into()),
    }
}

async fn not_found(s: &ApiState, id: &str) -> ApiError {
    // The note is a courtesy: a store that cannot say still answers 404.
    let note = s
        .broker
        .horizon()
        .await
        .map(|h| h.runs_note())
        .unwrap_or_default();
    ApiError(StatusCode::NOT_FOUND, format!("no run {id:?}{note}"))
}

/// The query a request's parameters ask for, or what is wrong with them.
pub(crate) fn query(params: &HashMap<String, String>) -> Result<RunQuery, String> {
    if let Some(k) = params.keys().find(|k| !FILTERS.contains(&k.as_str())) {
        return Err(format!(
            "unknown filter {:?} (filters: {})",
            crate::text::clean(k, 80),
            FILTERS.join(", ")
        ));
    }
    let now = crate::clock::now_ms();
    let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let when = |k: &str| {
        text(k)
            .map(|v| crate::clock::parse_when(&v, now).map_err(|e| format!("`{k}`: {e}")))
            .transpose()
    };
    let state = match text("status") {
        None => None,
        Some(v) => match serde_json::from_value::<RunState>(json!(v)) {
            Ok(_) => Some(v),
            Err(_) => {
                return Err(format!(
                    "`status`: {:?} is not a run state (running, compensating, completed, \
                     compensated, failed, timed_out, cancelled)",
                    crate::text::clean(&v, 80)
                ));
            }
        },
    };
    let limit = match text("limit") {
        None => DEFAULT_LIMIT,
        // A whole number, `50` or `50.0`.
        Some(v) => match v.strip_suffix(".0").unwrap_or(&v).parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`limit`: {:?} is not a number from 1 to {MAX_LIMIT}",
                    crate::text::clean(&v, 80)
                ));
            }
        },
    };
    let after = text("cursor");
    if let Some(c) = &after
        && (c.len() != 36 || !c.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    {
        return Err("`cursor`: not a cursor this API gave (a run id)".into());
    }
    Ok(RunQuery {
        flow: text("flow"),
        state,
        since_ms: when("since")?,
        until_ms: when("until")?,
        key: text("key"),
        limit,
        after: after.map(|c| c.to_ascii_lowercase()),
    })
}

/// A run as a list shows it.
fn entry_json(e: &RunEntry) -> Value {
    let mut v = json!({
        "id": e.id,
        "flow": e.flow,
        "state": e.state,
        "created": crate::clock::rfc3339(e.created_ms),
        "updated": crate::clock::rfc3339(e.updated_ms),
    });
    for (k, x) in [("key", &e.key), ("error", &e.error)] {
        if let Some(x) = x {
            v[k] = json!(x);
        }
    }
    if let Some(d) = e.deployment {
        v["deployment"] = json!(d);
    }
    v
}
