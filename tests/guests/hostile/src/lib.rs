//! A hostile step: each event type it consumes is one way to attack the
//! sandbox or the contract boundary (the hostile-guest suite,
//! `tests/it/hostile.rs`, says what the host must make of each). It also
//! consumes `hostile.out`, the strict type it produces, so that an output
//! that slips past the gate would reach a consumer.
use std::time::Duration;

use serde_json::json;
use troupe_step::{Contract, Emit, Event, Guest, Level, StepError, event_type, export, log};

struct Step;

/// The attacks, by event type.
const ATTACKS: &[&str] = &[
    "hostile.spin",
    "hostile.sleep",
    "hostile.membomb",
    "hostile.huge-emit",
    "hostile.flood",
    "hostile.undeclared",
    "hostile.bad-data",
    "hostile.forge-alert",
    "hostile.ctype-text",
    "hostile.ctype-upper",
    "hostile.ctype-xml",
    "hostile.big-subject",
    "hostile.big-ctype",
    "hostile.subject-control",
    "hostile.control",
    "hostile.big-reject",
    "hostile.big-retry",
    "hostile.log-flood",
    "hostile.escape",
    "hostile.sized",
    "trap.panic",
    "trap.abort",
    "trap.oob",
    "trap.stack",
    "trap.indirect",
    "trap.utf8",
    "trap.pointer",
];

/// `hostile.out`: what the step declares it produces (and consumes).
fn out_schema() -> serde_json::Value {
    json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
}

fn emit(kind: &str, content_type: Option<&str>, data: &[u8]) -> Emit {
    Emit {
        kind: kind.into(),
        subject: None,
        content_type: content_type.map(str::to_string),
        data: data.to_vec(),
    }
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    // Enough of a frame that the optimiser keeps the recursion.
    let frame = std::hint::black_box([n; 16]);
    recurse(frame[3].wrapping_add(1)).wrapping_add(frame[7])
}

fn outcome<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("denied: {e}"),
    }
}

impl Guest for Step {
    fn describe() -> Contract {
        let mut consumes: Vec<_> = ATTACKS
            .iter()
            .map(|k| event_type(k, "1.0.0", "An attack", json!({})))
            .collect();
        consumes.push(event_type("hostile.out", "1.0.0", "Strict", out_schema()));
        Contract {
            name: "hostile".into(),
            version: "1.0.0".into(),
            description: "Attacks its sandbox".into(),
            consumes,
            produces: vec![event_type("hostile.out", "1.0.0", "Strict", out_schema())],
            deterministic: false,
        }
    }

