//! The order example's payment provider (`examples/orders/payments-api`),
//! run for a test: the real Python service the demo starts, on a free port.
//! [`crate::example_app`] starts one for the `orders` example and points
//! the app's grant at it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running payments-api; stopped when dropped.
pub struct PaymentsApi {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
}

impl PaymentsApi {
    pub fn start() -> PaymentsApi {
        let script = crate::repo().join("examples/orders/payments-api/server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the payments-api");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the payments-api says where it listens");
        let url = line
            .trim()
            .strip_prefix("payments-api listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from the payments-api: {line:?}"))
            .to_string();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port");
        PaymentsApi { child, url, port }
    }

    /// What the service counted: `{"requests", "charges", "replays"}`.
    pub fn stats(&self) -> Value {
        ureq::get(format!("{}/stats", self.url))
            .call()
            .expect("GET /stats")
            .body_mut()
            .read_json()
            .expect("JSON stats")
    }

    /// The charges made, as the provider lists them (with the key the
    /// example ships).
    pub fn charges(&self) -> Vec<Value> {
        let key =
            std::fs::read_to_string(crate::repo().join("examples/orders/payments-api/dev.key"))
                .expect("the example's key");
        let v: Value = ureq::get(format!("{}/v1/charges", self.url))
            .header("Authorization", &format!("Bearer {}", key.trim()))
            .call()
            .expect("GET /v1/charges")
            .body_mut()
            .read_json()
            .expect("JSON charges");
        v["charges"].as_array().cloned().unwrap_or_default()
    }

    /// Tell the service to misbehave (see its `POST /control`).
    pub fn control(&self, told: Value) {
        ureq::post(format!("{}/control", self.url))
            .send_json(told)
            .expect("POST /control");
    }
}

impl Drop for PaymentsApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
