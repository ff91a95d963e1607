//! The `troupe` binary as a process of its own: a host started with
//! `troupe run`, watched from outside (its HTTP API, its log, its resident
//! memory from `/proc`), and stopped with a signal. For tests that must
//! measure the host alone, or that must survive a host that hangs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use troupe::client::Client;

use crate::{TestApp, troupe_bin};

/// A `troupe run` process serving its API on a free port.
pub struct HostProcess {
    child: Option<Child>,
    pub client: Client,
    /// Where its standard error (the log) goes.
    pub log: PathBuf,
    /// Where its standard output goes.
    pub out: PathBuf,
}

/// `--broker` for `app`.
pub fn broker_arg(app: &TestApp) -> String {
    app.broker().to_string()
}

impl HostProcess {
    /// Start `troupe run` on `app` with `env` added to its environment, and
    /// wait (up to `within`) until its API answers.
    pub fn start(app: &TestApp, env: &[(&str, &str)], within: Duration) -> HostProcess {
        Self::start_with(app, &[], env, within)
    }

    /// [`Self::start`], with `args` after `troupe run APP` (`--watch`).
    pub fn start_with(
        app: &TestApp,
        args: &[&str],
        env: &[(&str, &str)],
        within: Duration,
    ) -> HostProcess {
        let state = app.path().join(troupe::app::STATE_DIR);
        let _ = std::fs::remove_file(state.join("api.json"));
        let log = app.path().join("host.log");
        let out = app.path().join("host.out");
        let child = Command::new(troupe_bin())
            .args(["--broker", &broker_arg(app), "run"])
            .arg(app.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("TROUPE_API_TOKEN")
            .stdout(std::fs::File::create(&out).expect("host.out"))
            .stderr(std::fs::File::create(&log).expect("host.log"))
            .spawn()
            .expect("troupe runs");
        let mut host = HostProcess {
            child: Some(child),
            client: Client::new("http://unset", ""),
            log,
            out,
        };
        let start = Instant::now();
        loop {
            if let Ok(c) = Client::for_app(app.path(), None)
                && c.get("/healthz").is_ok()
            {
                host.client = c;
                return host;
            }
            if let Some(status) = host.child().try_wait().expect("wait") {
                panic!("the host exited with {status}:\n{}", host.log_text());
            }
            assert!(
                start.elapsed() < within,
                "the host did not serve within {within:?}:\n{}",
                host.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its log so far (lossy UTF-8).
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Its log so far, as bytes.
    pub fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.log).unwrap_or_default()
    }

    /// The dead letters it lists (none if it cannot be asked).
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        self.client
            .get("/v1/dlq")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Send it signal `sig` (`HUP`, `TERM`, ...).
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }

    /// A field of `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field).unwrap_or(0)
    }

    /// Send SIGTERM and wait up to `within` for the process to exit; its
    /// status and how long it took, or `None` (then it is killed).
    pub fn terminate(&mut self, within: Duration) -> Option<(ExitStatus, Duration)> {
        let pid = self.pid();
        signal(pid, "TERM");
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(s) = self.child().try_wait().expect("wait") {
                self.child = None;
                return Some((s, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A `kB` field of `/proc/PID/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run `troupe ARGS` in `dir`, killing it if it has not finished within
/// `within`: its output, or `None` if it had to be killed.
pub fn troupe_within(
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
    within: Duration,
) -> Option<Output> {
    let mut child = Command::new(troupe_bin())
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("TROUPE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("troupe runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Some(child.wait_with_output().expect("output"));
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `troupe check APP`: whether it passed, and what it said (stdout, then
/// stderr).
pub fn troupe_check(app: &Path) -> (bool, String) {
    let out = troupe_within(
        &["check", app.to_str().expect("a UTF-8 path")],
        app,
        &[],
        Duration::from_secs(120),
    )
    .expect("troupe check ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}
