//! Outbound HTTP from a step, over `wasi:http/outgoing-handler`.
//!
//! A step may only reach what `grants.http` in `troupe.toml` allows; any
//! other request fails with [`Error::Denied`] (wasi-http's
//! `HTTP-request-denied`), and the step decides what that means (usually
//! `reject`: retrying will not change a grant). The host adds the grant's
//! headers (secrets, which the step never sees), an `Idempotency-Key`
//! unless the step set one (the same on every redelivery of the event) and
//! a `traceparent`.
//!
//! ```ignore
//! use troupe_step::http;
//! let res = http::Request::post("https://api.payments.example/v1/charges")
//!     .json(&serde_json::json!({"order": "o-1", "amount": 42}))
//!     .send()?;
//! if res.status == 201 { /* ... */ }
//! ```
//!
//! Redirects are not followed: a `3xx` is returned as it is, and following
//! it is a new request, checked against the grants like any other.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No grant of the step allows this request.
    Denied,
    /// The URL could not be understood.
    BadUrl(String),
    /// Anything else: connecting, a timeout, a limit the host enforces
    /// (response size), a protocol error. The text is wasi-http's error
    /// code.
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Denied => f.write_str("HTTP-request-denied: no grant allows this request"),
            Error::BadUrl(m) => write!(f, "bad URL: {m}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorCode> for Error {
    fn from(e: ErrorCode) -> Error {
        match e {
            ErrorCode::HttpRequestDenied => Error::Denied,
            other => Error::Failed(format!("{other:?}")),
        }
    }
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Timeouts the step asks for, milliseconds; the host holds them to
    /// the step's `limits.http` whatever is asked.
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
}

/// A response, its body read whole.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

impl Request {
    /// A request with `method` to `url` (`http://` or `https://`).
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            connect_timeout_ms: None,
            first_byte_timeout_ms: None,
        }
    }

    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    pub fn post(url: &str) -> Request {
        Request::new("POST", url)
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }

    /// A JSON body, with its `content-type`.
    pub fn json(mut self, value: &impl serde::Serialize) -> Request {
        self.body = serde_json::to_vec(value).expect("a serde value serialises to JSON");
        self.header("content-type", "application/json")
    }

    /// A body of bytes.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Send it and read the whole response.
    pub fn send(self) -> Result<Response, Error> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| Error::BadUrl(format!("{:?} has no scheme", self.url)))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(Error::BadUrl(format!("scheme {other:?}"))),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        // A body goes with its length (not chunked), as most services want.
        let mut list = self.headers.clone();
        if !self.body.is_empty()
            && !list
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            list.push((
                "content-length".into(),
                self.body.len().to_string().into_bytes(),
            ));
        }
        let headers =
            Fields::from_list(&list).map_err(|e| Error::BadUrl(format!("bad header: {e:?}")))?;
        let req = OutgoingRequest::new(headers);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let bad = |what: &str| Error::BadUrl(what.to_string());
        req.set_method(&method).map_err(|_| bad("method"))?;
        req.set_scheme(Some(&scheme)).map_err(|_| bad("scheme"))?;
        req.set_authority(Some(authority))
            .map_err(|_| bad("authority"))?;
        req.set_path_with_query(Some(&path))
            .map_err(|_| bad("path"))?;
        let body = req.body().expect("the body of a new request");
        if !self.body.is_empty() {
            let out = body.write().expect("the stream of a new body");
            for chunk in self.body.chunks(4096) {
                out.blocking_write_and_flush(chunk)
                    .map_err(|e| Error::Failed(format!("writing the body: {e:?}")))?;
            }
        }
        let options = RequestOptions::new();
        let ns = |ms: u64| ms.saturating_mul(1_000_000);
        if let Some(ms) = self.connect_timeout_ms {
            let _ = options.set_connect_timeout(Some(ns(ms)));
        }
        if let Some(ms) = self.first_byte_timeout_ms {
            let _ = options.set_first_byte_timeout(Some(ns(ms)));
        }
        let pending = outgoing_handler::handle(req, Some(options))?;
        OutgoingBody::finish(body, None)?;
        let res = loop {
            match pending.get() {
                Some(r) => break r.expect("taken once")?,
                None => pending.subscribe().block(),
            }
        };
        let status = res.status();
        let headers = res.headers().entries();
        let incoming = res.consume().expect("the body of a new response");
        let mut data = Vec::new();
        {
            let stream = incoming.stream().expect("the stream of a new body");
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => data.extend_from_slice(&chunk),
                    Err(wasip2::io::streams::StreamError::Closed) => break,
                    Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                        let code = wasip2::http::types::http_error_code(&e);
                        return Err(
                            code.map_or_else(|| Error::Failed(e.to_debug_string()), Error::from)
                        );
                    }
                }
            }
        }
        let trailers = IncomingBody::finish(incoming);
        loop {
            match trailers.get() {
                Some(r) => {
                    r.expect("taken once")?;
                    break;
                }
                None => trailers.subscribe().block(),
            }
        }
        Ok(Response {
            status,
            headers,
            body: data,
        })
    }
}
