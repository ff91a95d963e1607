//! `/v1/deployments`: the app's deployments (list, show) and deploying
//! the app's files as they are now, or returning to an earlier deployment
//! (`docs/deploys.md`).

use std::fmt::Write;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiState, RawBody};
use crate::deploy::Deployment;
use crate::deploy::ledger::Refusal;
use crate::deployer::{DeployError, Deployer, Request};

/// A deployment as the API lists it: without contracts and flow texts.
pub fn summary(d: &Deployment) -> Value {
    json!({
        "number": d.number,
        "created": d.created,
        "origin": d.origin,
        "rollback_of": d.rollback_of,
        "allowed": d.allowed,
        "manifest": d.content.manifest,
        "steps": d.content.steps.iter().map(|(n, s)| (n.clone(), json!({
            "component": s.component,
            "contract_version": s.contract.get("version"),
        }))).collect::<serde_json::Map<String, Value>>(),
        "flows": d.content.flows.iter().map(|(n, f)| (n.clone(), json!(f.digest))).collect::<serde_json::Map<String, Value>>(),
    })
}

/// Every deployment of the app, oldest first, and which one this host
/// serves new work with.
#[utoipa::path(get, path = "/v1/deployments", responses(
    (status = 200, description = "`deployments` (oldest first: number, when, origin, each step's component digest and contract version, each flow's digest), `current` (the one new work goes to on this host) and `loaded` (those this host holds: the current one, and those runs in flight are pinned to)"),
))]
pub(super) async fn list(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let all = s.deployer.list().await?;
    Ok(Json(json!({
        "deployments": all.iter().map(summary).collect::<Vec<_>>(),
        "current": s.deployer.current(),
        "loaded": s.deployer.loaded(),
    })))
}

/// One deployment, whole: each step's component digest and contract, each
/// flow's text, the compatibility policy it was deployed under.
#[utoipa::path(get, path = "/v1/deployments/{n}",
    params(("n" = u64, Path, description = "The deployment's number")),
    responses((status = 200, description = "The deployment's record"), (status = 404, description = "No such deployment")))]
pub(super) async fn show(
    State(s): State<ApiState>,
    Path(n): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError(StatusCode::NOT_FOUND, format!("no deployment {n:?}"));
    let k: u64 = n.parse().map_err(|_| not_found())?;
    let all = s.deployer.list().await?;
    let d = all
        .into_iter()
        .find(|d| d.number == k)
        .ok_or_else(not_found)?;
    Ok(Json(
        serde_json::to_value(d).expect("a deployment serialises"),
    ))
}

/// What `POST /v1/deployments` takes (every field optional; an empty body
/// deploys the app's files).
#[derive(Default)]
struct Ask {
    /// Return to this deployment instead.
    to: Option<u64>,
    /// Record what the gate finds instead of refusing.
    allow_breaking: bool,
    /// Decide only: record and switch nothing.
    dry_run: bool,
}

impl Ask {
    /// Read the body as its OpenAPI schema says: an object of `to` (an
    /// integer, `1.0` too, at least 1), `allow_breaking` and `dry_run`
    /// (booleans), each optional, nothing else, and no `null`s.
    fn read(body: &[u8]) -> Result<Ask, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Ask::default());
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let Value::Object(m) = v else {
            return Err("it must be a JSON object".into());
        };
        let mut ask = Ask::default();
        for (k, v) in m {
            match (k.as_str(), v) {
                ("to", Value::Number(n)) => {
                    let whole = n.as_u64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f < u64::MAX as f64)
                            .map(|f| f as u64)
                    });
                    match whole {
                        Some(n) if n >= 1 => ask.to = Some(n),
                        _ => return Err(format!("`to` must be a deployment number, not {n}")),
                    }
                }
                ("allow_breaking", Value::Bool(b)) => ask.allow_breaking = b,
                ("dry_run", Value::Bool(b)) => ask.dry_run = b,
                ("to", _) => return Err("`to` must be a deployment number".into()),
                ("allow_breaking" | "dry_run", _) => {
                    return Err(format!("`{k}` must be true or false"));
                }
                _ => {
                    return Err(format!(
                        "unknown field {:?}: expected `to`, `allow_breaking` or `dry_run`",
                        crate::text::clean(&k, 80)
                    ));
                }
            }
        }
        Ok(ask)
    }
}