    fn handle(event: Event) -> Result<Vec<Emit>, StepError> {
        let ok = br#"{"n":1}"#;
        let bad = br#"{"n":"three"}"#;
        match event.kind.as_str() {
            "hostile.out" => Ok(vec![]),
            "hostile.spin" => {
                let mut x = event.data.len() as u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            // A WASI clock subscription and `poll`: the guest waits in a
            // host call, where no epoch can interrupt it.
            "hostile.sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "hostile.membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // Twice the default limit of an event's data unless `kb` says
            // how much: small enough to be made well within the time limit
            // on a loaded machine, so the byte limit is what trips.
            "hostile.huge-emit" => {
                let kb = event.json::<serde_json::Value>()?["kb"]
                    .as_u64()
                    .unwrap_or(512);
                let out = json!({"n": 1, "pad": "x".repeat(kb as usize * 1024)});
                Ok(vec![emit("hostile.out", None, out.to_string().as_bytes())])
            }
            // Not an attack: an output of `kb` KiB, for the brokers' size limits.
            "hostile.sized" => {
                let kb = event.json::<serde_json::Value>()?["kb"]
                    .as_u64()
                    .unwrap_or(1);
                let out = json!({"n": kb, "pad": "x".repeat(kb as usize * 1024)});
                Ok(vec![emit("hostile.out", None, out.to_string().as_bytes())])
            }
            "hostile.flood" => Ok((0..10_000).map(|_| emit("hostile.out", None, ok)).collect()),
            "hostile.undeclared" => Ok(vec![emit("hostile.nope", None, ok)]),
            "hostile.bad-data" => Ok(vec![emit("hostile.out", None, bad)]),
            "hostile.forge-alert" => Ok(vec![emit("troupe.alert.contract", None, b"{}")]),
            "hostile.ctype-text" => Ok(vec![emit("hostile.out", Some("text/plain"), bad)]),
            "hostile.ctype-upper" => Ok(vec![emit("hostile.out", Some("Application/JSON"), bad)]),
            "hostile.ctype-xml" => Ok(vec![emit("hostile.out", Some("application/xml"), bad)]),
            "hostile.big-subject" => Ok(vec![Emit {
                subject: Some("s".repeat(10 << 20)),
                ..emit("hostile.out", None, ok)
            }]),
            "hostile.big-ctype" => {
                let ct = format!("application/{}", "x".repeat(10 << 20));
                Ok(vec![emit("hostile.out", Some(&ct), ok)])
            }
            "hostile.subject-control" => Ok(vec![Emit {
                subject: Some("o-1\n\u{1b}[2Jforged".into()),
                ..emit("hostile.out", None, ok)
            }]),
            "hostile.control" => {
                log(
                    Level::Warn,
                    "innocent\n2026-12-01T00:00:00.000000Z ERROR troupe: FORGED host line\u{1b}[2J",
                );
                Err(StepError::Reject(
                    "bad\nFORGED dead letter\u{1b}[2J\u{1b}[31mred\u{7}".into(),
                ))
            }
            "hostile.big-reject" => Err(StepError::Reject("r".repeat(10 << 20))),
            "hostile.big-retry" => Err(StepError::Retry("y".repeat(10 << 20))),
            "hostile.log-flood" => loop {
                log(
                    Level::Info,
                    "flood flood flood flood flood flood flood flood",
                );
            },
            "hostile.escape" => {
                let report = json!({
                    "passwd": outcome(std::fs::read_to_string("/etc/passwd")),
                    "cwd": outcome(std::fs::read_dir(".")),
                    "root": outcome(std::fs::read_dir("/")),
                    "tcp": outcome(std::net::TcpStream::connect("127.0.0.1:4222")),
                    "udp": outcome(std::net::UdpSocket::bind("127.0.0.1:0")),
                    "env": std::env::vars().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                    "args": std::env::args().collect::<Vec<_>>(),
                });
                println!("STDOUT-FROM-GUEST {report}");
                eprintln!("STDERR-FROM-GUEST {report}");
                Err(StepError::Reject(report.to_string()))
            }
            "trap.panic" => panic!("hostile panic"),
            "trap.abort" => std::process::abort(),
            "trap.oob" => {
                // Far past the end of linear memory.
                let p = 0xFFFF_FF00usize as *const u64;
                let v = unsafe { std::ptr::read_volatile(p) };
                Ok(vec![emit(
                    "hostile.out",
                    None,
                    format!("{{\"n\":{v}}}").as_bytes(),
                )])
            }
            "trap.stack" => {
                let v = recurse(event.data.len() as u64);
                Ok(vec![emit(
                    "hostile.out",
                    None,
                    format!("{{\"n\":{v}}}").as_bytes(),
                )])
            }
            "trap.indirect" => {
                // A call through a function table slot that holds nothing.
                let f: fn() -> u32 =
                    unsafe { std::mem::transmute(std::hint::black_box(0x7fff_fff0usize)) };
                let v = f();
                Ok(vec![emit(
                    "hostile.out",
                    None,
                    format!("{{\"n\":{v}}}").as_bytes(),
                )])
            }
            "trap.utf8" => {
                // A `string` that is not UTF-8, handed across the boundary.
                let bytes: &'static [u8] = std::hint::black_box(b"\xff\xfe not utf-8");
                log(Level::Info, unsafe { std::str::from_utf8_unchecked(bytes) });
                Ok(vec![])
            }
            "trap.pointer" => {
                // A `string` that points outside linear memory.
                let p = std::hint::black_box(0xFFFF_0000usize) as *const u8;
                let s =
                    unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, 4096)) };
                log(Level::Info, s);
                Ok(vec![])
            }
            other => Err(StepError::Reject(format!("no attack named {other}"))),
        }
    }
}

export!(Step);
