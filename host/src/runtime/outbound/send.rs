//! Sending one allowed request: name lookup checked against the grant's
//! reach, connect, TLS, HTTP/1.1, and a response body held to the limits.
//!
//! **Every wait is bounded**: connecting by the connect timeout, the
//! response's head by the first-byte timeout, each piece of the body by
//! the between-bytes timeout, and all of it by the call's end (the request
//! timeout, or the invocation's deadline if that comes first). A body
//! longer than `max_response_bytes` ends in an error the guest reads. The
//! call's permit (`max_concurrent`) is held until its body is done.
//!
//! A connection whose response was read whole waits in the step's [`Pool`]
//! (up to 10 s) for the step's next call to the same scheme, host and port.
//!
//! **A guest's writes of its request body do not fail because the
//! connection is done with them** (the server answered early and closed,
//! or the call failed or was denied): the rest of the body is read and
//! dropped until the call's end ([`Drained`]). The guest gets the answer,
//! or the call's error, from the response; a failed write is what made
//! the JavaScript engine abort.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme as UriScheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use super::calls::{CallLog, code_name};
use super::grant::{Reach, is_special, parse_ip};
use super::stats::HttpStats;

/// What the call may do, decided when it was allowed.
pub(super) struct Plan {
    /// The grant's host, for the metrics.
    pub grant_host: String,
    pub reach: Reach,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
    /// When the call must be over, body included.
    pub until: Instant,
    pub max_response_bytes: u64,
    pub permits: Arc<Semaphore>,
    pub stats: Arc<HttpStats>,
    pub pool: Arc<Pool>,
    /// Where the call's record is, to fill in when it ends (none past
    /// the invocation's [`super::calls::MAX_RECORDS`]).
    pub log: Option<(CallLog, usize)>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// Send `req` as `plan` allows.
pub(super) async fn send(
    req: http::Request<WasiBody>,
    plan: Plan,
) -> Result<(http::Response<WasiBody>, Io), Error> {
    let started = Instant::now();
    let (stats, grant_host) = (plan.stats.clone(), plan.grant_host.clone());
    let log = plan.log.clone();
    let until = plan.until;
    let r = tokio::time::timeout_at(until.into(), exchange(req, plan))
        .await
        .unwrap_or(Err(Error::ConnectionReadTimeout));
    let status = r.as_ref().ok().map(|(res, _)| res.status().as_u16());
    let took = started.elapsed();
    stats.record(&grant_host, status, took);
    if let Some((log, i)) = log {
        log.ended(i, status, r.as_ref().err().map(code_name), took);
    }
    r
}

async fn exchange(
    mut req: http::Request<WasiBody>,
    plan: Plan,
) -> Result<(http::Response<WasiBody>, Io), Error> {
    let permit = plan
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Error::InternalError(Some("the step is stopping".into())))?;
    let uri = req.uri().clone();
    let tls = uri.scheme() == Some(&UriScheme::HTTPS);
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let key = Key {
        tls,
        host,
        port,
        reach: plan.reach,
    };
    let mut sender = match plan.pool.take(&key).await {
        Some(s) => s,
        None => open(&key, plan.connect_timeout).await?,
    };
    // The request line carries the path only (no proxy here).
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let res = tokio::time::timeout(plan.first_byte_timeout, sender.send_request(req))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)?
        .map_err(Error::from)?;
    let (parts, incoming) = res.into_parts();
    let body = Bounded {
        inner: incoming,
        left: plan.max_response_bytes,
        max: plan.max_response_bytes,
        between: plan.between_bytes_timeout,
        idle: Box::pin(tokio::time::sleep(plan.between_bytes_timeout)),
        end: Box::pin(tokio::time::sleep_until(plan.until.into())),
        back: Some((plan.pool.clone(), key, sender)),
        _permit: permit,
    };
    // The connection is driven by a task of its own (see `open`).
    let io: Io = Box::new(async { Ok(()) });
    Ok((http::Response::from_parts(parts, body.boxed_unsync()), io))
}

/// A new connection to `key`: the name looked up and checked, TCP, TLS
/// for `https`, the HTTP/1.1 handshake. The connection runs in a task of
/// its own until the server closes it or the last handle to it (in a call,
/// or idle in the pool) is dropped.
async fn open(key: &Key, connect_timeout: Duration) -> Result<Sender, Error> {
    let addrs = tokio::time::timeout(connect_timeout, resolve(&key.host, key.port, key.reach))
        .await
        .map_err(|_| Error::DnsTimeout)??;
    let stream = tokio::time::timeout(connect_timeout, connect(&addrs))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    stream.set_nodelay(true).map_err(Error::Connect)?;
    let stream: Box<dyn Stream> = if key.tls {
        let name = rustls::pki_types::ServerName::try_from(key.host.clone())
            .map_err(|_| Error::HttpRequestUriInvalid)?;
        let s = tokio::time::timeout(
            connect_timeout,
            tokio_rustls::TlsConnector::from(tls_config()).connect(name, stream),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Tls)?;
        Box::new(s)
    } else {
        Box::new(stream)
    };
    let (sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("outbound connection ended: {e}");
        }
    });
    Ok(sender)
}

