//! Shared helpers for Troupe's integration tests.
//!
//! Everything here is real: guests are compiled from source (the fixtures
//! in `tests/guests/`, the example plugins in `plugins/`) with cargo for
//! `wasm32-wasip2`, apps are directories with a `troupe.toml` in a fresh
//! temporary folder, and the broker is the real embedded one on disk.

/// The allocator the `troupe` binary uses (see `host/src/main.rs`), so
/// tests and benchmarks run what users run.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use troupe::app::App;
use troupe::broker::BrokerUrl;
use troupe::event::Event;
use troupe::host::Host;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo, as this test's `cargo test` runs it, without the variables it
/// set for the test binary: a dependency's build script that watches one
/// (ring watches `CARGO_MANIFEST_DIR`) would find it changed, and the
/// build would redo that dependency and all that depends on it (minutes,
/// where an up-to-date build takes a second).
fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let prefixes = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ];
        // RUSTC_BOOTSTRAP (for `-Z unstable-options --report-time`) would make
        // cargo build everything again.
        let named = [
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
            "RUSTC_BOOTSTRAP",
        ];
        if prefixes.iter().any(|p| k.starts_with(p)) || named.contains(&&*k) {
            cargo.env_remove(&*k);
        }
    }
    cargo
}

fn cargo_wasm(workspace: &Path) {
    let status = cargo()
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(workspace)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the guests in {} failed",
        workspace.display()
    );
}

fn wasm_dir(workspace: &str, built: &'static OnceLock<PathBuf>) -> &'static Path {
    built.get_or_init(|| {
        let ws = repo().join(workspace);
        cargo_wasm(&ws);
        ws.join("target/wasm32-wasip2/release")
    })
}

/// The component of test fixture `name` (a crate in `tests/guests/`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let p = wasm_dir("tests/guests", &BUILT).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "no fixture component {}", p.display());
    p
}

/// A copy of the `puppet` fixture that declares `contract`
/// (`{"consumes": [{"kind", "version", "schema"}], "produces": [...]}`,
/// each schema the text `describe` returns), written over the blank it
/// holds; a file of its own in the system's temp folder, named by what it
/// declares.
pub fn puppet(contract: &serde_json::Value) -> PathBuf {
    const MARKER: &[u8] = b"TROUPE-PUPPET-CONTRACT:";
    const BLANK: usize = 1 << 20;
    let text = serde_json::to_vec(contract).expect("JSON");
    assert!(
        text.len() <= BLANK - MARKER.len(),
        "the contract fits the blank"
    );
    let mut wasm = std::fs::read(guest("puppet")).expect("the puppet fixture");
    let at = wasm
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the puppet's blank")
        + MARKER.len();
    let blank = &mut wasm[at..at + BLANK - MARKER.len()];
    assert!(blank.iter().all(|&b| b == b' '), "one blank, unwritten");
    blank[..text.len()].copy_from_slice(&text);
    let name = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &text);
    let path = std::env::temp_dir().join(format!("troupe-puppet-{}.wasm", name.simple()));
    // Beside it, then renamed: a test reading the same puppet never sees
    // half of one.
    let part = path.with_extension(format!("{}.part", uuid::Uuid::new_v4().simple()));
    std::fs::write(&part, wasm).expect("write the puppet");
    std::fs::rename(&part, &path).expect("rename the puppet");
    path
}

/// A copy of component `path` with a custom section holding `revision`
/// appended: the same code and contract under another digest, as a new
/// build of the same step would be. A file of its own in the system's temp
/// folder.
pub fn revision(path: &Path, revision: u32) -> PathBuf {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut wasm = std::fs::read(path).expect("the component");
    let name = b"troupe-test-revision";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(revision.to_string().as_bytes());
    wasm.push(0); // a custom section
    leb(body.len(), &mut wasm);
    wasm.extend_from_slice(&body);
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &wasm);
    let out = std::env::temp_dir().join(format!("troupe-revision-{}.wasm", digest.simple()));
    let part = out.with_extension(format!("{}.part", uuid::Uuid::new_v4().simple()));
    std::fs::write(&part, wasm).expect("write the revision");
    std::fs::rename(&part, &out).expect("rename the revision");
    out
}

