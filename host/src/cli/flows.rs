//! `troupe start`, `troupe status`: runs, through a host's HTTP API.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use troupe::text::escape;

use super::ApiArgs;

/// How long `troupe start` keeps trying a host that asks it to wait.
const START_PATIENCE: Duration = Duration::from_secs(60);

pub(crate) fn client(api: &ApiArgs) -> Result<troupe::client::Client> {
    Ok(troupe::client::Client::for_app(
        &api.app,
        api.api.as_deref(),
    )?)
}

/// The client for the app's host, waiting (up to [`START_PATIENCE`]) for a
/// host that is still starting: `troupe run APP &` then `troupe start` at
/// once finds no `.troupe/api.json` yet, or a stale one, for a few seconds.
fn host_when_up(api: &ApiArgs) -> Result<troupe::client::Client> {
    if api.api.is_some() {
        return client(api);
    }
    let until = std::time::Instant::now() + START_PATIENCE;
    let mut told = false;
    loop {
        let found = client(api).and_then(|c| {
            c.get("/healthz")?;
            Ok(c)
        });
        match found {
            Ok(c) => return Ok(c),
            Err(e) if std::time::Instant::now() >= until => return Err(e),
            Err(e) => {
                if !told {
                    eprintln!(
                        "{e:#}; waiting up to {START_PATIENCE:.0?} for the host of {} to start",
                        api.app.display()
                    );
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

pub(crate) fn start(
    flow: &str,
    input: &str,
    key: Option<&str>,
    wait: bool,
    api: &ApiArgs,
    json: bool,
) -> Result<()> {
    let input: serde_json::Value =
        serde_json::from_str(input).context("--input is not valid JSON")?;
    let c = host_when_up(api)?;
    let mut told = false;
    let id = c.start_patiently(flow, &input, key, START_PATIENCE, |why, wait| {
        if !told {
            eprintln!("{why}; trying again every {wait:.0?} for up to {START_PATIENCE:.0?}");
            told = true;
        }
    })?;
    if !wait {
        if json {
            println!("{}", serde_json::json!({ "run_id": id }));
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    let last = c.wait(&id, Duration::from_secs(600), |_| {})?;
    print_run(&last, json)?;
    finished_ok(&last)
}

pub(crate) fn status(run: &str, watch: bool, api: &ApiArgs, json: bool) -> Result<()> {
    let c = client(api)?;
    if !watch {
        return print_run(&c.status(run)?, json);
    }
    let last = c.wait(run, Duration::from_secs(3600), |v| {
        let _ = print_run(v, json);
    })?;
    finished_ok(&last)
}

pub(crate) fn finished_ok(run: &serde_json::Value) -> Result<()> {
    match run["state"].as_str() {
        Some("completed") => Ok(()),
        Some(s) => bail!(
            "run {} ended {s}: {}",
            escape(run["id"].as_str().unwrap_or("?")),
            escape(run["error"].as_str().unwrap_or(""))
        ),
        None => bail!("no state in the status"),
    }
}

pub(crate) fn print_run(run: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(run)?);
        return Ok(());
    }
    // Everything shown is escaped: ids, errors and messages come from
    // producers and guests.
    let s = |v: &serde_json::Value| escape(v.as_str().unwrap_or("")).into_owned();
    println!(
        "run {} ({}): {}{}",
        s(&run["id"]),
        s(&run["flow"]),
        s(&run["state"]),
        run["duration_ms"]
            .as_u64()
            .map(|d| format!(" in {d} ms"))
            .unwrap_or_default()
    );
    if let Some(e) = run["error"].as_str() {
        println!("  error: {}", escape(e));
    }
    if run["parent"].is_object() {
        println!(
            "  child of run {} (its step {})",
            s(&run["parent"]["run"]),
            s(&run["parent"]["step"])
        );
    }
    // In the order the steps started (the flow's order, parallel steps by
    // time, compensations after); those that never started last.
    let mut steps: Vec<_> = run["steps"].as_object().into_iter().flatten().collect();
    steps.sort_by_key(|(id, st)| {
        let started = st["started"].as_str().map(str::to_string);
        (started.is_none(), started, id.to_string())
    });
    for (id, st) in steps {
        println!(
            "  {:<16} {:<20} attempts {:<2} {}{}",
            escape(id),
            s(&st["state"]),
            st["attempts"].as_u64().unwrap_or(0),
            st["duration_ms"]
                .as_u64()
                .map(|d| format!("{d} ms"))
                .unwrap_or_default(),
            st["errors"]
                .as_array()
                .and_then(|e| e.last())
                .map(|e| format!("  last error: {}", s(e)))
                .or_else(|| st["reason"].as_str().map(|r| format!("  {}", escape(r))))
                .or_else(|| st["child"]
                    .as_str()
                    .map(|c| format!("  child run {}", escape(c))))
                .unwrap_or_default()
        );
    }
    Ok(())
}
