//! The API's bearer token: every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>`, or the console's session cookie with
//! the console's header (`console.rs` says why both).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};

pub(super) async fn auth(
    State(s): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let ok = given.is_some_and(|t| token_matches(&s.token, t))
        || (headers.contains_key(super::console::HEADER)
            && super::console::session_ok(&s, &headers));
    if !ok {
        let mut r = ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// Whether `given` is `token`, compared in time independent of where the
/// first difference is.
pub(super) fn token_matches(token: &str, given: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token of an `Authorization` value of the Bearer scheme: the
/// scheme's name is case-insensitive (RFC 9110 section 11.1), and one or
/// more spaces may follow it (RFC 9110 section 11.4).
fn bearer_token(v: &str) -> Option<&str> {
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(super::bearer_token(v), Some("t0k"), "{v}");
        }
        for v in ["Basic t0k", "Bearert0k", "t0k", "Bearer"] {
            assert_eq!(super::bearer_token(v), None, "{v}");
        }
    }
}
