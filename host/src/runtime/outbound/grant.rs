//! What a step may call: `grants.http` entries, parsed once and matched
//! against every request (and every redirect the guest follows, which is a
//! request of its own).
//!
//! A grant names a scheme, a host (exact, or `*.` for any subdomain), a
//! port (the scheme's unless given), a path prefix (whole segments) and
//! optionally the methods. **Nothing is reachable that no grant names**,
//! and loopback, private and link-local addresses are reachable only when a
//! grant names them: as an IP literal or `localhost`, or with
//! `private = true` for a name that resolves to one (see [`Reach`]).

use std::net::IpAddr;

use serde::Deserialize;

/// A `grants.http` entry as written in `troupe.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpGrantSpec {
    /// `scheme://host[:port][/path-prefix]`, e.g.
    /// `https://api.payments.example/v1/` or `https://*.mail.example`.
    pub url: String,
    /// Methods allowed (any when absent), e.g. `["POST"]`.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Headers the host adds to every request this grant allows, replacing
    /// any the guest set; values may name secrets: `${secrets.NAME}`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Let a host name of this grant resolve to a loopback, private or
    /// link-local address (an IP literal or `localhost` needs no flag).
    #[serde(default)]
    pub private: bool,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The scheme named `s`, if it is `http` or `https`.
    pub fn of(s: Option<&str>) -> Option<Scheme> {
        match s {
            Some("http") => Some(Scheme::Http),
            Some("https") => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lower case).
    Name(String),
    /// Any name ending in `.` + this (not the name itself).
    Subdomains(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// Which addresses a request allowed by a grant may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Public addresses only: a name that resolves to a loopback, private,
    /// link-local or otherwise special address is refused.
    Public,
    /// Any address (the grant named it: an IP literal, `localhost`, or
    /// `private = true`).
    Any,
}

/// A parsed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    pub scheme: Scheme,
    pub host: HostPattern,
    pub port: u16,
    /// Starts and (unless it is `/`) does not end with `/`.
    pub path: String,
    /// Upper case; `None` for any.
    pub methods: Option<Vec<String>>,
    pub reach: Reach,
    /// The grant as written, for messages.
    pub url: String,
}

/// A request as the grants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub scheme: Scheme,
    /// Lower case; an IPv6 literal without brackets.
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub method: &'a str,
}

impl HttpGrant {
    /// Parse one `grants.http` entry; the error says what is wrong with it.
    pub fn parse(spec: &HttpGrantSpec) -> Result<HttpGrant, String> {
        let url = spec.url.trim();
        let bad = |why: &str| format!("grants.http url {url:?}: {why}");
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port][/path]"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if path.contains(['?', '#']) {
            return Err(bad(
                "a grant names a path prefix, without query or fragment",
            ));
        }
        if authority.contains('@') {
            return Err(bad("user information is not allowed in a grant"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
        let port = match port {
            Some(p) => p,
            None => scheme.default_port(),
        };
        let host = host.to_ascii_lowercase();
        let pattern = if let Some(ip) = parse_ip(&host) {
            HostPattern::Ip(ip)
        } else if let Some(base) = host.strip_prefix("*.") {
            if !is_dns_name(base) || !base.contains('.') {
                return Err(bad(
                    "a wildcard is `*.` before a domain of two labels or more",
                ));
            }
            HostPattern::Subdomains(base.to_string())
        } else if is_dns_name(&host) {
            HostPattern::Name(host.clone())
        } else {
            return Err(bad(
                "the host must be a DNS name, `*.` a domain, or an IP address",
            ));
        };
        if has_dot_segment(path) {
            return Err(bad("the path may not contain `.` or `..` segments"));
        }
        let path = if path.len() > 1 {
            path.trim_end_matches('/').to_string()
        } else {
            "/".to_string()
        };
        let methods = match &spec.methods {
            None => None,
            Some(ms) if ms.is_empty() => {
                return Err(bad("methods is empty: leave it out to allow every method"));
            }
            Some(ms) => {
                let mut up = Vec::new();
                for m in ms {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(bad(&format!("{m:?} is not an HTTP method")));
                    }
                    up.push(m.to_ascii_uppercase());
                }
                Some(up)
            }
        };
        let named = matches!(pattern, HostPattern::Ip(_)) || host == "localhost";
        Ok(HttpGrant {
            scheme,
            host: pattern,
            port,
            path,
            methods,
            reach: if named || spec.private {
                Reach::Any
            } else {
                Reach::Public
            },
            url: url.to_string(),
        })
    }

    /// Whether this grant allows `t`.
    pub fn allows(&self, t: &Target<'_>) -> bool {
        self.scheme == t.scheme
            && self.port == t.port
            && self.host_matches(t.host)
            && path_within(t.path, &self.path)
            && self
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == t.method))
    }

    fn host_matches(&self, host: &str) -> bool {
        match &self.host {
            HostPattern::Name(n) => n == host,
            HostPattern::Subdomains(base) => host
                .strip_suffix(base.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            HostPattern::Ip(ip) => parse_ip(host) == Some(*ip),
        }
    }

    /// The host part as written in a grant, for graphs and docs.
    pub fn host_label(&self) -> String {
        match &self.host {
            HostPattern::Name(n) => n.clone(),
            HostPattern::Subdomains(b) => format!("*.{b}"),
            HostPattern::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            HostPattern::Ip(ip) => ip.to_string(),
        }
    }
}

