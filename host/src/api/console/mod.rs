//! The web console at `/ui`, on the API's listener: pages over the same
//! JSON API the CLI uses, with no build step and nothing fetched from
//! elsewhere (the HTML, CSS and script are compiled into the binary).
//!
//! The token is given once, on the login page, and kept in a cookie:
//! `HttpOnly`, `SameSite=Strict`, holding a MAC of the token rather than
//! the token itself. **The cookie alone opens nothing**: the API takes it
//! only with the `X-Troupe-Console` header, which a page of another
//! origin cannot send without a CORS preflight the API never grants; so
//! the cookie is no way in for a cross-site request.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ApiState;

/// The cookie the console's session is kept in.
pub const COOKIE: &str = "troupe_console";
/// The header the console's requests carry, without which the cookie
/// counts for nothing.
pub const HEADER: &str = "x-troupe-console";

const PAGE: &str = include_str!("index.html");
const LOGIN: &str = include_str!("login.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The console's routes (no token needed to reach them: the page asks
/// for it).
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Only this origin's own script and style; no frames of it elsewhere.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn login_page(status: StatusCode, app: &str, error: &str) -> Response {
    let page = LOGIN
        .replace("{{app}}", &escape(app))
        .replace("{{error}}", &escape(error));
    html(status, page)
}

/// The console, or the login page without a valid session.
async fn page(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if session_ok(&s, &headers) {
        html(StatusCode::OK, PAGE.replace("{{app}}", &escape(&s.app)))
    } else {
        login_page(StatusCode::OK, &s.app, "")
    }
}

/// The login form's `token`: right, a session cookie and back to the
/// console; wrong, the form again with a 401.
async fn login(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let token = form_field(&body, "token").unwrap_or_default();
    if !super::auth::token_matches(&s.token, token.trim()) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            &s.app,
            "That is not this host's API token.",
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        session_value(&s.token)
    );
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout() -> Response {
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// What the session cookie holds for `token`: a MAC of it, so the cookie
/// never carries the token the CLI and producers use.
fn session_value(token: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(b"troupe console session");
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the request carries this host's session cookie.
pub(super) fn session_ok(s: &ApiState, headers: &HeaderMap) -> bool {
    let want = session_value(&s.token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && super::auth::token_matches(&want, v))
}

/// Field `name` of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Text made safe inside HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn form_fields_are_decoded_and_html_is_escaped() {
        let body = b"a=1&token=t%2Bk+n%20x&b=";
        assert_eq!(super::form_field(body, "token").as_deref(), Some("t+k n x"));
        assert_eq!(super::form_field(body, "b").as_deref(), Some(""));
        assert_eq!(super::form_field(body, "c"), None);
        assert_eq!(
            super::escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn the_session_is_not_the_token_and_depends_on_it() {
        let a = super::session_value("token-a");
        assert_ne!(a, "token-a");
        assert_eq!(a.len(), 64);
        assert_ne!(a, super::session_value("token-b"));
        assert_eq!(a, super::session_value("token-a"));
    }
}
