//! `troupe publish`, `troupe dlq`, `troupe trace`: the app's events, from
//! its directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use troupe::app::App;
use troupe::broker::{AppEvents, DeadLetter, open_app_events};
use troupe::event::Event;
use troupe::kv::WRITE_EVENT;
use troupe::runtime::outbound::calls::CALL_EVENT;
use troupe::text::escape;

use super::run::print_dlq;
use super::{DlqCmd, load_app};

/// An app's events as the CLI reaches them, through the broker's
/// [`AppEvents`] facets like any other client: the embedded broker's files
/// (whether or not a host runs; work is queued for the host), or the NATS
/// server itself.
struct Events {
    broker: Arc<dyn AppEvents>,
    rt: tokio::runtime::Runtime,
}

impl Events {
    fn of(app: &App) -> Result<Events> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let broker = rt
            .block_on(open_app_events(&app.broker, &app.name, &app.state_dir()))
            .with_context(|| format!("cannot open the broker {}", app.broker))?;
        Ok(Events { broker, rt })
    }

    fn publish(&self, events: &[Event]) -> Result<()> {
        Ok(self.rt.block_on(self.broker.publish(events.to_vec()))?)
    }

    fn dead_letters(&self, id: Option<&str>) -> Result<Vec<DeadLetter>> {
        let b = &self.broker;
        Ok(match id {
            None => self.rt.block_on(b.dlq_list())?,
            Some(id) => match self.rt.block_on(b.dlq_get(id)) {
                Ok(d) => vec![d],
                Err(troupe::broker::BrokerError::NoSuchDeadLetter(_)) => vec![],
                Err(e) => return Err(e.into()),
            },
        })
    }

    /// Replay dead letter `id`; what happened, for the user.
    fn replay(&self, id: &str) -> Result<&'static str> {
        self.rt.block_on(self.broker.dlq_replay(id))?;
        Ok(if self.broker.queued() {
            "queued: the app's host delivers it to its step again"
        } else {
            "sent to its step again"
        })
    }

    fn trace(&self, correlation_id: &str) -> Result<Vec<Event>> {
        Ok(self.rt.block_on(self.broker.trace(correlation_id))?)
    }
}

pub(crate) fn publish(
    dir: &Path,
    kind: Option<String>,
    data: Option<String>,
    subject: Option<String>,
    file: Option<PathBuf>,
    no_check: bool,
    json: bool,
) -> Result<()> {
    let app = load_app(dir)?;
    let source = troupe::event::source(&app.name, "publish");
    // Where each event came from, for errors: `FILE:LINE (subject S)`.
    let mut origins: Vec<String> = Vec::new();
    let events = match file {
        Some(f) => {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let mut events = Vec::new();
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let at = || format!("{}:{}", f.display(), n + 1);
                let v: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
                let mut e = Event::from_json(v, &source)
                    .with_context(|| format!("{}: not an event", at()))?;
                e.ensure_trace();
                // The envelope here; the contracts below, for every event.
                let none: &[troupe::host::Described] = &[];
                if let Err(r) = troupe::ingress::check(&e, none) {
                    bail!("{}: {r}", at());
                }
                origins.push(match &e.subject {
                    Some(s) => format!("{} (subject {})", at(), escape(s)),
                    None => at(),
                });
                events.push(e);
            }
            events
        }
        None => {
            let (kind, data) = (
                kind.expect("clap requires it"),
                data.expect("clap requires it"),
            );
            if !troupe::contract::is_kind(&kind) {
                bail!("{}", troupe::ingress::Refused::NotAType(kind));
            }
            let value: serde_json::Value =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut e = Event::new(&kind, &source, serde_json::to_vec(&value)?);
            e.subject = subject;
            origins.push(format!("event {}", e.id));
            vec![e]
        }
    };
    if !no_check {
        check_against_consumers(&app, &events, &origins)?;
    }
    Events::of(&app)?
        .publish(&events)
        .context("cannot store the events")?;
    if json {
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        println!("{}", serde_json::json!({ "published": ids }));
    } else {
        for e in &events {
            println!("published {} {}", e.kind, e.id);
        }
    }
    Ok(())
}

/// Refuse events that a step of the app would dead-letter on arrival,
/// naming where each came from (`origins`, one per event). Nothing is
/// published unless every event passes: a file is published whole or not
/// at all.
pub(crate) fn check_against_consumers(
    app: &App,
    events: &[Event],
    origins: &[String],
) -> Result<()> {
    let steps = troupe::host::describe_steps(app)?;
    for (e, origin) in events.iter().zip(origins) {
        if !steps
            .iter()
            .any(|s| s.contract.consumes.iter().any(|t| t.kind == e.kind))
        {
            tracing::warn!(
                "no step of {} consumes {}; it is stored for other systems",
                app.name,
                e.kind
            );
        }
        if let Err(troupe::ingress::Refused::Contract { step, violation }) =
            troupe::ingress::check(e, &steps)
        {
            return Err(anyhow::Error::new(violation).context(format!(
                "{origin}: this {} event would break the contract of step `{step}`, so nothing \
                 was published (a file is published whole or not at all)",
                escape(&e.kind),
            )));
        }
    }
    Ok(())
}

