//! Following the app: deployments other hosts record (NATS), and the
//! deployments runs are pinned to (this host's orchestrator, and the
//! state row the driving host writes).

use std::sync::Arc;
use std::time::Duration;

use super::{DeployError, Deployer};
use crate::shutdown::Tasks;

/// How often a host looks for a deployment recorded elsewhere.
pub const POLL: Duration = Duration::from_millis(500);

impl Deployer {
    /// Follow the app until the host stops: switch to each deployment
    /// another host records (or say why not in `/readyz`, taking no work
    /// meanwhile), and keep loaded exactly what runs are pinned to.
    pub fn follow(self: &Arc<Self>, tasks: &mut Tasks) {
        let me = self.clone();
        let mut stop = tasks.shutdown();
        tasks.spawn("deployments", async move {
            let mut pins = me.orchestrator.get().map(|o| o.pins());
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    Some(Ok(())) = async { match pins.as_mut() {
                        Some(p) => Some(p.changed().await),
                        None => None,
                    } } => {
                        let set = pins.as_mut().expect("some").borrow_and_update().clone();
                        me.pins(set, true).await;
                        continue;
                    }
                    _ = stop.recv() => return,
                }
                if let Err(e) = me.poll().await {
                    tracing::warn!("cannot follow the app's deployments: {e}");
                }
            }
        });
    }

    /// One look at the app's state: a newer deployment, the pins row.
    async fn poll(&self) -> Result<(), DeployError> {
        let (current, unready) = {
            let st = self.state.lock().expect("deployer lock");
            (st.current, st.unready.is_some())
        };
        // The newest record past ours (records are numbered 1, 2, ...).
        let mut newest = None;
        let mut n = current + 1;
        while let Some(v) = self.broker.state_get(&crate::deploy::row(n)).await? {
            match serde_json::from_slice::<crate::deploy::Deployment>(&v) {
                Ok(d) => newest = Some(d),
                Err(e) => tracing::error!(deployment = n, "an unreadable deployment record: {e}"),
            }
            n += 1;
        }
        if let Some(d) = newest.filter(|d| d.number > current) {
            let _turn = self.turn.lock().await;
            if d.number > self.current() {
                self.take_up(d).await;
            }
        } else if unready {
            // Try again: its files may have arrived.
            let d = self
                .state
                .lock()
                .expect("deployer lock")
                .ledger
                .current()
                .cloned();
            if let Some(d) = d.filter(|d| d.number > current) {
                let _turn = self.turn.lock().await;
                self.take_up(d).await;
            }
        }
        let pins = self.read_pins_row().await?;
        self.pins(pins, false).await;
        Ok(())
    }

    /// Switch to `d`, recorded by another host; if this host cannot load
    /// it, take no more work until it can.
    async fn take_up(&self, d: crate::deploy::Deployment) {
        let n = d.number;
        self.state
            .lock()
            .expect("deployer lock")
            .ledger
            .recorded(d.clone());
        match self.blocking_load(d.clone()).await {
            Ok(held) => match self.switch(&d, held).await {
                Ok(()) => {
                    self.open(true);
                    tracing::info!(deployment = n, host = %d.origin.host, "took up a deployment recorded by another host");
                }
                Err(e) => tracing::error!(deployment = n, "cannot switch to it: {e}"),
            },
            Err(e) => {
                let why = e.to_string();
                let was = self
                    .state
                    .lock()
                    .expect("deployer lock")
                    .unready
                    .replace(why.clone());
                if was.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        deployment = n,
                        "this host takes no work until it can load the app's current deployment: {why}"
                    );
                }
                self.open(false);
            }
        }
    }

    /// Let every step's workers take work, or stop them taking any.
    pub fn open(&self, open: bool) {
        for w in self.wired.lock().expect("wired lock").wirings.values() {
            w.open(open);
        }
    }

    /// Stop: let every worker reach the closed broker and end; join them
    /// (after the broker closed), and wait for their broker calls.
    pub async fn stop_workers(&self, grace: Duration, runtime: &crate::runtime::Runtime) {
        self.open(true);
        let (workers, wirings) = {
            let mut w = self.wired.lock().expect("wired lock");
            (
                std::mem::take(&mut w.workers),
                w.wirings.values().cloned().collect::<Vec<_>>(),
            )
        };
        let mut joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(grace, &mut joined).await.is_err() {
            tracing::warn!(
                "steps still busy after {grace:?}: cutting them short (their events will be \
                 delivered again)"
            );
            runtime.stop();
            let _ = joined.await;
        }
        for w in &wirings {
            w.drain().await;
        }
    }
}

/// What `troupe run --watch` looks at: every file of the app's folder and
/// of its steps' plugin folders (not `.troupe`, build output or hidden
/// folders), by name, size and time of change. A different value: the
/// files changed.
pub fn fingerprint(app: &crate::app::App) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut roots = vec![app.dir.clone()];
    for cfg in app.steps.values() {
        match cfg.source() {
            crate::app::Source::Plugin(d) => roots.push(d),
            crate::app::Source::Component(p) => roots.push(p),
        }
    }
    for root in roots {
        walk(&root, &mut |p, meta| {
            p.hash(&mut h);
            meta.len().hash(&mut h);
            if let Ok(t) = meta.modified() {
                t.hash(&mut h);
            }
        });
    }
    h.finish()
}

/// Every file under `p` (or `p` itself), skipping what a build writes.
fn walk(p: &std::path::Path, f: &mut dyn FnMut(&std::path::Path, &std::fs::Metadata)) {
    let Ok(meta) = std::fs::metadata(p) else {
        return;
    };
    if meta.is_file() {
        return f(p, &meta);
    }
    let Ok(entries) = std::fs::read_dir(p) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().map(|n| n.to_string_lossy().into_owned());
        let skip = name.as_deref().is_none_or(|n| {
            n.starts_with('.') || matches!(n, "target" | "node_modules" | "__pycache__" | "build")
        });
        if !skip {
            walk(&e, f);
        }
    }
}