/// Put `from` at `to` whole (a copy beside it, renamed over it), as a
/// deploy tool would.
pub fn replace_file(from: &Path, to: &Path) {
    let part = to.with_extension("part");
    std::fs::copy(from, &part).expect("copy");
    std::fs::rename(&part, to).expect("rename");
}

/// The component of example plugin `name` (a crate in `plugins/`).
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let p = wasm_dir("plugins", &BUILT).join(format!("{}.wasm", name.replace('-', "_")));
    assert!(p.exists(), "no plugin component {}", p.display());
    p
}

/// The `troupe` binary, built in release like the tests.
pub fn troupe_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = cargo()
                // `--workspace`, as `scripts/test` builds: the same
                // features, so a built workspace is fresh and this takes a
                // second (`-p troupe` would build another variant of troupe
                // and of the dependencies whose features differ).
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--workspace",
                    "--bin",
                    "troupe",
                ])
                .current_dir(repo())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building troupe failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| repo().join("target"), PathBuf::from);
            target.join("release/troupe")
        })
        .clone()
}

/// The NATS server the tests use (`TROUPE_TEST_NATS`, else the local one).
pub fn nats_server() -> String {
    std::env::var("TROUPE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// The real NATS server, in a namespace of the test's own.
    Nats,
}

/// Run each named `async fn NAME(b: Backend)` of the calling test file as
/// two tests, `embedded::NAME` and `nats::NAME`.
#[macro_export]
macro_rules! on_each_broker {
    ($($name:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::Backend::Embedded).await
                }
            )+
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$name($crate::Backend::Nats).await
                }
            )+
        }
    };
}

/// The same for plain (blocking) `fn NAME(b: Backend)` tests.
#[macro_export]
macro_rules! on_each_broker_blocking {
    ($($name:ident),+ $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::Embedded)
                }
            )+
        }
        mod nats {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::Nats)
                }
            )+
        }
    };
}

/// An app in a temporary directory, on a broker.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    /// The NATS namespace of this app's test, if on NATS.
    pub namespace: Option<String>,
    /// Whether dropping this app deletes the namespace (the app that made
    /// it does; apps started [`TestApp::beside`] it do not).
    owns_namespace: bool,
    /// The services the app calls out to (the `orders` example's payment
    /// provider), stopped with the app.
    pub payments: Option<payments::PaymentsApi>,
}

impl TestApp {
    /// An app whose `troupe.toml` is `manifest`, on the embedded broker.
    pub fn new(manifest: &str) -> TestApp {
        Self::on(Backend::Embedded, manifest)
    }

    /// An app whose `troupe.toml` is `manifest`, on `backend`.
    pub fn on(backend: Backend, manifest: &str) -> TestApp {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("troupe.toml"), manifest).expect("write troupe.toml");
        let namespace = (backend == Backend::Nats)
            .then(|| format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        TestApp {
            dir,
            namespace,
            owns_namespace: true,
            payments: None,
        }
    }

    /// Another app (another team's) on the same broker as `other`: on NATS,
    /// in the same namespace, so the two exchange events.
    pub fn beside(other: &TestApp, manifest: &str) -> TestApp {
        let mut app = Self::on(Backend::Embedded, manifest);
        app.namespace = other.namespace.clone();
        app.owns_namespace = false;
        app
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The broker URL this app runs on.
    pub fn broker(&self) -> BrokerUrl {
        match &self.namespace {
            None => BrokerUrl::Embedded,
            Some(ns) => format!("{}/{ns}", nats_server())
                .parse()
                .expect("a broker URL"),
        }
    }

    pub fn app(&self) -> App {
        let mut app = App::load(self.path()).expect("the test app loads");
        app.broker = self.broker();
        app
    }

    /// Start the app's host in this process.
    pub async fn start(&self) -> Host {
        Host::start(self.app()).await.expect("the test app starts")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let Some(ns) = self.namespace.take().filter(|_| self.owns_namespace) else {
            return;
        };
        // Drop may run inside a runtime: clean up from a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(e) = rt.block_on(troupe::broker::nats::purge_namespace(&nats_server(), &ns))
            {
                eprintln!("cannot delete NATS namespace {ns}: {e}");
            }
        })
        .join();
    }
}