/// Why no grant allows a request: the first thing that differs from the
/// grant that comes closest, in words a log line can carry.
pub fn why_denied(grants: &[HttpGrant], t: &Target<'_>) -> String {
    let what = format!(
        "{} {}://{}:{}{}",
        t.method,
        t.scheme.as_str(),
        t.host,
        t.port,
        t.path
    );
    if grants.is_empty() {
        return format!("{what}: the step has no `grants.http`");
    }
    if has_dot_segment(t.path) {
        return format!("{what}: a path with `.` or `..` segments is never allowed");
    }
    let near = grants
        .iter()
        .filter(|g| g.host_matches(t.host))
        .collect::<Vec<_>>();
    let Some(g) = near.first() else {
        return format!("{what}: no grant names host {}", t.host);
    };
    let differs = if let Some(g) = near.iter().find(|g| g.scheme != t.scheme) {
        format!("the grant {:?} is for {}", g.url, g.scheme.as_str())
    } else if let Some(g) = near.iter().find(|g| g.port != t.port) {
        format!("the grant {:?} is for port {}", g.url, g.port)
    } else if let Some(g) = near.iter().find(|g| !path_within(t.path, &g.path)) {
        format!("the grant {:?} is for paths under {}", g.url, g.path)
    } else {
        format!("the grant {:?} does not allow method {}", g.url, t.method)
    };
    format!("{what}: {differs}")
}

