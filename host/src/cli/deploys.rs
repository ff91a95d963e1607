//! `troupe deploy` (over the running host's API), `troupe deployments`,
//! and `troupe check --against`, the gate before a deploy, for CI.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use troupe::contract::StepContract;
use troupe::text::escape;

use super::ApiArgs;
use super::flows::client;

/// Deploy the app's files on its running host, or return to `to`.
pub(crate) fn deploy(
    api: &ApiArgs,
    to: Option<u64>,
    allow_breaking: bool,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let c = client(api)?;
    let mut body = json!({ "allow_breaking": allow_breaking, "dry_run": dry_run });
    if let Some(n) = to {
        body["to"] = json!(n);
    }
    let (status, v) = match c.deploy(&body) {
        Ok(r) => r,
        Err(troupe::client::ClientError::Status {
            status, message, ..
        }) => {
            bail!("the deploy was not made ({status}): {message}")
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let n = &v["deployment"]["number"];
    match (status, v["dry_run"].as_bool() == Some(true)) {
        (_, true) => println!("dry run: this would be deployment {n}"),
        (201, _) => println!("deployed: deployment {n} is current"),
        _ => println!("nothing to deploy: the app's files are deployment {n}"),
    }
    for line in v["changes"].as_array().into_iter().flatten() {
        println!("  {}", escape(line.as_str().unwrap_or_default()));
    }
    for line in v["allowed"].as_array().into_iter().flatten() {
        println!("  allowed: {}", escape(line.as_str().unwrap_or_default()));
    }
    Ok(())
}

/// `troupe deployments list`.
pub(crate) fn list(api: &ApiArgs, json: bool) -> Result<()> {
    let v = client(api)?.get("/v1/deployments")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let current = v["current"].as_u64();
    let loaded: Vec<u64> = v["loaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    println!(
        "{:>4}  {:<25} {:<8} {:<7}  steps",
        "#", "created", "how", "here"
    );
    for d in v["deployments"].as_array().into_iter().flatten() {
        let n = d["number"].as_u64().unwrap_or(0);
        let here = if Some(n) == current {
            "current"
        } else if loaded.contains(&n) {
            "pinned"
        } else {
            ""
        };
        let steps: Vec<String> = d["steps"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, s)| {
                let digest = s["component"].as_str().unwrap_or_default();
                format!("{}@{}", escape(name), escape(troupe::deploy::short(digest)))
            })
            .collect();
        let how = d["origin"]["how"].as_str().unwrap_or_default();
        let how = match d["rollback_of"].as_u64() {
            Some(k) => format!("to {k}"),
            None => how.to_string(),
        };
        println!(
            "{n:>4}  {:<25} {:<8} {here:<7}  {}",
            escape(d["created"].as_str().unwrap_or_default()),
            escape(&how),
            steps.join(" ")
        );
    }
    Ok(())
}

/// `troupe deployments show N`.
pub(crate) fn show(api: &ApiArgs, n: u64, json: bool) -> Result<()> {
    let v = client(api)?.get(&format!("/v1/deployments/{n}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("deployment {n}");
    println!(
        "  created   {}",
        escape(v["created"].as_str().unwrap_or_default())
    );
    println!(
        "  origin    {} on {}",
        escape(v["origin"]["how"].as_str().unwrap_or_default()),
        escape(v["origin"]["host"].as_str().unwrap_or_default())
    );
    if let Some(k) = v["rollback_of"].as_u64() {
        println!("  returns to deployment {k}");
    }
    println!(
        "  manifest  sha256 {}",
        escape(v["manifest"].as_str().unwrap_or_default())
    );
    for (name, s) in v["steps"].as_object().into_iter().flatten() {
        println!(
            "  step {}  component sha256 {}  contract {}",
            escape(name),
            escape(s["component"].as_str().unwrap_or_default()),
            escape(s["contract"]["version"].as_str().unwrap_or_default())
        );
    }
    for (name, f) in v["flows"].as_object().into_iter().flatten() {
        println!(
            "  flow {}  sha256 {}",
            escape(name),
            escape(f["digest"].as_str().unwrap_or_default())
        );
    }
    for a in v["allowed"].as_array().into_iter().flatten() {
        println!("  allowed: {}", escape(a.as_str().unwrap_or_default()));
    }
    Ok(())
}

/// What `--against` names: deployment N of the running host (reached
/// through `api`), or an app directory (a checkout of what is deployed).
pub(crate) struct Against {
    pub what: String,
    pub api: ApiArgs,
}

/// The gate between `app` (its steps described as `steps`) and what
/// `a` names: what it is called, and what the gate finds.
pub(crate) fn gate(
    app: &troupe::app::App,
    steps: &[troupe::host::Described],
    a: Against,
) -> Result<(String, Vec<troupe::deploy::Break>)> {
    let next: BTreeMap<String, StepContract> = steps
        .iter()
        .map(|s| {
            let raw =
                troupe::contract::json::from_json(&troupe::contract::json::to_json(&s.contract))
                    .expect("a contract reads back");
            (
                s.name.clone(),
                StepContract::compile(raw).expect("it compiled before"),
            )
        })
        .collect();
    let (label, what, before) = match a.what.parse::<u64>() {
        Ok(n) => {
            let v = client(&a.api)?.get(&format!("/v1/deployments/{n}"))?;
            let d: troupe::deploy::Deployment =
                serde_json::from_value(v).context("the deployment's record")?;
            let c = d
                .contracts()
                .map_err(|(s, e)| anyhow::anyhow!("deployment {n}, step `{s}`: {e}"))?;
            (n, format!("deployment {n}"), c)
        }
        Err(_) => {
            let other = super::load_app(Path::new(&a.what))?;
            let c = troupe::host::describe_steps(&other)?
                .into_iter()
                .map(|s| (s.name, s.contract))
                .collect();
            (0, a.what.clone(), c)
        }
    };
    Ok((
        what,
        troupe::deploy::gate(&[(label, &before)], &next, &app.deploy),
    ))
}
