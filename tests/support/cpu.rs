//! Where the CPU goes during a benchmark: this process's threads, by the
//! part of Troupe they belong to (from their names), a nats-server on this
//! machine, and the machine's idle and stolen time (a VM's hypervisor can
//! take 10-15% of the cores, which no thread's account shows), read from
//! `/proc` before and after the measured phase.
//!
//! On a machine with two cores, throughput is bounded by the CPU each item
//! costs in all of these together; the split says which part to blame.
//! Linux only: elsewhere the accounting is empty and not printed.

use std::collections::BTreeMap;
use std::time::Duration;

/// `/proc` reports CPU time in clock ticks of 1/100 s (`USER_HZ`, fixed
/// at 100 for the `/proc` interface on Linux).
const TICK: Duration = Duration::from_millis(10);

/// The classes of threads, by name prefix (Linux cuts names at 15 bytes).
const CLASSES: [(&str, &str); 7] = [
    ("step-", "guests"),
    ("troupe-broker", "broker writer"),
    ("troupe-checkpoi", "WAL checkpoint"),
    ("troupe-sync", "WAL sync"),
    ("tokio-rt-worker", "async runtime"),
    ("troupe-epoch", "epoch ticker"),
    ("OpenTelemetry.T", "span export"),
];

/// CPU time used so far, by class, and by a local nats-server.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    classes: BTreeMap<&'static str, Duration>,
    server: Option<Duration>,
    machine: Option<Machine>,
}

/// The machine's CPU time so far, in ticks of all cores (`/proc/stat`).
#[derive(Debug, Clone, Copy, Default)]
struct Machine {
    total: u64,
    idle: u64,
    steal: u64,
}

impl Machine {
    fn take() -> Option<Machine> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let line = s.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user).
        let t: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        (t.len() == 8).then(|| Machine {
            total: t.iter().sum(),
            idle: t[3] + t[4],
            steal: t[7],
        })
    }
}

/// CPU time of one `/proc/.../stat` file (user + system); its name.
fn stat(path: &str) -> Option<(String, Duration)> {
    let s = std::fs::read_to_string(path).ok()?;
    // The name is in parentheses and may hold spaces: split after it.
    let (head, rest) = s.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, TICK * ticks as u32))
}

fn class(thread: &str) -> &'static str {
    CLASSES
        .iter()
        .find(|(prefix, _)| thread.starts_with(prefix))
        .map_or("other", |(_, c)| c)
}

/// The pid of a nats-server running on this machine, if any.
fn nats_server_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().into_string().ok()?;
        pid.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "nats-server").then_some(pid)
    })
}

impl Snapshot {
    /// Now.
    pub fn take() -> Snapshot {
        let mut classes = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for t in tasks.flatten() {
                let path = format!("{}/stat", t.path().display());
                if let Some((name, cpu)) = stat(&path) {
                    *classes.entry(class(&name)).or_default() += cpu;
                }
            }
        }
        let server =
            nats_server_pid().and_then(|pid| stat(&format!("/proc/{pid}/stat")).map(|s| s.1));
        Snapshot {
            classes,
            server,
            machine: Machine::take(),
        }
    }

    /// What was used between `before` and now, per item for `n` items.
    pub fn since(before: &Snapshot, n: usize) -> PerItem {
        let now = Snapshot::take();
        let per =
            |after: Duration, before: Duration| after.saturating_sub(before) / n.max(1) as u32;
        PerItem {
            classes: now
                .classes
                .iter()
                .map(|(c, t)| {
                    (
                        *c,
                        per(*t, before.classes.get(c).copied().unwrap_or_default()),
                    )
                })
                .filter(|(_, t)| t.as_micros() > 0)
                .collect(),
            server: match (now.server, before.server) {
                (Some(a), Some(b)) => Some(per(a, b)),
                _ => None,
            },
            machine: match (now.machine, before.machine) {
                (Some(a), Some(b)) if a.total > b.total => {
                    let share =
                        |x: u64, y: u64| x.saturating_sub(y) as f64 / (a.total - b.total) as f64;
                    Some((share(a.idle, b.idle), share(a.steal, b.steal)))
                }
                _ => None,
            },
        }
    }
}

/// CPU time per item, by class (threads that ended meanwhile are not
/// counted: the measured phases start none).
#[derive(Debug, Clone, Default)]
pub struct PerItem {
    pub classes: BTreeMap<&'static str, Duration>,
    /// A nats-server on this machine, if one was found.
    pub server: Option<Duration>,
    /// Shares of all cores' time that were idle (with I/O wait) and
    /// stolen by the hypervisor during the phase.
    pub machine: Option<(f64, f64)>,
}

impl PerItem {
    /// This process, all classes.
    pub fn process(&self) -> Duration {
        self.classes.values().sum()
    }
}

impl std::fmt::Display for PerItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: &Duration| d.as_micros();
        write!(f, "CPU per item {} µs:", us(&self.process()))?;
        for (c, t) in &self.classes {
            write!(f, " {c} {}", us(t))?;
        }
        if let Some(s) = self.server.filter(|s| s.as_micros() > 0) {
            write!(f, "; nats-server {} µs", us(&s))?;
        }
        if let Some((idle, steal)) = self.machine {
            write!(
                f,
                "; cores idle {:.0}%, stolen {:.0}%",
                idle * 100.0,
                steal * 100.0
            )?;
        }
        Ok(())
    }
}
