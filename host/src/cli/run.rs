//! `troupe run`: the host, its HTTP API, and the summary it prints.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use troupe::broker::DeadLetter;
use troupe::host::Host;
use troupe::text::escape;

use super::load_app;

/// How `troupe run` runs.
pub(crate) struct RunOptions {
    pub until_idle: bool,
    pub listen: Option<String>,
    pub watch: bool,
    pub allow_breaking: bool,
}

pub(crate) async fn run_app(dir: &Path, opts: RunOptions, json: bool) -> Result<()> {
    let app = load_app(dir)?;
    let start = troupe::host::Options {
        allow_breaking: opts.allow_breaking,
    };
    let mut host = Host::start_with(app, start)
        .await
        .with_context(|| format!("cannot start the app in {}", dir.display()))?;
    let state_dir = host.app.state_dir();
    if let Some(listen) = &opts.listen {
        serve_api(&mut host, listen).await?;
    }
    redeploy_on_hangup(&mut host)?;
    if opts.watch {
        redeploy_on_change(&mut host);
    }
    if opts.until_idle {
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

/// Deploy `how`, and say in the log what came of it.
async fn redeploy(d: &troupe::deployer::Deployer, how: &str) {
    let r = troupe::deployer::Request {
        how: how.into(),
        ..Default::default()
    };
    match d.deploy(r).await {
        Ok(o) if o.recorded => tracing::info!(
            deployment = o.deployment.number,
            "deployed: {}",
            troupe::deployer::summary(&o.changes)
        ),
        Ok(o) => tracing::info!(
            deployment = o.deployment.number,
            "nothing to deploy: the app's files are the current deployment"
        ),
        Err(e) => tracing::error!("not deployed: {e}"),
    }
}

/// SIGHUP deploys the app's files as they are now.
fn redeploy_on_hangup(host: &mut Host) -> Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let d = host.deployer.clone();
    let mut stop = host.tasks.shutdown();
    host.tasks.spawn("SIGHUP", async move {
        loop {
            tokio::select! {
                Some(()) = hup.recv() => redeploy(&d, "signal").await,
                _ = stop.recv() => return,
            }
        }
    });
    Ok(())
}

/// `--watch`: deploy the app's files whenever they change (and have been
/// still for a moment: an editor's save, a build's output).
fn redeploy_on_change(host: &mut Host) {
    let d = host.deployer.clone();
    let app = host.app.clone();
    let mut stop = host.tasks.shutdown();
    tracing::info!("watching the app's files: a change is deployed");
    host.tasks.spawn("watch", async move {
        let look = {
            let app = app.clone();
            move || {
                let app = app.clone();
                async move {
                    tokio::task::spawn_blocking(move || troupe::deployer::fingerprint(&app))
                        .await
                        .unwrap_or(0)
                }
            }
        };
        let mut seen = look().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.recv() => return,
            }
            let now = look().await;
            if now == seen {
                continue;
            }
            // Still for a moment before it is deployed.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if look().await != now {
                continue;
            }
            redeploy(&d, "watch").await;
            // What the deploy built counts as seen.
            seen = look().await;
        }
    });
}

/// Serve the HTTP API of `host` on `listen`, and say where in
/// `.troupe/api.json` for the CLI.
pub(crate) async fn serve_api(host: &mut Host, listen: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let state_dir = host.app.state_dir();
    let token = troupe::client::token_for(&state_dir, true)?;
    troupe::api::write_discovery(&state_dir, &url).context("cannot write .troupe/api.json")?;
    let router = troupe::api::router(host.api_state(&token));
    tracing::info!(
        "HTTP API on {url} (bearer token: TROUPE_API_TOKEN or {})",
        state_dir.join("api-token").display()
    );
    let mut stop = host.tasks.shutdown();
    host.tasks.spawn("HTTP API", async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(async move {
            stop.recv().await;
        });
        if let Err(e) = served.await {
            tracing::error!("the HTTP API stopped: {e}");
        }
    });
    Ok(())
}

/// Stop the host and print what each step did, and the DLQ.
pub(crate) async fn summary(host: Host, json: bool) -> Result<()> {
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

pub(crate) fn print_dlq(dead: &[DeadLetter]) {
    println!();
    if dead.is_empty() {
        println!("dead-letter queue: empty");
        return;
    }
    println!("dead-letter queue: {} message(s)", dead.len());
    for d in dead {
        println!(
            "  {}  {:<18} {:<10} {}  {}",
            escape(&d.id),
            escape(&d.step),
            d.class,
            escape(&d.event.kind),
            escape(&d.message)
        );
    }
}