/// `path` (without query) is `prefix` or below it, whole segments only,
/// and has no dot segments a server would resolve out of it.
fn path_within(path: &str, prefix: &str) -> bool {
    if has_dot_segment(path) {
        return false;
    }
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a path has a `.` or `..` segment a server might resolve: also
/// with the dots percent-encoded (`%2e`, or twice: `%252e`), where an
/// encoded slash (`%2f`) or a backslash (`\`, `%5c`) separates segments,
/// and where what follows the dots is dropped by some servers before they
/// resolve them: path parameters (`..;x`, `..%3b`, as Java servers read
/// them), a NUL (`..%00`, where C strings end) and blanks (`.. `, `%20`,
/// `%09`).
fn has_dot_segment(path: &str) -> bool {
    let mut p = path.to_ascii_lowercase();
    // What servers that decode twice would see.
    for _ in 0..3 {
        let once = p.replace("%25", "%");
        if once == p {
            break;
        }
        p = once;
    }
    let p = p
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/")
        .replace("%3b", ";")
        .replace("%00", "\0")
        .replace("%20", " ")
        .replace("%09", "\t");
    p.split('/').any(|seg| {
        let kept = seg.split([';', '\0']).next().unwrap_or("");
        let kept = kept.trim_matches([' ', '\t']);
        kept == "." || kept == ".."
    })
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok().filter(|p| *p != 0)?))),
        None => Some((authority, None)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// An IP address literal (an IPv6 one without brackets).
pub fn parse_ip(host: &str) -> Option<IpAddr> {
    host.parse().ok()
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `ip` is an address a grant must name to reach: loopback,
/// private, link-local (cloud metadata lives there), carrier-grade NAT,
/// unspecified, multicast, broadcast, documentation, or the IPv6 forms of
/// these (unique-local, mapped IPv4).
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(url: &str, methods: Option<&[&str]>) -> HttpGrant {
        HttpGrant::parse(&HttpGrantSpec {
            url: url.into(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            headers: Default::default(),
            private: false,
        })
        .unwrap()
    }

    fn t<'a>(
        scheme: Scheme,
        host: &'a str,
        port: u16,
        path: &'a str,
        method: &'a str,
    ) -> Target<'a> {
        Target {
            scheme,
            host,
            port,
            path,
            method,
        }
    }

    #[test]
    fn a_grant_allows_its_scheme_host_port_path_and_methods_only() {
        let g = grant("https://api.payments.example/v1/", Some(&["post"]));
        let ok = t(
            Scheme::Https,
            "api.payments.example",
            443,
            "/v1/charges",
            "POST",
        );
        assert!(g.allows(&ok));
        assert!(g.allows(&Target {
            path: "/v1",
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            scheme: Scheme::Http,
            port: 443,
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            host: "evil.example",
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            port: 8443,
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            path: "/v10/charges",
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            path: "/v2",
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            method: "GET",
            ..ok.clone()
        }));
        assert!(!g.allows(&Target {
            path: "/v1/../admin",
            ..ok.clone()
        }));
        for escape in [
            "/v1/%2E%2e/admin",
            "/v1/..%2f..%2fadmin",
            "/v1/..%5Cadmin",
            "/v1/..\\admin",
            "/v1/..;/admin",
            "/v1/..%3b/admin",
            "/v1/..%3B/admin",
            "/v1/..;jsessionid=x/admin",
            "/v1/..%00/admin",
            "/v1/%252e%252e/admin",
            "/v1/.. /admin",
            "/v1/..%20/admin",
            "/v1/.;/admin",
        ] {
            assert!(
                !g.allows(&Target {
                    path: escape,
                    ..ok.clone()
                }),
                "{escape}"
            );
        }
        for fine in ["/v1/a..b/c.d", "/v1/x;v=1", "/v1/..a", "/v1/%2e%2ex"] {
            assert!(
                g.allows(&Target {
                    path: fine,
                    ..ok.clone()
                }),
                "{fine}"
            );
        }
        assert_eq!(g.reach, Reach::Public);
    }

    #[test]
    fn a_wildcard_is_any_subdomain_but_not_the_domain_or_a_lookalike() {
        let g = grant("https://*.mail.example", None);
        let at = |host| t(Scheme::Https, host, 443, "/send", "PUT");
        assert!(g.allows(&at("eu.mail.example")));
        assert!(g.allows(&at("a.b.mail.example")));
        assert!(!g.allows(&at("mail.example")));
        assert!(!g.allows(&at("evilmail.example")));
        assert!(!g.allows(&at("mail.example.evil")));
    }

    #[test]
    fn ip_literals_and_localhost_are_named_reach() {
        let g = grant("http://127.0.0.1:8080", None);
        assert_eq!(g.reach, Reach::Any);
        assert!(g.allows(&t(Scheme::Http, "127.0.0.1", 8080, "/", "GET")));
        assert!(!g.allows(&t(Scheme::Http, "localhost", 8080, "/", "GET")));
        let v6 = grant("http://[::1]:9000/x", None);
        assert!(v6.allows(&t(Scheme::Http, "::1", 9000, "/x/y", "GET")));
        assert_eq!(grant("http://localhost:1/", None).reach, Reach::Any);
    }

    #[test]
    fn bad_grants_say_what_is_wrong() {
        let e = |url: &str| {
            HttpGrant::parse(&HttpGrantSpec {
                url: url.into(),
                methods: None,
                headers: Default::default(),
                private: false,
            })
            .unwrap_err()
        };
        assert!(
            e("api.example").contains("scheme://"),
            "{}",
            e("api.example")
        );
        assert!(e("ftp://api.example").contains("http or https"));
        assert!(e("https://*.com").contains("wildcard"));
        assert!(e("https://a*.example.com").contains("DNS name"));
        assert!(e("https://u:p@api.example").contains("user information"));
        assert!(e("https://api.example:0").contains("port"));
        assert!(e("https://api.example/a?b").contains("query"));
        assert!(e("https://api.example/a/../b").contains("segments"));
    }

    #[test]
    fn the_denial_names_what_differs() {
        let gs = [grant("https://api.example/v1", Some(&["POST"]))];
        let why = |tt| why_denied(&gs, &tt);
        assert!(
            why(t(Scheme::Https, "other.example", 443, "/v1", "POST"))
                .contains("no grant names host")
        );
        assert!(why(t(Scheme::Http, "api.example", 80, "/v1", "POST")).contains("is for https"));
        assert!(why(t(Scheme::Https, "api.example", 444, "/v1", "POST")).contains("port 443"));
        assert!(
            why(t(Scheme::Https, "api.example", 443, "/v2", "POST")).contains("paths under /v1")
        );
        assert!(why(t(Scheme::Https, "api.example", 443, "/v1", "GET")).contains("method GET"));
    }

    #[test]
    fn special_addresses_are_the_ones_a_grant_must_name() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_special(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(!is_special(a.parse().unwrap()), "{a}");
        }
    }
}
