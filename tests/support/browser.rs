//! A real browser for a test: Debian's `chromium`, headless, driven
//! through its `chromedriver` (WebDriver) with `fantoccini`. The browser's
//! console is read back (`goog:loggingPrefs`), so a test can say a page
//! logged no error; screenshots go to `target/ui/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

/// A chromedriver process and a session in it; both end when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    runtime: tokio::runtime::Runtime,
}

/// Where `chromedriver` is (Debian installs it on the PATH).
fn driver_path() -> PathBuf {
    for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "chromedriver is not installed: the test command installs Debian's chromium and \
         chromium-driver (./scripts/toolchains testing)"
    )
}

/// The browser's log since the last read (`/se/log`, chromedriver's).
#[derive(Debug)]
struct ReadLog;

impl WebDriverCompatibleCommand for ReadLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

impl Browser {
    /// Start chromedriver on a free port and open a headless session,
    /// `width` x `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_path())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(format!("{url}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                            "--disable-gpu", format!("--window-size={width},{height}")]}),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = runtime.block_on(async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&url)
                .await
                .expect("a WebDriver session")
        });
        Browser {
            client,
            driver,
            runtime,
        }
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The console's errors since the last call (entries of level
    /// `SEVERE`), each as its message.
    pub fn errors(&self) -> Vec<String> {
        let log = self
            .block_on(self.client.issue_cmd(ReadLog))
            .expect("the browser's log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Save a screenshot as `target/ui/NAME.png`.
    pub fn screenshot(&self, name: &str) {
        let png = self
            .block_on(self.client.screenshot())
            .expect("a screenshot");
        let dir = crate::repo().join("target/ui");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Run `script` in the page; its value.
    pub fn eval(&self, script: &str) -> Value {
        self.block_on(self.client.execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Wait until `script` is true in the page (or panic after `timeout`
    /// with `what`).
    pub fn wait_true(&self, timeout: Duration, what: &str, script: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            // A page still loading may throw: not yet.
            let now = self.block_on(self.client.execute(script, vec![]));
            if matches!(now, Ok(Value::Bool(true))) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval("return document.body.innerText");
                panic!("{what}: not within {timeout:?}; the page says:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
