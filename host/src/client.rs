//! A client of a running host's HTTP API, for the CLI (`troupe start`,
//! `troupe status`, `troupe publish --api`) and for tests.
//!
//! Where the host is and how to get in: `--api URL` (or `TROUPE_API`) and
//! `TROUPE_API_TOKEN`; failing those, the files `troupe run` leaves in the
//! app's state folder (`.troupe/api.json`, `.troupe/api-token`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// A connection to one host's API.
#[derive(Debug, Clone)]
pub struct Client {
    pub base: String,
    token: String,
    agent: ureq::Agent,
}

/// What the API answered, or why it could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the host at {0}: {1} (is `troupe run` serving there?)")]
    Unreachable(String, String),
    #[error("the host answered {status}: {message}")]
    Status {
        status: u16,
        message: String,
        /// `Retry-After`, in seconds: the host asks to be tried again.
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    Setup(String),
}

/// The API token of an app: `TROUPE_API_TOKEN`, else `.troupe/api-token`
/// (created, readable by the owner only, when `create` is set).
pub fn token_for(state_dir: &Path, create: bool) -> Result<String, ClientError> {
    if let Ok(t) = std::env::var("TROUPE_API_TOKEN")
        && !t.is_empty()
    {
        return Ok(t);
    }
    let path = state_dir.join("api-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_string());
    }
    if !create {
        return Err(ClientError::Setup(format!(
            "no API token: set TROUPE_API_TOKEN, or run the host once so it writes {}",
            path.display()
        )));
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::create_dir_all(state_dir).map_err(|e| ClientError::Setup(e.to_string()))?;
    std::fs::write(&path, &token)
        .map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(token)
}

/// How long a deploy may take (building changed plugins included).
pub const DEPLOY_PATIENCE: Duration = Duration::from_secs(30 * 60);

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            agent,
        }
    }

    /// The client for the host serving the app in `app_dir` (or at `api`).
    pub fn for_app(app_dir: &Path, api: Option<&str>) -> Result<Client, ClientError> {
        let state = app_dir.join(crate::app::STATE_DIR);
        let base = match api
            .map(str::to_string)
            .or_else(|| std::env::var("TROUPE_API").ok())
        {
            Some(b) => b,
            None => {
                let f = state.join("api.json");
                let text = std::fs::read_to_string(&f).map_err(|_| {
                    ClientError::Setup(format!(
                        "no host found for {}: start one with `troupe run {}`, or pass --api URL",
                        app_dir.display(),
                        app_dir.display()
                    ))
                })?;
                let v: Value =
                    serde_json::from_str(&text).map_err(|e| ClientError::Setup(e.to_string()))?;
                v["url"].as_str().unwrap_or_default().to_string()
            }
        };
        Ok(Client::new(&base, &token_for(&state, false)?))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        self.call_with(method, path, body, None)
    }

    /// [`Self::call`], with an `Idempotency-Key` on a POST with a body.
    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<(u16, Value), ClientError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let res = match (method, body) {
            ("POST", Some(b)) => {
                let req = self.agent.post(&url).header("Authorization", &auth);
                match key {
                    Some(k) => req.header("Idempotency-Key", k).send_json(b),
                    None => req.send_json(b),
                }
            }
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut res =
            res.map_err(|e| ClientError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            return Err(ClientError::Status {
                status,
                message,
                retry_after,
            });
        }
        Ok((status, v))
    }

    /// Start a run; its id.
    pub fn start(&self, flow: &str, input: &Value) -> Result<String, ClientError> {
        self.start_keyed(flow, input, None)
    }

    /// Start a run with an `Idempotency-Key`: the same key for the same
    /// flow within 24 hours returns the run it started. Its id.
    pub fn start_keyed(
        &self,
        flow: &str,
        input: &Value,
        key: Option<&str>,
    ) -> Result<String, ClientError> {
        let path = format!("/v1/flows/{flow}/runs");
        let (_, v) = self.call_with("POST", &path, Some(input), key)?;
        Ok(v["run_id"].as_str().unwrap_or_default().to_string())
    }

    /// Start a run, trying again for up to `patience` while the host asks
    /// for it (`503` with `Retry-After`: it drives its most runs at once);
    /// `on_wait` is told each time, with the host's reason.
    pub fn start_patiently(
        &self,
        flow: &str,
        input: &Value,
        key: Option<&str>,
        patience: Duration,
        mut on_wait: impl FnMut(&str, Duration),
    ) -> Result<String, ClientError> {
        let until = std::time::Instant::now() + patience;
        loop {
            match self.start_keyed(flow, input, key) {
                Err(ClientError::Status {
                    status: 503,
                    message,
                    retry_after: Some(secs),
                }) if std::time::Instant::now() < until => {
                    let wait = Duration::from_secs(secs.clamp(1, 30))
                        .min(until.saturating_duration_since(std::time::Instant::now()));
                    on_wait(&message, wait);
                    std::thread::sleep(wait);
                }
                other => return other,
            }
        }
    }

    /// A run's status.
    pub fn status(&self, run: &str) -> Result<Value, ClientError> {
        Ok(self.call("GET", &format!("/v1/runs/{run}"), None)?.1)
    }

    /// Poll a run until it reaches a final state (or `timeout` passes).
    pub fn wait(
        &self,
        run: &str,
        timeout: Duration,
        mut on_change: impl FnMut(&Value),
    ) -> Result<Value, ClientError> {
        let start = std::time::Instant::now();
        let mut last = Value::Null;
        loop {
            let v = self.status(run)?;
            if v != last {
                on_change(&v);
                last = v.clone();
            }
            let state = v["state"].as_str().unwrap_or("");
            if !matches!(state, "running" | "compensating") || start.elapsed() > timeout {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publish a CloudEvents JSON document; its id.
    pub fn publish(&self, event: &Value) -> Result<String, ClientError> {
        let (_, v) = self.call("POST", "/v1/events", Some(event))?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    /// Any GET, for the other endpoints.
    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        Ok(self.call("GET", path, None)?.1)
    }

    /// Any POST with a JSON body.
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<(u16, Value), ClientError> {
        self.call("POST", path, body)
    }

    /// A deploy (`POST /v1/deployments`): it may build plugins first, so it
    /// waits up to [`DEPLOY_PATIENCE`].
    pub fn deploy(&self, body: &Value) -> Result<(u16, Value), ClientError> {
        let slow = Client {
            base: self.base.clone(),
            token: self.token.clone(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(DEPLOY_PATIENCE))
                .http_status_as_error(false)
                .build()
                .into(),
        };
        slow.call("POST", "/v1/deployments", Some(body))
    }
}
