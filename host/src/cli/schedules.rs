//! `troupe schedules`: the app's schedules (`[schedules.NAME]`), their
//! next ticks, and an operator's pause, resume and trigger, through a
//! running host's HTTP API.

use anyhow::Result;
use clap::Subcommand;
use troupe::text::escape;

use super::ApiArgs;
use super::flows::{client, print_run};
use super::runs::{QUERY, who};

#[derive(Subcommand)]
pub(crate) enum SchedulesCmd {
    /// Each schedule: its flow, when it ticks, whether it is paused, its
    /// last tick and run, and its next ticks.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Pause a schedule: its ticks start nothing until it is resumed.
    Pause {
        schedule: String,
        /// Why (kept with the schedule, shown by `list`).
        #[arg(long)]
        reason: Option<String>,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Resume a paused schedule from its next tick (the ticks of the
    /// pause are not caught up).
    Resume {
        schedule: String,
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Start a run of the schedule's flow with its input now, outside its
    /// ticks (paused or not).
    Trigger {
        schedule: String,
        /// Wait for the run to end and show it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub(crate) fn schedules(cmd: SchedulesCmd, json: bool) -> Result<()> {
    match cmd {
        SchedulesCmd::List { api } => list(&api, json),
        SchedulesCmd::Pause {
            schedule,
            reason,
            by,
            api,
        } => pause(&api, &schedule, "pause", reason, by, json),
        SchedulesCmd::Resume { schedule, by, api } => {
            pause(&api, &schedule, "resume", None, by, json)
        }
        SchedulesCmd::Trigger {
            schedule,
            wait,
            api,
        } => trigger(&api, &schedule, wait, json),
    }
}

fn list(api: &ApiArgs, json: bool) -> Result<()> {
    let v = client(api)?.get("/v1/schedules")?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let all = v["schedules"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("no schedules (add a [schedules.NAME] table to troupe.toml: docs/flows.md)");
    }
    for s in &all {
        print_schedule(s);
    }
    Ok(())
}

fn print_schedule(s: &serde_json::Value) {
    let t = |k: &str| escape(s[k].as_str().unwrap_or("-")).into_owned();
    let state = if s["paused"] == true {
        let by = s["paused_by"]
            .as_str()
            .map(|b| format!(" by {}", escape(b)))
            .unwrap_or_default();
        let why = s["paused_reason"]
            .as_str()
            .map(|r| format!(": {}", escape(r)))
            .unwrap_or_default();
        format!("paused{by}{why}")
    } else {
        "active".into()
    };
    println!(
        "{}  flow {}  {}  overlap {}  catch_up {}  {state}",
        t("name"),
        t("flow"),
        t("when"),
        t("overlap"),
        t("catch_up"),
    );
    println!(
        "  started {}  skipped {}  missed {}  last tick {}  last run {}",
        s["started"],
        s["skipped"],
        s["missed"],
        t("last_tick"),
        t("last_run")
    );
    if let Some(e) = s["last_error"].as_str() {
        println!("  last error: {}", escape(e));
    }
    let next: Vec<String> = s["next"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(|n| escape(n).into_owned()))
        .collect();
    if !next.is_empty() {
        println!("  next: {}", next.join(", "));
    }
}

fn pause(
    api: &ApiArgs,
    schedule: &str,
    verb: &str,
    reason: Option<String>,
    by: Option<String>,
    json: bool,
) -> Result<()> {
    let mut body = serde_json::json!({ "by": who(by) });
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    let path = format!(
        "/v1/schedules/{}/{verb}",
        percent_encoding::utf8_percent_encode(schedule, QUERY)
    );
    let (_, v) = client(api)?.post(&path, Some(&body))?;
    if json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print_schedule(&v);
    }
    Ok(())
}

fn trigger(api: &ApiArgs, schedule: &str, wait: bool, json: bool) -> Result<()> {
    let c = client(api)?;
    let path = format!(
        "/v1/schedules/{}/trigger",
        percent_encoding::utf8_percent_encode(schedule, QUERY)
    );
    let (_, v) = c.post(&path, None)?;
    let run = v["run_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        if json {
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!("started run {} (troupe status {run})", escape(&run));
        }
        return Ok(());
    }
    loop {
        let r = c.get(&format!("/v1/runs/{run}"))?;
        let state = r["state"].as_str().unwrap_or("");
        if !matches!(state, "running" | "compensating") {
            return print_run(&r, json);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
