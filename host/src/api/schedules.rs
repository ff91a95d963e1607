//! Schedules over HTTP: list them with their next ticks, pause, resume,
//! and start a run of one now (`troupe schedules ...` talks to these).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiError, ApiState, RawBody, json_or_null};
use crate::orchestrator::control::Ask;
use crate::schedule::{ScheduleError, Schedules};

fn schedules(s: &ApiState) -> Result<&Schedules, ApiError> {
    s.schedules.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "the app has no flows, so no schedules".into(),
        )
    })
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::NotFound(_) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
            ScheduleError::Start(e) => super::runs::start_failed(e),
            ScheduleError::Broker(e) => e.into(),
        }
    }
}

/// The app's schedules: each one's flow, when it ticks, its policies,
/// whether it is paused (by whom, why), its last tick and run, how many
/// ticks started, were skipped or missed, and its next three ticks.
#[utoipa::path(get, path = "/v1/schedules",
    responses((status = 200, description = "`schedules`: each schedule"), (status = 404, description = "The app has no flows")))]
pub(super) async fn list(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let list = schedules(&s)?.list().await?;
    Ok(Json(json!({ "schedules": list })))
}

/// Pause a schedule: its ticks start nothing until it is resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Paused: the schedule"),
        (status = 400, description = "The body is not `{by, reason}`"),
        (status = 404, description = "No such schedule"),
    ))]
pub(super) async fn pause(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    set_paused(&s, &name, true, &body).await
}

/// Resume a paused schedule: it starts from its next tick (the ticks of
/// its pause are not caught up).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "Resumed: the schedule"),
        (status = 400, description = "The body is not `{by, reason}`"),
        (status = 404, description = "No such schedule"),
    ))]
pub(super) async fn resume(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    set_paused(&s, &name, false, &body).await
}

async fn set_paused(
    s: &ApiState,
    name: &str,
    paused: bool,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let ask = Ask::from_body(&json_or_null(body)?, "api")
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, m))?;
    let all = schedules(s)?;
    all.set_paused(name, paused, &ask.by, ask.reason).await?;
    let view = all.list().await?.into_iter().find(|v| v.name == name);
    Ok(Json(json!(view)))
}

/// Start a run of a schedule's flow, with its input, now (paused or not).
/// With an `Idempotency-Key`, the same key starts one run.
#[utoipa::path(post, path = "/v1/schedules/{name}/trigger",
    params(
        ("name" = String, Path, description = "The schedule's name"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 160, description = "The same key triggers one run"),
    ),
    responses(
        (status = 202, description = "Started: `run_id`, and `Location` of its status"),
        (status = 400, description = "The Idempotency-Key is not 1 to 160 printable ASCII characters"),
        (status = 404, description = "No such schedule, or its flow is gone (a deploy removed it)"),
        (status = 413, description = "The schedule's input is larger than a run's record may hold on this broker"),
        (status = 422, description = "The schedule's input breaks the contract of its flow's first step (a deploy changed it)"),
        (status = 503, description = "Not now: `max_active_runs` runs are active (with `Retry-After`), or this host stands by"),
    ))]
pub(super) async fn trigger(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = match super::runs::idempotency_key(&headers)? {
        None => uuid::Uuid::now_v7().to_string(),
        Some(k) if !k.is_empty() && k.len() <= 160 => k.to_string(),
        Some(_) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key header must be 1 to 160 printable ASCII characters".into(),
            ));
        }
    };
    let run = schedules(&s)?.trigger(&name, &key).await?;
    Ok(super::runs::started(&run, true))
}
