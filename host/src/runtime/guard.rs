//! Time limits that hold however a guest spends its time.
//!
//! A guest can use up its time in two ways: running wasm (a loop), or
//! waiting in a host call (a WASI clock subscription and `poll`, a blocking
//! read, an HTTP response). Epoch interruption stops the first only, so
//! guests are called asynchronously (wasmtime's `async` support: the guest
//! runs on a fiber, on the caller's thread) and every call is a future
//! driven here under its deadline:
//!
//! - **running wasm**: the epoch ticks once a millisecond; a store's epoch
//!   callback looks at the wall clock every [`CHECK_EVERY`] and interrupts
//!   the guest once the deadline has passed (or the host is stopping);
//! - **waiting in a host call**: the call's future is raced against the
//!   deadline's timer; when the timer wins the future is dropped, which
//!   unwinds the guest's fiber and ends the call.
//!
//! Either way the call ends within the deadline plus the slack of one
//! scheduling round ([`SLACK`] is what the docs promise), and the caller
//! learns which ([`Cut`]). When the host stops, [`Guard::stop`] cuts every
//! call at once, so shutdown never waits on a guest.
//!
//! The futures are driven by [`Guard::block_on`] on the calling thread (a
//! step's worker), with a small runtime of this module's own for timers
//! and WASI's I/O: **a guest never runs on the host's async runtime**.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtime::Engine;

/// How often the epoch ticks: one tick per millisecond of wall-clock time.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// How often a running guest's deadline is compared with the clock.
pub const CHECK_EVERY: Duration = Duration::from_millis(10);
/// What a call may overrun its deadline by, on an unloaded machine: one
/// check of a running guest, or the wake-up of a waiting one.
pub const SLACK: Duration = Duration::from_millis(20);

/// Why a guest call was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// It ran, or waited, past its deadline.
    Deadline,
    /// The host is stopping.
    Stopping,
}

/// The engine's epoch ticker, the timers calls wait on, and the stop
/// signal. One per [`super::Runtime`], shared by its sandboxes.
pub struct Guard {
    exec: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    stopping: Arc<AtomicBool>,
    ticking: Arc<AtomicBool>,
}

impl Guard {
    /// Start the ticker thread for `engine` and the runtime calls are
    /// driven on.
    pub fn new(engine: &Engine) -> std::io::Result<Guard> {
        let exec = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("troupe-wasi")
            .enable_all()
            .build()?;
        let ticking = Arc::new(AtomicBool::new(true));
        let (e, t) = (engine.clone(), ticking.clone());
        std::thread::Builder::new()
            .name("troupe-epoch".into())
            .spawn(move || {
                // Count wall-clock milliseconds, not loop turns: a ticker
                // that the scheduler delays catches up rather than
                // stretching every deadline.
                let started = Instant::now();
                let mut ticks = 0u64;
                while t.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let now = started.elapsed().as_millis() as u64;
                    while ticks < now {
                        e.increment_epoch();
                        ticks += 1;
                    }
                }
            })?;
        Ok(Guard {
            handle: exec.handle().clone(),
            exec: Some(exec),
            stop: watch::channel(false).0,
            stopping: Arc::new(AtomicBool::new(false)),
            ticking,
        })
    }

    /// Cut every guest call, now and from now on: the host is stopping.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The flag a store's epoch check reads.
    pub(crate) fn stopping_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Drive `call` on this thread until it completes, its `deadline`
    /// passes, or the host stops. A call cut short is dropped (a guest in
    /// it is unwound). The call sees this guard's runtime (WASI's timers
    /// and blocking I/O go there); it may be made from any thread, even
    /// one inside another runtime (a test's, a benchmark's).
    pub fn block_on<F: Future>(&self, deadline: Instant, call: F) -> Result<F::Output, Cut> {
        if self.is_stopping() {
            return Err(Cut::Stopping);
        }
        let _cx = self.handle.enter();
        let mut call = std::pin::pin!(call);
        // Most calls never wait: they finish in their first poll, with no
        // timer set (a timer costs a lock on the timer driver, even unset).
        if let Some(out) = park::poll_once(call.as_mut()) {
            return Ok(out);
        }
        // It waits (in a host call): race it against the deadline and the
        // stop signal.
        let mut stop = self.stop.subscribe();
        park::block_on(async move {
            tokio::select! {
                biased;
                out = call => Ok(out),
                _ = tokio::time::sleep_until(deadline.into()) => Err(Cut::Deadline),
                _ = stop.wait_for(|s| *s) => Err(Cut::Stopping),
            }
        })
    }
}

/// The simplest executor: poll on this thread, park it until woken.
mod park {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread::Thread;

    struct Unpark(Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }

    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    }

    /// Poll `f` once, with this thread's waker (which [`block_on`] parks
    /// on, so the two may be used one after the other on one future).
    pub(super) fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        WAKER.with(|waker| match f.poll(&mut Context::from_waker(waker)) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    }

    pub(super) fn block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        WAKER.with(|waker| {
            let mut cx = Context::from_waker(waker);
            loop {
                if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                    return v;
                }
                std::thread::park();
            }
        })
    }
}

/// Epoch ticks from `now` to `deadline`, between 1 and `most`: when a
/// running guest's next check is due.
pub(crate) fn ticks_until(deadline: Instant, now: Instant, most: u64) -> u64 {
    let left = deadline.saturating_duration_since(now).as_millis() as u64;
    left.clamp(1, most)
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
        self.stop();
        // Dropping a runtime may happen on an async thread: don't block.
        if let Some(exec) = self.exec.take() {
            exec.shutdown_background();
        }
    }
}
