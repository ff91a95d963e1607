//! Stopping the host: one signal, passed to every task the host starts,
//! and the tasks themselves, awaited (mini-redis's `shutdown.rs`).
//!
//! [`Shutdown`] is the signal's receiving end: a task selects on
//! [`Shutdown::recv`] beside its work and returns when it fires. [`Tasks`]
//! holds the sender and the tasks' handles; [`Tasks::stop`] fires the
//! signal and waits for every task, up to a bound.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The receiving end of the host's stop signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Wait until the host stops (at once if it has). A signal whose
    /// sender is gone counts as fired.
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the host is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

/// The host's tasks, and the signal that stops them.
pub struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            stop: watch::channel(false).0,
            running: Vec::new(),
        }
    }
}

impl Tasks {
    /// A receiver of the stop signal, for a task to select on.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    /// Run `task` (named `what` in logs) until it ends; [`Self::stop`]
    /// waits for it.
    pub fn spawn(&mut self, what: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.running.push((what, tokio::spawn(task)));
    }

    /// Fire the stop signal and wait for every task, for up to `grace`;
    /// those still running then are aborted (and named in the log).
    pub async fn stop(&mut self, grace: Duration) {
        self.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        for (what, task) in self.running.drain(..) {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => tracing::error!("the {what} task panicked: {e}"),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!("the {what} task did not stop within {grace:?}: aborted");
                    abort.abort();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_fires_the_signal_and_waits_for_the_tasks() {
        let mut tasks = Tasks::default();
        let mut s = tasks.shutdown();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        tasks.spawn("test", async move {
            s.recv().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut deaf = tasks.shutdown();
        tasks.spawn("deaf", async move {
            let _ = &mut deaf;
            std::future::pending::<()>().await
        });
        let started = std::time::Instant::now();
        tasks.stop(Duration::from_millis(300)).await;
        assert!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            "waited for it"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        assert!(tasks.shutdown().is_stopping());
    }
}
