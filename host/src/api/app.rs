//! `GET /v1/app`: the app as the console draws it, in one answer: the
//! current deployment's steps (what each consumes and produces, its
//! buckets, its component, its counters), its flows' steps and wiring, and
//! the buckets steps may use.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::contract::StepView;
use crate::flow::{Action, Wake};

/// The app: steps, flows, buckets and counters.
#[utoipa::path(get, path = "/v1/app",
    responses((status = 200, description = "The app's steps (consumes, produces, buckets, component, counters), flows and buckets")))]
pub(super) async fn app(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let counters = s.deployer.stats().snapshot();
    let mut buckets = BTreeSet::new();
    let steps: Vec<Value> = s
        .deployer
        .door()
        .iter()
        .map(|step| {
            let c = &step.contract;
            let kinds = |ts: &[std::sync::Arc<crate::contract::EventType>]| {
                ts.iter().map(|t| t.kind.clone()).collect::<BTreeSet<_>>()
            };
            let grants = &step.sandbox.config.grants.kv;
            buckets.extend(grants.iter().cloned());
            json!({
                "name": step.name(),
                "version": c.version,
                "description": c.description,
                "consumes": kinds(&c.consumes),
                "produces": kinds(&c.produces),
                "choreography": step.choreography(),
                "buckets": grants,
                "component": step.digest,
                "counters": counters.get(step.name()),
            })
        })
        .collect();
    let sets = s.deployer.flow_sets();
    let mut flows: Vec<Value> = sets
        .of(None)
        .map(|f| f.values().map(|f| flow(f)).collect())
        .unwrap_or_default();
    flows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let runs_active = s.orchestrator.as_ref().map(|o| o.load().active());
    Ok(Json(json!({
        "name": s.app,
        "deployment": s.deployer.current(),
        "steps": steps,
        "flows": flows,
        "buckets": buckets,
        "runs_active": runs_active,
    })))
}

fn flow(f: &crate::flow::Flow) -> Value {
    let steps: Vec<Value> = f
        .steps
        .iter()
        .map(|s| {
            let (kind, target) = match &s.action {
                Action::Command { step } => ("command", json!(step)),
                Action::Hybrid { kind, done, .. } => {
                    ("hybrid", json!({"publish": kind, "await": done}))
                }
                Action::Signal { name, .. } => ("signal", json!(name)),
                Action::Sleep(Wake::After(ms)) => ("sleep", json!({"sleep_ms": ms})),
                Action::Sleep(Wake::Until(p)) => ("sleep", json!({"until": p.text})),
                Action::Child { flow } => ("flow", json!(flow)),
            };
            json!({
                "id": s.id,
                "kind": kind,
                "target": target,
                "input": s.input,
                "after": s.after,
                "compensate": s.compensate.as_ref().map(|c| &c.step),
                "for_each": s.fan.as_ref().map(|f| json!({
                    "over": f.over.text,
                    "max_parallel": f.max_parallel,
                })),
            })
        })
        .collect();
    json!({ "name": f.name, "input": f.input, "timeout_ms": f.timeout_ms, "steps": steps })
}
