//! Dead letters over HTTP: list them (filtered), show one, replay one, and
//! the bulk forms: replay or purge every dead letter a filter picks, with a
//! dry run that says how many would be refused by today's consumers'
//! contracts, and why.
//!
//! **A bulk replay is resumable**: each dead letter is replayed and removed
//! from the DLQ as one step (one transaction on the embedded broker), in
//! order, so a replay cut short (the host killed, the caller gone) leaves
//! exactly the ones not yet replayed, and running it again replays those.
//! `limit` makes batches of it (at most that many replayed or purged; the
//! refusals are counted over every match): the CLI replays a batch at a
//! time and shows its progress.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiState, RawBody, json_or_null};
use crate::broker::{DeadLetter, DlqFilter};
use crate::protocol::FailureClass;

/// The most a list or a bulk operation's batch takes.
pub(super) const MAX_LIMIT: u64 = 1_000_000;

/// The filters a list and the bulk forms take.
const FILTERS: [&str; 5] = ["step", "class", "type", "since", "until"];

/// Dead letters, oldest first; with filters, those they pick.
#[utoipa::path(get, path = "/v1/dlq",
    params(
        ("step" = Option<String>, Query, description = "Only those this step could not handle"),
        ("class" = Option<String>, Query, description = "Only this failure class: rejected, contract, retry, trap, limit, timeout"),
        ("type" = Option<String>, Query, description = "Only events of this type"),
        ("since" = Option<String>, Query, description = "Dead-lettered at or after: RFC 3339, or a duration before now (15m, 1h, 2d)"),
        ("until" = Option<String>, Query, description = "Dead-lettered before (the same forms)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000000, description = "At most this many, the oldest"),
    ),
    responses((status = 200, description = "The dead letters"), (status = 400, description = "A filter that is not one, or not valid")))]
pub(super) async fn list(
    State(s): State<ApiState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let as_json: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                // A whole number, `88` or `88.0`.
                "limit" => v
                    .strip_suffix(".0")
                    .unwrap_or(v)
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(json!(v)),
                _ => json!(v),
            };
            (k.clone(), v)
        })
        .collect();
    let (filter, limit) = filter(&Value::Object(as_json), &[]).map_err(bad)?;
    let list = matching(&s, &filter, limit).await?.0;
    Ok(Json(Value::Array(
        list.iter().map(|d| d.to_json(false)).collect(),
    )))
}

/// One dead letter, with its original event.
#[utoipa::path(get, path = "/v1/dlq/{id}",
    params(("id" = String, Path, description = "The dead letter's id")),
    responses((status = 200, description = "The dead letter"), (status = 404, description = "No such dead letter")))]
pub(super) async fn show(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(s.broker.dlq_get(&id).await?.to_json(true)))
}

/// Deliver a dead letter to its step again, with a fresh retry budget.
#[utoipa::path(post, path = "/v1/dlq/{id}/replay",
    params(("id" = String, Path, description = "The dead letter's id")),
    responses((status = 202, description = "Replayed"), (status = 404, description = "No such dead letter")))]
pub(super) async fn replay(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.broker.dlq_replay(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "replayed": id }))).into_response())
}

/// Replay every dead letter the filters pick, oldest first, each to its
/// step with a fresh retry budget; those today's step would refuse (its
/// contract, or the step is gone) are left in the DLQ and counted by
/// reason. With `dry_run`, only say what would happen.
#[utoipa::path(post, path = "/v1/dlq/replay",
    request_body(content = Object, description = "Filters (`step`, `class`, `type`, `since`, `until`; at least one, or `all: true`), `dry_run`, and `limit` (a batch: the oldest that many)"),
    responses(
        (status = 200, description = "What was (or, in a dry run, would be) replayed and refused, and why"),
        (status = 400, description = "No filter (and not `all`), or a filter that is not valid"),
    ))]
pub(super) async fn replay_many(
    State(s): State<ApiState>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    bulk(&s, &body, Bulk::Replay).await
}

/// Remove every dead letter the filters pick from the DLQ, without
/// delivering them. With `dry_run`, only count them.
#[utoipa::path(post, path = "/v1/dlq/purge",
    request_body(content = Object, description = "Filters (`step`, `class`, `type`, `since`, `until`; at least one, or `all: true`), `dry_run`, and `limit`"),
    responses(
        (status = 200, description = "How many were (or would be) purged"),
        (status = 400, description = "No filter (and not `all`), or a filter that is not valid"),
    ))]
pub(super) async fn purge_many(
    State(s): State<ApiState>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    bulk(&s, &body, Bulk::Purge).await
}

#[derive(Clone, Copy, PartialEq)]
enum Bulk {
    Replay,
    Purge,
}

