//! Tries to reach outside the sandbox (files, sockets, environment) and
//! reports, in `test.probed`, what each attempt got.
use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, StepError, event_type, export};

struct Step;

fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> serde_json::Value {
    match r {
        Ok(_) => json!("ok"),
        Err(e) => json!(format!("denied: {e}")),
    }
}

impl Guest for Step {
    fn describe() -> Contract {
        Contract {
            name: "prober".into(),
            version: "1.0.0".into(),
            description: "Probes its sandbox".into(),
            consumes: vec![event_type(
                "test.probe",
                "1.0.0",
                "Start probing",
                json!({}),
            )],
            produces: vec![event_type(
                "test.probed",
                "1.0.0",
                "What each probe got",
                json!({"type": "object"}),
            )],
            deterministic: false,
        }
    }

    fn handle(_event: Event) -> Result<Vec<Emit>, StepError> {
        let report = json!({
            "read_etc_passwd": outcome(std::fs::read_to_string("/etc/passwd")),
            "read_relative": outcome(std::fs::read_to_string("Cargo.toml")),
            "write_tmp": outcome(std::fs::write("/tmp/troupe-escape", b"x")),
            "list_root": outcome(std::fs::read_dir("/")),
            "tcp_connect": outcome(std::net::TcpStream::connect("127.0.0.1:4222")),
            "tcp_listen": outcome(std::net::TcpListener::bind("127.0.0.1:0")),
            "udp_bind": outcome(std::net::UdpSocket::bind("127.0.0.1:0")),
            "env_vars": std::env::vars().count(),
            "granted_read": outcome(std::fs::read_to_string("/granted/hello.txt")),
            "granted_write": outcome(std::fs::write("/granted/written.txt", b"from the guest")),
        });
        Ok(vec![Emit::json("test.probed", &report)])
    }
}

export!(Step);
