//! The `troupe` command line.
//!
//! One binary: `run` an app, `publish` events into it, inspect and replay
//! its dead letters, `build` plugin sources. Library errors are thiserror
//! enums; here they get `anyhow` context and are printed once, with their
//! causes, and a non-zero exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use troupe::app::App;
use troupe::broker::DeadLetter;
use troupe::broker::embedded::offline;
use troupe::event::Event;
use troupe::host::{Host, load_steps};
use troupe::runtime::Runtime;

#[derive(Parser)]
#[command(
    name = "troupe",
    version,
    about = "Run event-driven microservices out of sandboxed WebAssembly steps"
)]
struct Cli {
    /// Print records as JSON (one document per command), for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load an app and run it until stopped (Ctrl-C), or until idle.
    Run {
        /// The app directory (holds troupe.toml).
        app: PathBuf,
        /// Stop once no event has been in flight for a moment, and print
        /// what each step did.
        #[arg(long)]
        until_idle: bool,
        /// Serve the HTTP API here (port 0: any free port). Default
        /// 127.0.0.1:7373; with --until-idle, no API unless given.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Start a run of a flow on a running host (HTTP API); prints the run id.
    Start {
        /// The flow's name (its file under the app's flows/).
        flow: String,
        /// The run's input: the data of its input event, JSON.
        #[arg(long)]
        input: String,
        /// Wait for the run to finish and print its final status.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The aggregated status of a run.
    Status {
        run: String,
        /// Follow the run until it finishes, printing each change.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Publish an event into an app's choreography. The event is stored
    /// durably in the app's broker and picked up by its running host (or by
    /// the next one to start).
    Publish {
        /// The app directory.
        app: PathBuf,
        /// The event type, e.g. order.placed (not with --file).
        #[arg(required_unless_present = "file")]
        kind: Option<String>,
        /// The event data, JSON.
        #[arg(long, required_unless_present = "file")]
        data: Option<String>,
        /// The event's subject.
        #[arg(long)]
        subject: Option<String>,
        /// A file of CloudEvents JSON documents, one per line.
        #[arg(long, conflicts_with_all = ["kind", "data", "subject"])]
        file: Option<PathBuf>,
        /// Skip checking the data against the schemas of the app's steps.
        #[arg(long)]
        no_check: bool,
    },
    /// Inspect and replay dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCmd,
    },
    /// The causal tree of a cascade: every event with this correlation id,
    /// each under the event that caused it.
    Trace {
        correlation_id: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Scaffold a step plugin from a template.
    New {
        /// The step's name: lower-case letters, digits and `-`.
        name: String,
        /// rust, python, js or c.
        #[arg(long)]
        lang: String,
        /// Where to create the plugin directory (default: here).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check that a component honours the troupe:step world, rule by rule.
    Conformance {
        /// The component file.
        component: PathBuf,
    },
    /// Build plugin source directories into components.
    Build {
        /// Plugin directories (default: the current directory).
        dirs: Vec<PathBuf>,
    },
}

/// Which host to talk to.
#[derive(clap::Args)]
struct ApiArgs {
    /// The host's API, e.g. http://127.0.0.1:7373 (default: found from --app).
    #[arg(long, env = "TROUPE_API")]
    api: Option<String>,
    /// The app directory whose running host to use.
    #[arg(long, default_value = ".")]
    app: PathBuf,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List dead letters, oldest first.
    List {
        /// The app directory.
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Show one dead letter with its original event.
    Show {
        id: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Deliver a dead letter to its step again (with a fresh retry budget).
    Replay {
        id: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TROUPE_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Cmd::Run {
            app,
            until_idle,
            listen,
        } => {
            let listen = listen.or_else(|| (!until_idle).then(|| "127.0.0.1:7373".to_string()));
            tokio_main(run_app(&app, until_idle, listen.as_deref(), json))
        }
        Cmd::Start {
            flow,
            input,
            wait,
            api,
        } => start(&flow, &input, wait, &api, json),
        Cmd::Status { run, watch, api } => status(&run, watch, &api, json),
        Cmd::Publish {
            app,
            kind,
            data,
            subject,
            file,
            no_check,
        } => publish(&app, kind, data, subject, file, no_check, json),
        Cmd::Dlq { command } => dlq(command, json),
        Cmd::Trace {
            correlation_id,
            app,
        } => trace(&app, &correlation_id, json),
        Cmd::Build { dirs } => build(dirs, json),
        Cmd::New { name, lang, dir } => new_plugin(&name, &lang, &dir, json),
        Cmd::Conformance { component } => conformance(&component, json),
    }
}

fn tokio_main(f: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

fn load_app(dir: &Path) -> Result<App> {
    App::load(dir).with_context(|| format!("cannot load the app in {}", dir.display()))
}

async fn run_app(dir: &Path, until_idle: bool, listen: Option<&str>, json: bool) -> Result<()> {
    let app = load_app(dir)?;
    let host = Host::start(app)
        .await
        .with_context(|| format!("cannot start the app in {}", dir.display()))?;
    let state_dir = host.app.state_dir();
    if let Some(listen) = listen {
        serve_api(&host, listen).await?;
    }
    if until_idle {
        host.wait_idle(Duration::from_millis(500)).await?;
    } else {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
    }
    let _ = std::fs::remove_file(state_dir.join("api.json"));
    summary(host, json).await
}

/// Serve the HTTP API of `host` on `listen`, and say where in
/// `.troupe/api.json` for the CLI.
async fn serve_api(host: &Host, listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let state_dir = host.app.state_dir();
    let token = troupe::client::token_for(&state_dir, true)?;
    troupe::api::write_discovery(&state_dir, &url).context("cannot write .troupe/api.json")?;
    let router = troupe::api::router(troupe::api::ApiState {
        broker: host.broker.clone(),
        orchestrator: host.orchestrator.clone(),
        steps: host.steps.clone(),
        stats: host.stats.clone(),
        app: host.app.name.clone(),
        token: token.into(),
    });
    tracing::info!(
        "HTTP API on {url} (bearer token: TROUPE_API_TOKEN or {})",
        state_dir.join("api-token").display()
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the HTTP API stopped: {e}");
        }
    });
    Ok(())
}

/// Stop the host and print what each step did, and the DLQ.
async fn summary(host: Host, json: bool) -> Result<()> {
    let stats = host.stats.snapshot();
    let broker = host.broker.clone();
    host.shutdown().await;
    let dead = broker.dlq_list().await?;
    if json {
        let v = serde_json::json!({
            "steps": stats,
            "dlq": dead.iter().map(|d| d.to_json(false)).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!();
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>6} {:>9}",
        "step", "handled", "emitted", "retried", "dlq", "contract"
    );
    for (name, s) in &stats {
        println!(
            "{:<24} {:>8} {:>8} {:>8} {:>6} {:>9}",
            name, s.handled, s.emitted, s.retried, s.dead_lettered, s.contract_violations
        );
    }
    print_dlq(&dead);
    Ok(())
}

fn print_dlq(dead: &[DeadLetter]) {
    println!();
    if dead.is_empty() {
        println!("dead-letter queue: empty");
        return;
    }
    println!("dead-letter queue: {} message(s)", dead.len());
    for d in dead {
        println!(
            "  {}  {:<18} {:<10} {}  {}",
            d.id, d.step, d.class, d.event.kind, d.message
        );
    }
}

fn publish(
    dir: &Path,
    kind: Option<String>,
    data: Option<String>,
    subject: Option<String>,
    file: Option<PathBuf>,
    no_check: bool,
    json: bool,
) -> Result<()> {
    let app = load_app(dir)?;
    let source = format!("troupe://{}/publish", app.name);
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
                events.push(
                    Event::from_json(v, &source)
                        .with_context(|| format!("{}: not an event", at()))?,
                );
            }
            events
        }
        None => {
            let (kind, data) = (
                kind.expect("clap requires it"),
                data.expect("clap requires it"),
            );
            if !troupe::contract::is_kind(&kind) {
                bail!(
                    "{kind:?} is not an event type: lower-case words joined by `.`, e.g. order.placed"
                );
            }
            let value: serde_json::Value =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            let mut e = Event::new(&kind, &source, serde_json::to_vec(&value)?);
            e.subject = subject;
            vec![e]
        }
    };
    if !no_check {
        check_against_consumers(&app, &events)?;
    }
    offline::publish(&app.state_dir(), &events).context("cannot store the events")?;
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

/// Refuse events that a step of the app would dead-letter on arrival.
fn check_against_consumers(app: &App, events: &[Event]) -> Result<()> {
    let rt = Runtime::new()?;
    let steps = load_steps(&rt, app)?;
    for e in events {
        let consumers: Vec<_> = steps
            .iter()
            .filter(|s| s.contract.consumed_kinds().contains(&e.kind))
            .collect();
        if consumers.is_empty() {
            tracing::warn!(
                "no step of {} consumes {}; it is stored for other systems",
                app.name,
                e.kind
            );
        }
        for s in consumers {
            s.contract.check_input(e).with_context(|| {
                format!(
                    "event {} would break the contract of step `{}`",
                    e.id,
                    s.name()
                )
            })?;
        }
    }
    Ok(())
}

fn dlq(cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { app } => {
            let app = load_app(&app)?;
            let dead = offline::dead_letters(&app.state_dir(), None)?;
            if json {
                let v: Vec<_> = dead.iter().map(|d| d.to_json(false)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_dlq(&dead);
            }
        }
        DlqCmd::Show { id, app } => {
            let app = load_app(&app)?;
            let d = offline::dead_letters(&app.state_dir(), Some(&id))?
                .pop()
                .with_context(|| {
                    format!("no dead letter with id {id:?} in {}", app.dir.display())
                })?;
            let v = d.to_json(true);
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("id:       {}", d.id);
                println!("step:     {}", d.step);
                println!("class:    {}", d.class);
                println!("message:  {}", d.message);
                println!("attempts: {}", d.attempts);
                println!("time:     {}", d.time);
                println!("event:\n{}", serde_json::to_string_pretty(&v["event"])?);
            }
        }
        DlqCmd::Replay { id, app } => {
            let app = load_app(&app)?;
            offline::replay(&app.state_dir(), &id)?;
            if json {
                println!("{}", serde_json::json!({ "replayed": id }));
            } else {
                println!("replay of {id} queued: the app's host delivers it to its step again");
            }
        }
    }
    Ok(())
}

fn trace(dir: &Path, correlation_id: &str, json: bool) -> Result<()> {
    let app = load_app(dir)?;
    let events = offline::trace(&app.state_dir(), correlation_id)?;
    if events.is_empty() {
        bail!(
            "no events with correlation id {correlation_id:?} in {}",
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
        for e in events {
            let cause = e.causation_id().filter(|c| known.contains(c));
            if cause != parent {
                continue;
            }
            let by = e.source.rsplit('/').next().unwrap_or(&e.source);
            println!(
                "{:indent$}{} {}  (from {by}, {})",
                "",
                e.kind,
                e.id,
                e.time,
                indent = depth * 2
            );
            show(events, Some(&e.id), known, depth + 1);
        }
    }
    show(&events, None, &known, 0);
    Ok(())
}

fn client(api: &ApiArgs) -> Result<troupe::client::Client> {
    Ok(troupe::client::Client::for_app(
        &api.app,
        api.api.as_deref(),
    )?)
}

fn start(flow: &str, input: &str, wait: bool, api: &ApiArgs, json: bool) -> Result<()> {
    let input: serde_json::Value =
        serde_json::from_str(input).context("--input is not valid JSON")?;
    let c = client(api)?;
    let id = c.start(flow, &input)?;
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

fn status(run: &str, watch: bool, api: &ApiArgs, json: bool) -> Result<()> {
    let c = client(api)?;
    if !watch {
        return print_run(&c.status(run)?, json);
    }
    let last = c.wait(run, Duration::from_secs(3600), |v| {
        let _ = print_run(v, json);
    })?;
    finished_ok(&last)
}

fn finished_ok(run: &serde_json::Value) -> Result<()> {
    match run["state"].as_str() {
        Some("completed") => Ok(()),
        Some(s) => bail!(
            "run {} ended {s}: {}",
            run["id"].as_str().unwrap_or("?"),
            run["error"].as_str().unwrap_or("")
        ),
        None => bail!("no state in the status"),
    }
}

fn print_run(run: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(run)?);
        return Ok(());
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
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
        println!("  error: {e}");
    }
    for (id, st) in run["steps"].as_object().into_iter().flatten() {
        println!(
            "  {:<16} {:<20} attempts {:<2} {}{}",
            id,
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
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn new_plugin(name: &str, lang: &str, parent: &Path, json: bool) -> Result<()> {
    let Some(l) = troupe::builder::Lang::parse(lang) else {
        bail!("unknown language {lang:?}: choose rust, python, js or c");
    };
    let dir = troupe::scaffold::create(parent, name, l)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "created": dir, "lang": l.name() })
        );
    } else {
        println!("created {} ({} step)", dir.display(), l.name());
        println!(
            "next: troupe build {0} && troupe conformance $(troupe build {0} 2>/dev/null)",
            dir.display()
        );
    }
    Ok(())
}

/// Where the conformance kit caches compiled components.
fn user_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("troupe").join("artifacts")
}

fn conformance(component: &Path, json: bool) -> Result<()> {
    use troupe::conformance::Verdict;
    let rt = Runtime::new()?;
    let report = troupe::conformance::check(&rt, component, &user_cache_dir())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "conformance of {}{}",
            report.component,
            report
                .step
                .as_ref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default()
        );
        for c in &report.checks {
            let v = match c.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            println!("  {v}  {:<18} {}", c.rule.id(), c.detail);
        }
    }
    if !report.passed() {
        let failed: Vec<&str> = report.failed().iter().map(|r| r.id()).collect();
        bail!(
            "{} does not conform: {}",
            component.display(),
            failed.join(", ")
        );
    }
    if !json {
        println!("conforms");
    }
    Ok(())
}

fn build(dirs: Vec<PathBuf>, json: bool) -> Result<()> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        dirs
    };
    let mut built = Vec::new();
    for d in dirs {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("building {}", d.display()));
        bar.enable_steady_tick(Duration::from_millis(100));
        let b = troupe::builder::build(&d).with_context(|| format!("cannot build {}", d.display()));
        bar.finish_and_clear();
        let b = b?;
        let how = if b.rebuilt {
            format!("built in {:.1?}", b.elapsed)
        } else {
            "up to date".into()
        };
        eprintln!("{} ({}): {how}", d.display(), b.lang.name());
        if !json {
            println!("{}", b.component.display());
        }
        built.push(serde_json::json!({
            "dir": d, "lang": b.lang.name(), "component": b.component, "rebuilt": b.rebuilt,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    }
    Ok(())
}