async fn bulk(s: &ApiState, body: &[u8], op: Bulk) -> Result<Json<Value>, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let body = json_or_null(body)?;
    let (filter, limit) = filter(&body, &["dry_run", "all"]).map_err(bad)?;
    let flag = |k: &str| match body.get(k) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("`{k}` must be true or false"))),
    };
    let (dry_run, all) = (flag("dry_run")?, flag("all")?);
    if filter.is_empty() && !all {
        return Err(bad(
            "say which dead letters: a filter (step, class, type, since, until), or \"all\": true"
                .into(),
        ));
    }
    // Every match is looked at (so refusals are counted whole); `limit`
    // bounds what is done.
    let (picked, matched) = matching(s, &filter, None).await?;
    let steps = s.deployer.door();
    let mut done = 0;
    let mut more = false;
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &picked {
        if op == Bulk::Replay
            && let Err(why) = refusal(&steps, d)
        {
            refused.entry(why).or_default().push(d.id.clone());
            continue;
        }
        if limit.is_some_and(|n| done >= n) {
            more = true;
            continue;
        }
        if !dry_run {
            let r = match op {
                Bulk::Replay => s.broker.dlq_replay(&d.id).await,
                Bulk::Purge => s.broker.dlq_purge(&d.id).await,
            };
            match r {
                Ok(()) => {}
                // Replayed or purged meanwhile (another caller, a replay
                // run again): not this one's to count.
                Err(crate::broker::BrokerError::NoSuchDeadLetter(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        done += 1;
    }
    let verb = match op {
        Bulk::Replay => "replayed",
        Bulk::Purge => "purged",
    };
    let reasons: Vec<Value> = refused
        .iter()
        .map(|(reason, ids)| {
            json!({
                "reason": reason,
                "count": ids.len(),
                "examples": ids.iter().take(5).collect::<Vec<_>>(),
            })
        })
        .collect();
    let refused_n: usize = refused.values().map(Vec::len).sum();
    let mut answer = json!({
        "dry_run": dry_run,
        "matched": matched,
        verb: done,
        "more": more,
    });
    if op == Bulk::Replay {
        answer["refused"] = json!(refused_n);
        answer["reasons"] = Value::Array(reasons);
    }
    Ok(Json(answer))
}

/// Why today's consumer would refuse dead letter `d` at once, if it would:
/// the step is gone, or its contract refuses the event.
fn refusal(
    steps: &[std::sync::Arc<crate::runtime::step::LoadedStep>],
    d: &DeadLetter,
) -> Result<(), String> {
    if d.step == crate::protocol::GROUP {
        return Ok(());
    }
    let Some(step) = steps.iter().find(|s| *s.sandbox.name == *d.step) else {
        return Err(format!("the app has no step {:?} now", d.step));
    };
    step.contract
        .check_input(&d.event)
        .map_err(|v| format!("step {:?} refuses it: {v}", d.step))
}

/// The dead letters `filter` picks, oldest first, at most `limit`; and how
/// many it picks in all.
async fn matching(
    s: &ApiState,
    filter: &DlqFilter,
    limit: Option<usize>,
) -> Result<(Vec<DeadLetter>, usize), ApiError> {
    let mut picked: Vec<DeadLetter> = s
        .broker
        .dlq_list()
        .await?
        .into_iter()
        .filter(|d| filter.matches(d))
        .collect();
    let matched = picked.len();
    if let Some(n) = limit {
        picked.truncate(n);
    }
    Ok((picked, matched))
}

/// The filter and the limit `v` (a body, or a query as JSON) asks for;
/// `also` are the other keys it may have.
fn filter(v: &Value, also: &[&str]) -> Result<(DlqFilter, Option<usize>), String> {
    if !(v.is_object() || v.is_null()) {
        return Err("the body must be a JSON object".into());
    }
    if let Some(o) = v.as_object()
        && let Some(k) = o.keys().find(|k| {
            !FILTERS.contains(&k.as_str()) && k.as_str() != "limit" && !also.contains(&k.as_str())
        })
    {
        return Err(format!(
            "unknown field {:?} (filters: {}, limit)",
            crate::text::clean(k, 80),
            FILTERS.join(", ")
        ));
    }
    let text = |k: &str| -> Result<Option<String>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(format!("`{k}` must not be empty")),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    let now = crate::clock::now_ms();
    let when = |k: &str| -> Result<Option<u64>, String> {
        text(k)?
            .map(|t| crate::clock::parse_when(&t, now).map_err(|e| format!("`{k}`: {e}")))
            .transpose()
    };
    let class = match text("class")? {
        None => None,
        Some(c) => Some(FailureClass::parse(&c).ok_or_else(|| {
            format!(
                "`class`: {:?} is not a failure class (rejected, contract, retry, trap, limit, timeout)",
                crate::text::clean(&c, 80)
            )
        })?),
    };
    // A whole number, however it is written (`88.0` is one).
    let limit = match v.get("limit") {
        None => None,
        Some(l) => match l.as_f64() {
            Some(n) if n.fract() == 0.0 && (1.0..=MAX_LIMIT as f64).contains(&n) => {
                Some(n as usize)
            }
            _ => {
                return Err(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                ));
            }
        },
    };
    Ok((
        DlqFilter {
            step: text("step")?,
            class,
            kind: text("type")?,
            since_ms: when("since")?,
            until_ms: when("until")?,
        },
        limit,
    ))
}
