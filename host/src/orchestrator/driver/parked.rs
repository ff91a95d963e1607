//! Parked runs, as the driver carries them: read back from the store (a
//! few at a time) when their read-back timer fires or a cancel or a signal
//! comes for one, the control events held until then. The decisions are
//! the machine's (`machine/park.rs`).

use super::{Action, Delivery, Driver, RunRecord, Settled, key, now_ms};

/// How many parked runs are read back from the store at once.
pub(super) const READ_BACKS: usize = 32;
/// The wait before a read-back the store failed is tried again.
const READ_BACK_RETRY_MS: u64 = 1_000;

impl Driver {
    /// Read parked run `run` back from the store (once, however many ask),
    /// and then hand it `waiting`, a control event for it, if any.
    pub(super) fn read_back(&mut self, run: String, waiting: Option<Delivery>) {
        if let Some(d) = waiting {
            self.held.entry(run.clone()).or_default().push(d);
        }
        if !self.reading.insert(run.clone()) {
            return;
        }
        let (broker, tell) = (self.broker.clone(), self.settled.clone());
        let permits = self.read_backs.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let record = match broker.state_get(&key(&run)).await {
                // Unreadable is not a store that failed: trying again
                // would not help (it is logged and the run let go of).
                Ok(Some(v)) => Ok(serde_json::from_slice::<RunRecord>(&v)
                    .inspect_err(
                        |e| tracing::error!(run = %run, "a parked run's record is unreadable: {e}"),
                    )
                    .ok()
                    .map(Box::new)),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            let _ = tell.send(Settled::ReadBack { run, record });
        });
    }

    /// A parked run read back: held again, its timers armed, and the
    /// control events that waited for it handled.
    pub(super) fn on_read_back(
        &mut self,
        run: String,
        record: Result<Option<Box<RunRecord>>, String>,
    ) {
        self.reading.remove(&run);
        match record {
            Ok(Some(r)) if !r.state.is_final() => {
                if let Some(t) = self.machine.unpark(*r) {
                    for a in t.actions {
                        if let Action::Arm { at, sid } = a {
                            let machine = &self.machine;
                            self.timers
                                .arm(at, &run, &sid, |at, run, sid| machine.live(at, run, sid));
                        }
                    }
                }
            }
            Ok(r) => {
                tracing::error!(
                    run = %run,
                    found = ?r.map(|r| r.state),
                    "a parked run is not active in the store (or unreadable): it is not waited for"
                );
                self.machine.forget_parked(&run);
            }
            Err(e) => {
                tracing::warn!(run = %run, "cannot read a parked run back (tried again shortly): {e}");
                if let Some(at) = self
                    .machine
                    .defer_read_back(&run, now_ms() + READ_BACK_RETRY_MS)
                {
                    let machine = &self.machine;
                    self.timers
                        .arm(at, &run, "", |at, run, sid| machine.live(at, run, sid));
                }
                // The events held wait for the next read-back.
                return;
            }
        }
        for d in self.held.remove(&run).unwrap_or_default() {
            self.on_delivery(d);
        }
    }
}
