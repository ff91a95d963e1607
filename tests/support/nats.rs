//! A nats-server of a test's own: a free port, its JetStream store in a
//! directory the test gives (so it can be restarted on the same store),
//! and optionally a cap on what JetStream may store (a server out of
//! storage). Killed with SIGKILL when dropped. For tests that break the
//! server, so the shared one the other tests use is not disturbed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use troupe::broker::BrokerUrl;

pub struct NatsServer {
    child: Child,
    pub port: u16,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Start one on `port` with its store in `store`; `max_file_store`
    /// (as nats-server writes sizes, e.g. `"16MB"`) caps what JetStream
    /// may keep on disk.
    pub fn start(port: u16, store: &Path, max_file_store: Option<&str>) -> NatsServer {
        let cap = max_file_store.map_or(String::new(), |m| format!(", max_file_store: {m}"));
        Self::with_config(port, store, &cap, "")
    }

    /// Start one with `config` added to its configuration file (users and
    /// their permissions, say).
    pub fn start_with(port: u16, store: &Path, config: &str) -> NatsServer {
        Self::with_config(port, store, "", config)
    }

    fn with_config(port: u16, store: &Path, js: &str, config: &str) -> NatsServer {
        let conf = store.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {:?}{js} }}\n{config}",
                store.join("js")
            ),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (Debian package nats-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The broker URL of namespace `ns` on this server.
    pub fn broker(&self, ns: &str) -> BrokerUrl {
        format!("{}/{ns}", self.url())
            .parse()
            .expect("a broker URL")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
