//! `troupe backup`, `troupe check --store`: keeping the embedded broker's
//! store safe (docs/operations.md).

use std::path::Path;

use anyhow::{Context, Result, bail};
use troupe::broker::BrokerUrl;
use troupe::broker::embedded::backup;

fn embedded_state(dir: &Path, what: &str) -> Result<std::path::PathBuf> {
    let app = super::load_app(dir)?;
    if app.broker != BrokerUrl::Embedded {
        bail!(
            "{what} works on the embedded broker's store; on NATS, use the server's own tools \
             (`nats stream backup`, or JetStream replicas): docs/operations.md"
        );
    }
    Ok(app.state_dir())
}

pub(crate) fn backup(dir: &Path, dest: &Path, json: bool) -> Result<()> {
    let state = embedded_state(dir, "`troupe backup`")?;
    eprintln!(
        "backing up {} ...",
        state.join(troupe::broker::embedded::DB_FILE).display()
    );
    let b = backup::backup(&state, dest)
        .with_context(|| format!("cannot back up the store of {}", dir.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"backup": dest, "bytes": b.bytes, "pages": b.pages})
        );
    } else {
        println!(
            "backed up to {} ({:.1} MiB, checked). Restore: stop the host, remove \
             .troupe/broker.db-wal and -shm, copy it to .troupe/broker.db",
            dest.display(),
            b.bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

pub(crate) fn check_store(dir: &Path, json: bool) -> Result<()> {
    let state = embedded_state(dir, "`troupe check --store`")?;
    let bytes = backup::check_store(&state)?;
    if json {
        println!("{}", serde_json::json!({"store": "ok", "bytes": bytes}));
    } else {
        println!(
            "the store is sound ({:.1} MiB; every page, row and index checked)",
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
