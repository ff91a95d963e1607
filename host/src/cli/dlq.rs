//! `troupe dlq` filters, and its bulk forms (`replay` and `purge` without
//! an id): through the running host's API (`POST /v1/dlq/replay`, `POST
//! /v1/dlq/purge`), a batch at a time, with the progress on stderr. A
//! replay cut short is run again to replay the rest: each batch takes the
//! oldest dead letters still in the DLQ.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::{Value, json};
use troupe::broker::DlqFilter;
use troupe::protocol::FailureClass;
use troupe::text::escape;

use super::ApiArgs;
use super::flows::client;

/// Which dead letters.
#[derive(Args)]
pub(crate) struct Filters {
    /// Only those this step could not handle.
    #[arg(long)]
    step: Option<String>,
    /// Only this failure class (rejected, contract, retry, trap, limit,
    /// timeout).
    #[arg(long)]
    class: Option<String>,
    /// Only events of this type.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Dead-lettered since then: a duration before now (15m, 1h, 2d) or an
    /// RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Dead-lettered before then (the same forms).
    #[arg(long)]
    until: Option<String>,
}

/// How a bulk replay or purge goes.
#[derive(Args)]
pub(crate) struct BulkArgs {
    /// Only say what would happen (for a replay: how many today's
    /// consumers would refuse, and why).
    #[arg(long)]
    pub dry_run: bool,
    /// Every dead letter (when no filter is given).
    #[arg(long)]
    pub all: bool,
    /// Dead letters per request to the host.
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

impl Filters {
    /// The filter, checked.
    pub(crate) fn filter(&self) -> Result<DlqFilter> {
        let now = troupe::clock::now_ms();
        let when = |k: &str, v: &Option<String>| -> Result<Option<u64>> {
            v.as_deref()
                .map(|t| {
                    troupe::clock::parse_when(t, now).map_err(|e| anyhow::anyhow!("--{k}: {e}"))
                })
                .transpose()
        };
        let class = match &self.class {
            None => None,
            Some(c) => Some(FailureClass::parse(c).ok_or_else(|| {
                anyhow::anyhow!(
                    "--class: {c:?} is not a failure class (rejected, contract, retry, trap, limit, timeout)"
                )
            })?),
        };
        Ok(DlqFilter {
            step: self.step.clone(),
            class,
            kind: self.kind.clone(),
            since_ms: when("since", &self.since)?,
            until_ms: when("until", &self.until)?,
        })
    }

    /// As the API's body takes them.
    fn body(&self) -> Value {
        let mut b = json!({});
        for (k, v) in [
            ("step", &self.step),
            ("class", &self.class),
            ("type", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v {
                b[k] = json!(v);
            }
        }
        b
    }
}

/// `troupe dlq replay|purge` with filters: `verb` a batch at a time until
/// nothing the filters pick is left (a dry run: one pass over them all).
pub(crate) fn bulk(
    verb: &str,
    filters: &Filters,
    bulk: &BulkArgs,
    api: &ApiArgs,
    json: bool,
) -> Result<()> {
    filters.filter()?;
    if filters.filter()?.is_empty() && !bulk.all {
        bail!("say which dead letters: --step, --class, --type, --since, --until, or --all");
    }
    if bulk.batch == 0 {
        bail!("--batch must be 1 or more");
    }
    let c = client(api)?;
    let mut body = filters.body();
    body["all"] = json!(bulk.all);
    body["dry_run"] = json!(bulk.dry_run);
    if !bulk.dry_run {
        body["limit"] = json!(bulk.batch);
    }
    let done_key = if verb == "replay" {
        "replayed"
    } else {
        "purged"
    };
    let mut done = 0u64;
    let mut total = None;
    // The last batch looked at every dead letter still there: its refusals
    // are the ones left.
    let (refused, reasons) = loop {
        let (_, v) = c.post(&format!("/v1/dlq/{verb}"), Some(&body))?;
        let n = v[done_key].as_u64().unwrap_or(0);
        done += n;
        let refused = v["refused"].as_u64().unwrap_or(0);
        let reasons = v["reasons"].as_array().cloned().unwrap_or_default();
        let matched = v["matched"].as_u64().unwrap_or(0);
        let total = *total.get_or_insert(matched.saturating_sub(refused));
        if !bulk.dry_run && !json {
            eprintln!("{done_key} {done} of {total}");
        }
        if bulk.dry_run || !v["more"].as_bool().unwrap_or(false) || n == 0 {
            break (refused, reasons);
        }
    };
    if json {
        println!(
            "{}",
            json!({ "dry_run": bulk.dry_run, done_key: done, "refused": refused, "reasons": reasons })
        );
        return Ok(());
    }
    let would = if bulk.dry_run { "would be " } else { "" };
    println!("{done} {would}{done_key}");
    if verb == "replay" {
        println!("{refused} {would}refused (left in the dead-letter queue)");
        for r in &reasons {
            println!(
                "  {} x {}  e.g. {}",
                r["count"],
                escape(r["reason"].as_str().unwrap_or("")),
                r["examples"]
                    .as_array()
                    .map(|e| e
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| escape(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