pub(crate) fn dlq(cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { filters, app } => {
            let filter = filters.filter()?;
            let app = load_app(&app)?;
            let mut dead = Events::of(&app)?.dead_letters(None)?;
            dead.retain(|d| filter.matches(d));
            if json {
                let v: Vec<_> = dead.iter().map(|d| d.to_json(false)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_dlq(&dead);
            }
        }
        DlqCmd::Show { id, app } => {
            let app = load_app(&app)?;
            let d = Events::of(&app)?
                .dead_letters(Some(&id))?
                .pop()
                .with_context(|| {
                    format!("no dead letter with id {id:?} in {}", app.dir.display())
                })?;
            let v = d.to_json(true);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("id:       {}", escape(&d.id));
                println!("step:     {}", escape(&d.step));
                println!("class:    {}", d.class);
                println!("message:  {}", escape(&d.message));
                println!("attempts: {}", d.attempts);
                println!("time:     {}", escape(&d.time));
                if let (Some(n), Some(c)) = (d.deployment, &d.component) {
                    println!("handled by: deployment {n}, component {}", escape(c));
                }
                println!("event:\n{}", serde_json::to_string_pretty(&v["event"])?);
            }
        }
        DlqCmd::Replay {
            id: None,
            filters,
            bulk,
            api,
        } => super::dlq::bulk("replay", &filters, &bulk, &api, json)?,
        DlqCmd::Replay {
            id: Some(id),
            filters,
            bulk,
            api,
        } => {
            if !filters.filter()?.is_empty() || bulk.all || bulk.dry_run {
                bail!("give a dead letter's id, or filters (or --all), not both");
            }
            let app = load_app(&api.app)?;
            let what = Events::of(&app)?.replay(&id)?;
            if json {
                println!("{}", serde_json::json!({ "replayed": id }));
            } else {
                println!("replay of {id} {what}");
            }
        }
        DlqCmd::Purge { filters, bulk, api } => {
            super::dlq::bulk("purge", &filters, &bulk, &api, json)?
        }
    }
    Ok(())
}

/// One line for a `troupe.http.call` record: `http POST
/// http://host:port/path -> 201 in 3.1 ms (attempt 1, by payment-charge)`.
fn call_line(e: &Event) -> String {
    let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap_or_default();
    let c = &v["call"];
    let s = |k: &str| c[k].as_str().unwrap_or("?").to_string();
    let outcome = match (c["status"].as_u64(), c["error"].as_str()) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.to_string(),
        (None, None) => "?".into(),
    };
    let ms = c["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0;
    escape(&format!(
        "http {} {}://{}:{}{} -> {outcome} in {ms:.1} ms (attempt {}, by {})",
        s("method"),
        s("scheme"),
        s("host"),
        c["port"].as_u64().unwrap_or(0),
        s("path"),
        v["attempt"].as_u64().unwrap_or(0),
        v["step"].as_str().unwrap_or("?"),
    ))
    .into_owned()
}

/// One line for a `troupe.kv.write` record: `kv wrote stock: sku/tea,
/// res/o-1 (attempt 1, by inventory-reserve)`.
fn write_line(e: &Event) -> String {
    let v: serde_json::Value = serde_json::from_slice(&e.data).unwrap_or_default();
    let buckets: Vec<String> = v["written"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(b, keys)| {
                    let keys: Vec<&str> = keys
                        .as_array()
                        .map(|k| k.iter().filter_map(|k| k.as_str()).collect())
                        .unwrap_or_default();
                    format!("{b}: {}", keys.join(", "))
                })
                .collect()
        })
        .unwrap_or_default();
    let more = match v["more"].as_u64().unwrap_or(0) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    escape(&format!(
        "kv wrote {}{more} (attempt {}, by {})",
        buckets.join("; "),
        v["attempt"].as_u64().unwrap_or(0),
        v["step"].as_str().unwrap_or("?"),
    ))
    .into_owned()
}

pub(crate) fn trace(dir: &Path, correlation_id: &str, json: bool) -> Result<()> {
    let app = load_app(dir)?;
    let log = Events::of(&app)?;
    let events = log.trace(correlation_id)?;
    if events.is_empty() {
        let note = log
            .rt
            .block_on(log.broker.horizon())
            .map(|h| h.events_note())
            .unwrap_or_default();
        bail!(
            "no events with correlation id {:?} in {}{note}. `troupe trace` takes a cascade's \
             or a run's correlation id (the id `troupe publish` printed for its first event, or \
             the run id), not a subject or a business key",
            correlation_id,
            app.dir.display()
        );
    }
    if json {
        let v: Vec<_> = events.iter().map(Event::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let known: std::collections::HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    fn show(
        events: &[Event],
        parent: Option<&str>,
        known: &std::collections::HashSet<&str>,
        depth: usize,
    ) {
        let under = |e: &&Event| e.causation_id().filter(|c| known.contains(c)) == parent;
        // The calls made and the keys written handling the parent first,
        // then what it caused.
        for e in events.iter().filter(under) {
            let line = match e.kind.as_str() {
                CALL_EVENT => call_line(e),
                WRITE_EVENT => write_line(e),
                _ => continue,
            };
            println!("{:indent$}{line}", "", indent = depth * 2);
        }
        let record = |e: &&Event| e.kind == CALL_EVENT || e.kind == WRITE_EVENT;
        for e in events.iter().filter(under).filter(|e| !record(e)) {
            let by = e.source.rsplit('/').next().unwrap_or(&e.source);
            // Which deployment and build of the step emitted it.
            let version = match (
                e.extensions.get(troupe::protocol::DEPLOYMENT),
                e.extensions.get(troupe::protocol::COMPONENT),
            ) {
                (Some(n), Some(c)) => format!(
                    " @ deployment {}, component {}",
                    escape(n),
                    escape(troupe::deploy::short(c))
                ),
                (Some(n), None) => format!(" @ deployment {}", escape(n)),
                _ => String::new(),
            };
            println!(
                "{:indent$}{} {}  (from {}{version}, {})",
                "",
                escape(&e.kind),
                escape(&e.id),
                escape(by),
                escape(&e.time),
                indent = depth * 2
            );
            show(events, Some(&e.id), known, depth + 1);
        }
    }
    show(&events, None, &known, 0);
    Ok(())
}
