//! `troupe runs`: find runs (filters, pages), counts, and an operator's
//! cancel and redrive, through a running host's HTTP API.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use troupe::text::escape;

use super::ApiArgs;
use super::flows::{client, print_run};

/// `troupe runs`: a page of runs (the filters), or one of the verbs.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCmd>,
    #[command(flatten)]
    pub filters: Filters,
}

/// Which runs to list.
#[derive(Args)]
pub(crate) struct Filters {
    /// Only runs of this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Only runs in this state (running, compensating, completed,
    /// compensated, failed, timed_out, cancelled).
    #[arg(long)]
    status: Option<String>,
    /// Only runs started since then: a duration before now (90s, 15m, 1h,
    /// 2d) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only runs started before then (the same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only the runs started with this Idempotency-Key.
    #[arg(long)]
    key: Option<String>,
    /// Runs per page (1 to 500).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Go on from where an earlier page ended (the cursor it printed).
    #[arg(long)]
    cursor: Option<String>,
    /// Every page, not only the first.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
pub(crate) enum RunsCmd {
    /// How many runs of each flow are in each state.
    Counts {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a run: what has not started is cancelled, what runs is
    /// superseded, what completed is compensated; it ends `cancelled`.
    Cancel {
        run: String,
        /// Why (kept on the run).
        #[arg(long)]
        reason: Option<String>,
        /// Who (kept on the run; default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a signal to a run, for the flow step that awaits it
    /// (`await = { signal = NAME }`); its data becomes the step's output.
    Signal {
        run: String,
        /// The signal's name.
        name: String,
        /// Its data, JSON (checked against the flow's schema for it).
        #[arg(long, default_value = "null")]
        data: String,
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a failed or timed-out run again from the steps that failed (on
    /// the current deployment; completed steps keep their outputs).
    Redrive {
        run: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub(crate) fn runs(args: RunsArgs, json: bool) -> Result<()> {
    match args.command {
        None => list(&args.filters, json),
        Some(RunsCmd::Counts { api }) => counts(&api, json),
        Some(RunsCmd::Cancel {
            run,
            reason,
            by,
            api,
        }) => control(&api, &run, "cancel", reason, by, json),
        Some(RunsCmd::Redrive {
            run,
            reason,
            by,
            api,
        }) => control(&api, &run, "redrive", reason, by, json),
        Some(RunsCmd::Signal {
            run,
            name,
            data,
            by,
            api,
        }) => signal(&api, &run, &name, &data, by, json),
    }
}

fn signal(
    api: &ApiArgs,
    run: &str,
    name: &str,
    data: &str,
    by: Option<String>,
    json: bool,
) -> Result<()> {
    let data: serde_json::Value =
        serde_json::from_str(data).map_err(|e| anyhow::anyhow!("--data is not valid JSON: {e}"))?;
    let c = client(api)?;
    let by = who(by);
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY).to_string();
    let path = format!(
        "/v1/runs/{}/signals/{}?by={}",
        enc(run),
        enc(name),
        enc(&by)
    );
    let (_, v) = c.post(&path, Some(&data))?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let sent = v["signals"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|s| s["name"] == name));
    match sent {
        Some(s) => println!(
            "signal {} {} (step {})",
            escape(name),
            escape(s["state"].as_str().unwrap_or("?")),
            escape(s["step"].as_str().unwrap_or("?"))
        ),
        None => println!("signal {} sent; not yet taken by the run", escape(name)),
    }
    print_run(&v, false)
}

/// Who asks: `--by`, else `$USER`, else `cli`.
pub(crate) fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "cli".into())
}

fn list(f: &Filters, json: bool) -> Result<()> {
    let c = client(&f.api)?;
    let mut params: Vec<(&str, String)> = [
        ("flow", &f.flow),
        ("status", &f.status),
        ("since", &f.since),
        ("until", &f.until),
        ("key", &f.key),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect();
    params.push(("limit", f.limit.to_string()));
    let mut cursor = f.cursor.clone();
    let mut first = true;
    loop {
        let mut q = params.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let query: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, QUERY)))
            .collect();
        let page = c.get(&format!("/v1/runs?{}", query.join("&")))?;
        let runs = page["runs"].as_array().cloned().unwrap_or_default();
        if json {
            for r in &runs {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            if first && runs.is_empty() {
                println!("no runs");
            }
            for r in &runs {
                print_line(r);
            }
        }
        first = false;
        cursor = page["next_cursor"].as_str().map(str::to_string);
        match &cursor {
            Some(next) if !f.all => {
                if !json {
                    println!("more: --cursor {next}");
                }
                return Ok(());
            }
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

/// What a query value may hold as it is.
pub(crate) const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

fn print_line(r: &serde_json::Value) {
    let s = |k: &str| escape(r[k].as_str().unwrap_or("")).into_owned();
    let error = r["error"]
        .as_str()
        .map(|e| format!("  {}", escape(e)))
        .unwrap_or_default();
    println!(
        "{}  {:<16} {:<12} {}{error}",
        s("id"),
        s("flow"),
        s("state"),
        s("created")
    );
}

fn counts(api: &ApiArgs, json: bool) -> Result<()> {
    let c = client(api)?;
    let v = c.get("/v1/runs/counts")?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    for n in v["counts"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<12} {}",
            escape(n["flow"].as_str().unwrap_or("")),
            escape(n["state"].as_str().unwrap_or("")),
            n["count"]
        );
    }
    println!("total {}", v["total"]);
    Ok(())
}

fn control(
    api: &ApiArgs,
    run: &str,
    verb: &str,
    reason: Option<String>,
    by: Option<String>,
    json: bool,
) -> Result<()> {
    let c = client(api)?;
    let by = who(by);
    let mut body = serde_json::json!({ "by": by });
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    let path = format!(
        "/v1/runs/{}/{verb}",
        percent_encoding::utf8_percent_encode(run, QUERY)
    );
    let (status, v) = c.post(&path, Some(&body))?;
    print_run(&v, json)?;
    if verb == "cancel" && status == 202 && !json {
        println!("cancelling: compensations are running (troupe status {run} --watch)");
    }
    if v["state"].is_null() {
        bail!("the host answered {status} without a run");
    }
    Ok(())
}