type Sender = hyper::client::conn::http1::SendRequest<WasiBody>;

/// A request body that, dropped before its end, is read to its end (until
/// `until`) by a task of its own, what it holds thrown away. Every request
/// a guest makes is wrapped in one, allowed or denied.
pub(super) struct Drained {
    inner: Option<WasiBody>,
    ended: bool,
    until: Instant,
}

impl Drained {
    pub(super) fn new(inner: WasiBody, until: Instant) -> Self {
        Drained {
            inner: Some(inner),
            ended: false,
            until,
        }
    }
}

impl Body for Drained {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = ready!(Pin::new(inner).poll_frame(cx));
        if !matches!(r, Some(Ok(_))) {
            self.ended = true;
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let until = self.until;
        rt.spawn(async move {
            let read = async { while let Some(Ok(_)) = body.frame().await {} };
            let _ = tokio::time::timeout_at(until.into(), read).await;
        });
    }
}

/// Where a connection goes, and what it was checked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tls: bool,
    host: String,
    port: u16,
    reach: Reach,
}

/// How long a connection may wait idle for the step's next call to the
/// same place, and how many may wait per place.
const IDLE_FOR: Duration = Duration::from_secs(10);
const IDLE_MOST: usize = 8;
/// How long a connection taken from the pool may take to be ready.
const READY_WITHIN: Duration = Duration::from_millis(50);

/// Connections one step keeps open between calls, by where they go; only
/// that step's calls use them. **Each was checked when it was made**
/// (its address against the grant's reach), and a request on it is checked
/// against the grants like any other before it is sent.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
}

impl Pool {
    /// An idle connection to `key` that is ready for a request, if any.
    async fn take(&self, key: &Key) -> Option<Sender> {
        loop {
            let (mut s, since) = self.idle.lock().expect("pool lock").get_mut(key)?.pop()?;
            if since.elapsed() >= IDLE_FOR || s.is_closed() {
                continue;
            }
            if matches!(
                tokio::time::timeout(READY_WITHIN, s.ready()).await,
                Ok(Ok(()))
            ) {
                return Some(s);
            }
        }
    }

    /// A connection whose response was read whole, for the next call.
    fn put(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        for list in idle.values_mut() {
            list.retain(|(s, since)| since.elapsed() < IDLE_FOR && !s.is_closed());
        }
        idle.retain(|_, list| !list.is_empty());
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_MOST {
            list.push((sender, Instant::now()));
        }
    }
}

/// The addresses to try for `host`: an IP literal as it is, a name looked
/// up. With [`Reach::Public`] the loopback, private and other special
/// addresses a name resolves to are dropped (DNS cannot point a grant for
/// a public name at the host's own network); none left is
/// `destination-IP-prohibited`.
async fn resolve(host: &str, port: u16, reach: Reach) -> Result<Vec<SocketAddr>, Error> {
    let found: Vec<SocketAddr> = match parse_ip(host) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Error::DnsError {
                rcode: None,
                info_code: None,
            })?
            .collect(),
    };
    if found.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    let allowed: Vec<SocketAddr> = match reach {
        Reach::Any => found,
        Reach::Public => found.into_iter().filter(|a| !is_special(a.ip())).collect(),
    };
    if allowed.is_empty() {
        return Err(Error::DestinationIpProhibited);
    }
    Ok(allowed)
}

/// The first of `addrs` that takes the connection.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
    let mut last = Error::DestinationUnavailable;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused;
            }
            Err(e) => last = Error::Connect(e),
        }
    }
    Err(last)
}

/// TLS with the system's root certificates (`/etc/ssl/certs`), built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("system root certificates: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system root certificates: every https call will fail");
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// A response body held to the call's limits.
struct Bounded {
    inner: hyper::body::Incoming,
    left: u64,
    max: u64,
    between: Duration,
    idle: Pin<Box<Sleep>>,
    end: Pin<Box<Sleep>>,
    /// The connection, given back to the pool once the body is read whole.
    back: Option<(Arc<Pool>, Key, Sender)>,
    _permit: OwnedSemaphorePermit,
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((pool, key, sender)) = this.back.take() {
                    pool.put(key, sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        this.left = 0;
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.max)))));
                    }
                    this.left -= n;
                }
                let next = tokio::time::Instant::now() + this.between;
                this.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.end.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Error::ConnectionReadTimeout)));
                }
                ready!(this.idle.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