/// Deploy the app's files as they are now on this host (or, with `to`,
/// return to an earlier deployment): validate, build and load what
/// changed, check (the gate), record, switch at message boundaries.
#[utoipa::path(post, path = "/v1/deployments",
    request_body(content = Object, description = "Optional: `{\"to\": N}` to return to deployment N, `\"allow_breaking\": true` to record what the gate finds instead of refusing, `\"dry_run\": true` to decide only"),
    responses(
        (status = 200, description = "Nothing to deploy: the files are the current deployment (or a dry run): `deployment`, `recorded`, `changes`"),
        (status = 201, description = "Deployed: the new deployment is current (`deployment`, `changes`)"),
        (status = 400, description = "The body is not what this takes"),
        (status = 404, description = "`to` names no deployment"),
        (status = 409, description = "Refused by the gate: `error` says why in words, and `breaks` lists each (`type`, `mode`, `producer` and `consumer` with their `step` and `deployment`, the `problem` naming the field)"),
        (status = 422, description = "The app's files do not make an app (a manifest, a build, a flow, the wiring), or what the deployment needs is not on this host"),
    ))]
pub(super) async fn deploy(
    State(s): State<ApiState>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let ask = Ask::read(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the body: {e}")))?;
    let request = Request {
        how: "api".into(),
        to: ask.to,
        allow_breaking: ask.allow_breaking,
        dry_run: ask.dry_run,
    };
    match s.deployer.deploy(request).await {
        Ok(o) => {
            let status = if o.recorded {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({
                "deployment": summary(&o.deployment),
                "recorded": o.recorded,
                "dry_run": o.dry_run,
                "changes": o.changes,
                "allowed": o.deployment.allowed,
            });
            Ok((status, Json(body)).into_response())
        }
        Err(DeployError::Refused(Refusal::Breaks(breaks))) => {
            // The gate's findings, as data too: what a CI job reads.
            let message = DeployError::Refused(Refusal::Breaks(breaks.clone())).to_string();
            let body = json!({ "error": message, "breaks": breaks });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(e) => Err(refusal(e)),
    }
}

/// A deploy that did not happen, as an answer.
fn refusal(e: DeployError) -> ApiError {
    match e {
        DeployError::Refused(Refusal::Unknown(_)) => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        DeployError::Refused(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        DeployError::Invalid(_)
        | DeployError::Wiring(_)
        | DeployError::Missing(_)
        | DeployError::Load(_) => ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        DeployError::Broker(b) => b.into(),
    }
}

/// Prometheus text for the deployments this host holds.
pub(super) fn metrics(d: &Deployer) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP troupe_deployment_current The deployment new work goes to on this host\n# TYPE troupe_deployment_current gauge\ntroupe_deployment_current {}",
        d.current()
    );
    let loaded = d.loaded();
    let _ = writeln!(
        out,
        "# HELP troupe_deployments_loaded Deployments this host holds (the current one, and those runs in flight are pinned to)\n# TYPE troupe_deployments_loaded gauge\ntroupe_deployments_loaded {}",
        loaded.len()
    );
    let _ = writeln!(
        out,
        "# HELP troupe_deployment_ready 0 while this host cannot load the app's current deployment (and takes no work)\n# TYPE troupe_deployment_ready gauge\ntroupe_deployment_ready {}",
        u8::from(d.unready().is_none())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::Ask;

    #[test]
    fn the_body_is_read_as_its_schema_says() {
        let ok = |b: &str| Ask::read(b.as_bytes()).unwrap();
        assert_eq!(ok("").to, None);
        assert_eq!(ok(" {} ").to, None);
        assert_eq!(ok(r#"{"to": 3}"#).to, Some(3));
        assert_eq!(
            ok(r#"{"to": 3.0}"#).to,
            Some(3),
            "an integer, as JSON Schema counts them"
        );
        let a = ok(r#"{"allow_breaking": true, "dry_run": true}"#);
        assert!(a.allow_breaking && a.dry_run);
        for bad in [
            r#"{"to": null}"#,
            r#"{"to": 0}"#,
            r#"{"to": -1}"#,
            r#"{"to": 1.5}"#,
            r#"{"to": "1"}"#,
            r#"{"dry_run": null}"#,
            r#"{"force": true}"#,
            "[]",
            "1",
        ] {
            assert!(Ask::read(bad.as_bytes()).is_err(), "{bad} is refused");
        }
    }
}
