//! The `troupe` command line.
//!
//! One binary. This file holds the command-line grammar (clap) and the
//! dispatch; the subcommands live in `cli/`, by what they work on: `run`
//! (the host and its HTTP API), `events` (publish, dlq, trace), `state`
//! (kv), `store` (backup, check --store), `flows`
//! (start, status over HTTP), `plugins` (new, build, conformance). Library
//! errors are thiserror enums; here they get `anyhow` context and are
//! printed once, with their causes, and a non-zero exit.

mod cli;

/// mimalloc, not glibc's malloc: events are built on one thread (a worker,
/// the orchestrator) and freed on another (the broker's writer and
/// syncer), which glibc's per-thread arenas handle poorly (~16% of a
/// loaded host's CPU went to malloc and free; `docs/flows.md`, Performance).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use troupe::app::App;
use troupe::broker::BrokerUrl;

use cli::{deploys, events, flows, plugins, run as host_run, state, store};

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
    /// The broker of the app: `embedded` (its `.troupe/` folder) or
    /// `nats://HOST:PORT[/NAMESPACE]`. Overrides `[broker] url` in
    /// troupe.toml. For run, publish, dlq, trace, kv and docs; refused by the
    /// other commands.
    #[arg(long, global = true, env = "TROUPE_BROKER")]
    broker: Option<String>,
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
        /// Deploy the app's files again whenever they change (development):
        /// rebuilt, checked and switched to without a restart.
        #[arg(long, conflicts_with = "until_idle")]
        watch: bool,
        /// Start even if a changed contract is not passive for what was
        /// deployed before (recorded with the deployment).
        #[arg(long)]
        allow_breaking: bool,
    },
    /// Deploy the app's files on its running host, without a restart:
    /// validate, build, check against what is deployed (the gate), record,
    /// switch at message boundaries. Runs in flight finish on their own
    /// deployment.
    Deploy {
        /// The app directory (default: --app, or here).
        #[arg(value_name = "APP")]
        dir: Option<PathBuf>,
        /// Return to deployment N instead (through the same gate).
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Deploy even if a changed contract is not passive (recorded).
        #[arg(long)]
        allow_breaking: bool,
        /// Say what would happen; record and switch nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The app's deployments, on its running host.
    Deployments {
        #[command(subcommand)]
        command: DeploymentsCmd,
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
        /// Start at most one run per key: the same key for the same flow
        /// within 24 hours prints the run it started (safe to retry).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Find runs (newest first; --flow, --status, --since, --until,
    /// --key), count them, cancel one, redrive one.
    Runs(cli::runs::RunsArgs),
    /// The app's schedules (`[schedules.NAME]`): list them with their next
    /// ticks, pause, resume, trigger one now.
    #[command(subcommand)]
    Schedules(cli::schedules::SchedulesCmd),
    /// The aggregated status of a run.
    Status {
        /// The run id (what `start` printed).
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
        /// The id of the cascade's first event (what `publish` printed),
        /// or a run id.
        correlation_id: String,
        /// The app directory.
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Read and mend steps' buckets (step state): list a bucket's keys,
    /// get, put or delete an entry. Writes apply at once, beside a running
    /// host.
    Kv {
        #[command(subcommand)]
        command: KvCmd,
    },
    /// Check an app before running it: contracts, the wiring between steps
    /// (every produced type must be one its consumers accept), flows.
    Check {
        /// The app directory.
        app: PathBuf,
        /// Check the embedded broker's store instead: every page, row and
        /// index (SQLite's integrity_check), beside a running host or not.
        #[arg(long, conflicts_with = "against")]
        store: bool,
        /// Also check that every changed contract is passive against
        /// deployment N of the running host, or against the app in DIR (a
        /// checkout of what is deployed), under the app's [deploy] modes:
        /// the gate a deploy would meet.
        #[arg(long, value_name = "N|DIR")]
        against: Option<String>,
        /// The running host's API, for --against N.
        #[arg(long, env = "TROUPE_API")]
        api: Option<String>,
    },
    /// Back up the embedded broker's store to a new file, while the host
    /// runs (one consistent snapshot, checked).
    Backup {
        /// The app directory.
        app: PathBuf,
        /// The file to write (must not exist).
        dest: PathBuf,
    },
    /// Who consumes and produces what (and the flows), as a diagram.
    Graph {
        /// The app directory.
        app: PathBuf,
        /// mermaid or dot (Graphviz).
        #[arg(long, default_value = "mermaid")]
        format: String,
    },
    /// The app's events as an AsyncAPI 3.0 document (JSON), from the
    /// contracts its steps declare.
    Docs {
        /// The app directory.
        app: PathBuf,
        /// Write the document here instead of to standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
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
pub(crate) struct ApiArgs {
    /// The host's API, e.g. http://127.0.0.1:7373 (default: found from --app).
    #[arg(long, env = "TROUPE_API")]
    api: Option<String>,
    /// The app directory whose running host to use.
    #[arg(long, default_value = ".")]
    app: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum DlqCmd {
    /// List dead letters, oldest first; with filters, those they pick.
    List {
        #[command(flatten)]
        filters: cli::dlq::Filters,
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
    /// Deliver dead letters to their steps again (with a fresh retry
    /// budget): one by id (from the app directory), or every one the
    /// filters pick (through the running host, a batch at a time:
    /// resumable; --dry-run says how many today's consumers would refuse,
    /// and why).
    Replay {
        /// The dead letter (without it: the filters, or --all).
        id: Option<String>,
        #[command(flatten)]
        filters: cli::dlq::Filters,
        #[command(flatten)]
        bulk: cli::dlq::BulkArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove the dead letters the filters pick (or --all) without
    /// delivering them, through the running host.
    Purge {
        #[command(flatten)]
        filters: cli::dlq::Filters,
        #[command(flatten)]
        bulk: cli::dlq::BulkArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum DeploymentsCmd {
    /// Every deployment, oldest first, and which this host serves.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One deployment: each step's component digest and contract version,
    /// each flow's digest, where it came from.
    Show {
        /// The deployment's number.
        n: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum KvCmd {
    /// A bucket's keys, sorted.
    List {
        bucket: String,
        /// The app directory.
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// An entry's value (as it is, on standard output; with --json, with
    /// its version).
    Get {
        bucket: String,
        key: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Set an entry (the value as given, UTF-8).
    Put {
        bucket: String,
        key: String,
        value: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
    /// Delete an entry.
    Delete {
        bucket: String,
        key: String,
        #[arg(long, default_value = ".")]
        app: PathBuf,
    },
}

fn main() {
    // Output into a closed pipe (`troupe --json check APP | head`) ends the
    // process quietly, as it does any Unix tool, not with a panic: Rust
    // ignores SIGPIPE by default, which turns it into a failed `println!`.
    // SAFETY: restoring a signal's default disposition, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let broker_given =
        matches.value_source("broker") == Some(clap::parser::ValueSource::CommandLine);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TROUPE_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_target(false)
        .init();
    let uses_broker = matches!(
        cli.command,
        Cmd::Run { .. }
            | Cmd::Publish { .. }
            | Cmd::Dlq { .. }
            | Cmd::Trace { .. }
            | Cmd::Kv { .. }
            | Cmd::Docs { .. }
    );
    if broker_given && !uses_broker {
        let name = matches.subcommand_name().unwrap_or("this command");
        eprintln!(
            "error: --broker does nothing for `troupe {name}`; it applies to run, publish, dlq, trace, kv and docs"
        );
        std::process::exit(2);
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Colour in the log only on a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>): a log file gets plain text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The `--broker` given on the command line, applied to every app loaded.
static BROKER: std::sync::OnceLock<BrokerUrl> = std::sync::OnceLock::new();

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    if let Some(b) = &cli.broker {
        let url: BrokerUrl = b
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--broker: {e}"))?;
        BROKER.set(url).expect("set once");
    }
    match cli.command {
        Cmd::Run {
            app,
            until_idle,
            listen,
            watch,
            allow_breaking,
        } => {
            let listen = listen.or_else(|| (!until_idle).then(|| "127.0.0.1:7373".to_string()));
            let opts = host_run::RunOptions {
                until_idle,
                listen,
                watch,
                allow_breaking,
            };
            tokio_main(host_run::run_app(&app, opts, json))
        }
        Cmd::Deploy {
            dir,
            to,
            allow_breaking,
            dry_run,
            mut api,
        } => {
            if let Some(d) = dir {
                api.app = d;
            }
            deploys::deploy(&api, to, allow_breaking, dry_run, json)
        }
        Cmd::Deployments { command } => match command {
            DeploymentsCmd::List { api } => deploys::list(&api, json),
            DeploymentsCmd::Show { n, api } => deploys::show(&api, n, json),
        },
        Cmd::Start {
            flow,
            input,
            wait,
            idempotency_key,
            api,
        } => flows::start(&flow, &input, idempotency_key.as_deref(), wait, &api, json),
        Cmd::Status { run, watch, api } => flows::status(&run, watch, &api, json),
        Cmd::Runs(args) => cli::runs::runs(args, json),
        Cmd::Schedules(cmd) => cli::schedules::schedules(cmd, json),
        Cmd::Publish {
            app,
            kind,
            data,
            subject,
            file,
            no_check,
        } => events::publish(&app, kind, data, subject, file, no_check, json),
        Cmd::Dlq { command } => events::dlq(command, json),
        Cmd::Trace {
            correlation_id,
            app,
        } => events::trace(&app, &correlation_id, json),
        Cmd::Kv { command } => state::kv(command, json),
        Cmd::Build { dirs } => plugins::build(dirs, json),
        Cmd::Check {
            app, store: true, ..
        } => store::check_store(&app, json),
        Cmd::Check {
            app, against, api, ..
        } => {
            let against = against.map(|what| deploys::Against {
                what,
                api: ApiArgs {
                    api,
                    app: app.clone(),
                },
            });
            plugins::check(&app, json, against)
        }
        Cmd::Backup { app, dest } => store::backup(&app, &dest, json),
        Cmd::Graph { app, format } => plugins::graph(&app, &format),
        Cmd::Docs { app, output } => plugins::docs(&app, output.as_deref()),
        Cmd::New { name, lang, dir } => plugins::new_plugin(&name, &lang, &dir, json),
        Cmd::Conformance { component } => plugins::conformance(&component, json),
    }
}

fn tokio_main(f: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Contract checks run on its blocking pool (the API's door).
        .thread_stack_size(troupe::contract::CHECK_STACK)
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}
pub(crate) fn load_app(dir: &Path) -> Result<App> {
    let mut app =
        App::load(dir).with_context(|| format!("cannot load the app in {}", dir.display()))?;
    if let Some(b) = BROKER.get() {
        app.broker = b.clone();
    }
    Ok(app)
}