/// A `[steps.NAME]` table for fixture or plugin `component`, plus `extra`
/// lines.
pub fn step(name: &str, component: &Path, extra: &str) -> String {
    format!(
        "[steps.{name}]\ncomponent = {:?}\n{extra}\n",
        component.display().to_string()
    )
}

/// A new event from outside, with JSON data.
pub fn event(kind: &str, data: serde_json::Value) -> Event {
    Event::new(
        kind,
        "troupe://tests",
        serde_json::to_vec(&data).expect("JSON"),
    )
}

/// The first event of type `kind` in the trace of `e`, waiting up to
/// `timeout`; panics at once, saying why, if anything was dead-lettered.
pub async fn output_of(host: &Host, e: &Event, kind: &str, timeout: Duration) -> Event {
    eventually(timeout, kind, async || {
        if let Some(dead) = host.broker.dlq_list().await.unwrap().pop() {
            panic!("dead-lettered: {}: {}", dead.class, dead.message);
        }
        host.broker
            .trace(&e.id)
            .await
            .unwrap()
            .into_iter()
            .find(|x| x.kind == kind)
    })
    .await
}

/// Poll `check` until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `check` (blocking) until it returns `Some`, or panic after
/// `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A number the SQL query `sql` reads from the embedded store of the app
/// at `app`, opened read-only beside a running host.
pub fn store_number(app: &Path, sql: &str) -> u64 {
    let c = rusqlite::Connection::open_with_flags(
        app.join(".troupe/broker.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the store opens");
    c.busy_timeout(Duration::from_secs(10))
        .expect("a busy timeout");
    c.query_row(sql, [], |r| r.get(0)).expect("the query runs")
}

/// The data of `e` as JSON.
pub fn data(e: &Event) -> serde_json::Value {
    serde_json::from_slice(&e.data).expect("JSON data")
}

/// Where a test that compiles components itself keeps them: the directory
/// the whole suite shares (`TROUPE_CACHE_DIR`, set by `scripts/test`), else
/// one of the test's own.
pub struct CompileCache {
    path: PathBuf,
    /// The test's own directory, removed when dropped.
    _own: Option<tempfile::TempDir>,
}

impl CompileCache {
    pub fn new() -> CompileCache {
        match std::env::var_os(troupe::app::CACHE_DIR_VAR).filter(|d| !d.is_empty()) {
            Some(d) => CompileCache {
                path: PathBuf::from(d),
                _own: None,
            },
            None => {
                let own = tempfile::tempdir().expect("a temp dir");
                CompileCache {
                    path: own.path().to_path_buf(),
                    _own: Some(own),
                }
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for CompileCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Build a plugin directory (any language) with `troupe::builder`; builds
/// are serialised within a test binary (two tests may build one plugin).
pub fn build(dir: &Path) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match troupe::builder::build(dir) {
        Ok(b) => b.component,
        Err(e) => panic!("building {} failed: {e}", dir.display()),
    }
}

/// The example app `name` in a temporary directory: its `troupe.toml` with
/// plugin and secret paths made absolute, so it runs with a state folder of
/// its own. The `orders` example gets its payment provider
/// (`examples/orders/payments-api`) on a free port, its grant pointed there.
pub fn example_app(name: &str) -> TestApp {
    example_app_on(Backend::Embedded, name)
}

/// The same, on `backend`.
pub fn example_app_on(backend: Backend, name: &str) -> TestApp {
    example_app_with(backend, name, "")
}

/// The same, with `extra` (tables) at the end of its `troupe.toml`. The
/// example's `[schedules]` are left out (they name flows the test may not
/// copy, and would start runs on their own): see [`example_app_scheduled`].
pub fn example_app_with(backend: Backend, name: &str, extra: &str) -> TestApp {
    example_app_as(backend, name, extra, false)
}

/// The example app as it is, `[schedules]` and every flow of it included.
pub fn example_app_scheduled(backend: Backend, name: &str, extra: &str) -> TestApp {
    let app = example_app_as(backend, name, extra, true);
    let from = repo().join("examples").join(name).join("flows");
    let flows = app.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    for f in std::fs::read_dir(&from).into_iter().flatten().flatten() {
        std::fs::copy(f.path(), flows.join(f.file_name())).unwrap();
    }
    app
}

/// `manifest` without its `[schedules.NAME]` tables.
pub fn without_schedules(manifest: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in manifest.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            skipping = t.starts_with("[schedules.") || t.starts_with("[schedules]");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn example_app_as(backend: Backend, name: &str, extra: &str, schedules: bool) -> TestApp {
    let dir = repo().join("examples").join(name);
    let manifest =
        std::fs::read_to_string(dir.join("troupe.toml")).expect("the example's troupe.toml");
    let manifest = if schedules {
        manifest
    } else {
        without_schedules(&manifest)
    };
    let manifest = format!("{manifest}\n{extra}");
    let plugins = format!("\"{}/", repo().join("plugins").display());
    let mut manifest = manifest
        .replace("\"../../plugins/", &plugins)
        .replace("file = \"", &format!("file = \"{}/", dir.display()));
    let payments = manifest.contains("127.0.0.1:8471").then(|| {
        let api = payments::PaymentsApi::start();
        manifest = manifest.replace("127.0.0.1:8471", &format!("127.0.0.1:{}", api.port));
        api
    });
    let mut app = TestApp::on(backend, &manifest);
    app.payments = payments;
    build_plugins(&app);
    app
}

/// Build every plugin of `app` now, so that a host started on it (in this
/// process or as a `troupe run` process) only loads them: the first build
/// of the example's plugins on a fresh clone takes minutes, which a test
/// must not count as the host's start.
pub fn build_plugins(app: &TestApp) {
    for step in App::load(app.path()).expect("the app loads").steps.values() {
        if let troupe::app::Source::Plugin(dir) = step.source() {
            build(&dir);
        }
    }
}

/// The orders example (as [`example_app_with`]) with its flows.
pub fn orders_with_flows(extra: &str) -> TestApp {
    let app = example_app_with(Backend::Embedded, "orders", extra);
    let flows = app.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    for f in ["fulfil.toml", "deliver.toml"] {
        let from = repo().join("examples/orders/flows").join(f);
        std::fs::copy(from, flows.join(f)).unwrap();
    }
    app
}

/// A host running in this process with its HTTP API on a free port, and a
/// client for it. For tests that talk HTTP like a producer would.
pub struct ApiHost {
    pub host: Option<Host>,
    pub client: troupe::client::Client,
    /// The API's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    pub token: String,
    runtime: tokio::runtime::Runtime,
}

impl ApiHost {
    pub fn start(app: &TestApp) -> ApiHost {
        Self::try_start(app).expect("the test app starts")
    }

    pub fn try_start(app: &TestApp) -> Result<ApiHost, troupe::host::HostError> {
        Self::try_start_app(app.app())
    }

    /// A host of `app` as loaded and changed by the test (another broker).
    pub fn try_start_app(app: App) -> Result<ApiHost, troupe::host::HostError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let host = runtime.block_on(Host::start(app))?;
        let token = "test-token-0123456789".to_string();
        let state = host.api_state(&token);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        runtime.spawn(async move { axum::serve(listener, troupe::api::router(state)).await });
        Ok(ApiHost {
            host: Some(host),
            client: troupe::client::Client::new(&url, &token),
            url,
            token,
            runtime,
        })
    }

    /// Start a run and wait for it to end; its final status.
    pub fn run(&self, flow: &str, input: serde_json::Value) -> serde_json::Value {
        let id = self.client.start(flow, &input).expect("the run starts");
        self.client
            .wait(&id, Duration::from_secs(30), |_| {})
            .expect("a status")
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A request with the token, whatever its status: (status, JSON body).
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        raw(&self.url, &self.token, method, path, body)
    }
}

/// A request to the API at `base` with `token`, whatever its status:
/// (status, JSON body, or the text as a JSON string).
pub fn raw(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{base}{path}");
    let auth = format!("Bearer {token}");
    let r = match (method, body) {
        ("POST", Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
        ("POST", None) => agent.post(&url).header("Authorization", &auth).send_empty(),
        _ => agent.get(&url).header("Authorization", &auth).call(),
    };
    let mut r = r.expect("the API answers");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

impl Drop for ApiHost {
    fn drop(&mut self) {
        if let Some(h) = self.host.take() {
            self.runtime.block_on(h.shutdown());
        }
    }
}
pub mod bench;
pub mod browser;
pub mod cpu;
pub mod forge;
pub mod nats;
pub mod otlp;
pub mod payments;
pub mod process;
pub mod upstream;

/// The order example's choreographed steps (Rust builds).
pub const ORDER_STEPS: [&str; 4] = [
    "order-validate",
    "inventory-reserve",
    "payment-charge",
    "shipping-dispatch",
];

/// `[steps.NAME]` tables for example plugins `names`, each with `extra`.
pub fn plugin_steps(names: &[&str], extra: &str) -> String {
    names.iter().map(|p| step(p, &plugin(p), extra)).collect()
}

/// The order example's steps and `sink`, which writes each shipped order
/// to the app's `out/` folder as `CORRELATION.EVENT_ID`, one line per time
/// it handled it: the app the crash and scale-out tests count with.
pub fn orders_with_sink() -> String {
    let mut m = String::from("name = \"orders\"\n");
    m += &plugin_steps(&ORDER_STEPS, "");
    m += &step(
        "sink",
        &guest("sink"),
        "grants.dirs = [{ host = \"out\", guest = \"/out\", write = true }]",
    );
    m
}

/// Write `n` `order.placed` events to `APP/orders.jsonl` and publish them
/// with `troupe [GLOBAL...] publish APP --file`; the published ids.
pub fn publish_orders(app: &Path, n: usize, global: &[&str]) -> std::collections::HashSet<String> {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"type": "order.placed", "subject": format!("o-{i}"), "data": {
                "order_id": format!("o-{i}"), "customer": "c",
                "lines": [{"sku": "tea", "qty": 1 + i % 3, "price_cents": 100}]
            }})
            .to_string()
        })
        .collect();
    let ids = publish_lines(app, &lines, global);
    assert_eq!(ids.len(), n, "every order published");
    ids.into_iter().collect()
}

/// Publish `lines` (one event a line, as `troupe publish --file` reads
/// them) to `app` with the CLI; the ids, in order.
pub fn publish_lines(app: &Path, lines: &[String], global: &[&str]) -> Vec<String> {
    let file = app.join("events.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write events.jsonl");
    let published = Command::new(troupe_bin())
        .arg("--json")
        .args(global)
        .arg("publish")
        .arg(app)
        .arg("--file")
        .arg(&file)
        .output()
        .expect("troupe runs");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&published.stdout).expect("JSON")["published"]
        .as_array()
        .expect("a list of ids")
        .iter()
        .map(|v| v.as_str().expect("an id").to_string())
        .collect()
}
