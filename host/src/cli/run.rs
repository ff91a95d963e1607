//! `troupe run`: the host, its HTTP API, and the summary it prints.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use troupe::broker::DeadLetter;
use troupe::host::Host;
use troupe::text::escape;

use super::load_app;

pub(crate) async fn run_app(
    dir: &Path,
    until_idle: bool,
    listen: Option<&str>,
    json: bool,
) -> Result<()> {
    let app = load_app(dir)?;
    let mut host = Host::start(app)
        .await
        .with_context(|| format!("cannot start the app in {}", dir.display()))?;
    let state_dir = host.app.state_dir();
    if let Some(listen) = listen {
        serve_api(&mut host, listen).await?;
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
pub(crate) async fn serve_api(host: &mut Host, listen: &str) -> Result<()> {
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
