//! A real HTTP service for steps to call, on 127.0.0.1 (a port of its
//! own), recording every request it gets. It plays a payments provider:
//! `POST /v1/charges` wants `Authorization: Bearer <key>` and keeps one
//! charge per `Idempotency-Key`, as providers that honour the header do;
//! other routes are slow, big, trickling or redirecting on request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};

/// A request as the service got it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The client's address: one per connection.
    pub peer: SocketAddr,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Books {
    seen: Vec<Seen>,
    /// Charges by idempotency key, in the order made.
    charges: BTreeMap<String, usize>,
    /// Delay the first answer to each key by this much (a host can be
    /// killed while it waits).
    hold_first: Option<Duration>,
}

#[derive(Clone)]
struct Shared {
    key: String,
    books: Arc<Mutex<Books>>,
}

/// The running service.
pub struct Upstream {
    pub addr: SocketAddr,
    books: Arc<Mutex<Books>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Start it on a port of its own; `key` is the API key it wants.
    pub async fn start(key: &str) -> Upstream {
        let books = Arc::new(Mutex::new(Books::default()));
        let shared = Shared {
            key: key.to_string(),
            books: books.clone(),
        };
        let app = Router::new()
            .route("/v1/charges", any(charge))
            .route("/v1/slow/{ms}", get(slow))
            .route("/v1/big/{n}", get(big))
            .route("/v1/trickle", get(trickle))
            .route("/v1/redirect", get(redirect))
            .route("/v1/early", post(early))
            .fallback(any(plain))
            .with_state(shared.clone())
            .layer(axum::middleware::from_fn_with_state(shared, record));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        Upstream {
            addr,
            books,
            _task: task,
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.books.lock().unwrap().seen.clone()
    }

    /// Charges made (one per distinct idempotency key).
    pub fn charges(&self) -> usize {
        self.books.lock().unwrap().charges.len()
    }

    /// Hold the first answer to each idempotency key for `d`.
    pub fn hold_first(&self, d: Duration) {
        self.books.lock().unwrap().hold_first = Some(d);
    }
}

async fn record(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    s.books.lock().unwrap().seen.push(Seen {
        peer,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        headers,
    });
    next.run(req).await
}

async fn charge(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", s.key) {
        return (StatusCode::UNAUTHORIZED, "a valid API key is required").into_response();
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "Idempotency-Key is required").into_response();
    };
    let (id, replayed, hold) = {
        let mut b = s.books.lock().unwrap();
        let n = b.charges.len();
        let replayed = b.charges.contains_key(key);
        let id = *b.charges.entry(key.to_string()).or_insert(n + 1);
        (id, replayed, if replayed { None } else { b.hold_first })
    };
    if let Some(d) = hold {
        tokio::time::sleep(d).await;
    }
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (
        status,
        [("content-type", "application/json")],
        format!(r#"{{"charge": "ch_{id}", "replayed": {replayed}}}"#),
    )
        .into_response()
}

async fn slow(Path(ms): Path<u64>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "slow"
}

async fn big(Path(n): Path<usize>) -> Vec<u8> {
    vec![b'x'; n]
}

async fn trickle() -> Response {
    let stream = futures_util::stream::unfold(0, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x")),
            i + 1,
        ))
    });
    Response::new(Body::from_stream(stream))
}

async fn redirect(Query(q): Query<BTreeMap<String, String>>) -> Response {
    (
        StatusCode::FOUND,
        [("location", q.get("to").cloned().unwrap_or_default())],
    )
        .into_response()
}

/// Answers at once, without reading the request's body, and closes the
/// connection (as a server refusing an upload does).
async fn early() -> Response {
    ([("connection", "close")], "early").into_response()
}

async fn plain() -> &'static str {
    "ok"
}
