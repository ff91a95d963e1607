//! A broker's URL as `troupe.toml` and `--broker` write it: parsed, and
//! shown without its password.

use super::{BrokerUrl, nats};

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<BrokerUrl, String> {
        if s == "embedded" {
            return Ok(BrokerUrl::Embedded);
        }
        let Some(rest) = s.strip_prefix("nats://") else {
            return Err(format!(
                "unknown broker {s:?}: use `embedded` or `nats://HOST:PORT[/NAMESPACE]`"
            ));
        };
        let (hostport, ns) = rest.split_once('/').unwrap_or((rest, "troupe"));
        let ns = if ns.is_empty() { "troupe" } else { ns };
        if hostport.is_empty() {
            return Err(format!("broker {s:?} names no server"));
        }
        if !nats::valid_namespace(ns) {
            return Err(format!(
                "NATS namespace {ns:?} must be letters, digits, `-` and `_`"
            ));
        }
        Ok(BrokerUrl::Nats {
            server: format!("nats://{hostport}"),
            namespace: ns.to_string(),
        })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerUrl::Embedded => f.write_str("embedded"),
            // A password (or token) in the URL is never shown.
            BrokerUrl::Nats { server, namespace } => {
                let split = server
                    .split_once("://")
                    .and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?)));
                match split {
                    Some((scheme, (userinfo, host))) => {
                        let who = userinfo
                            .split_once(':')
                            .map_or("***".to_string(), |(user, _)| format!("{user}:***"));
                        write!(f, "{scheme}://{who}@{host}/{namespace}")
                    }
                    None => write!(f, "{server}/{namespace}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerUrl;

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        let u: BrokerUrl = "nats://troupe:host-secret@127.0.0.1:4222/shop"
            .parse()
            .unwrap();
        assert_eq!(u.to_string(), "nats://troupe:***@127.0.0.1:4222/shop");
        let BrokerUrl::Nats { server, namespace } = &u else {
            panic!("{u:?}")
        };
        assert_eq!(server, "nats://troupe:host-secret@127.0.0.1:4222");
        assert_eq!(namespace, "shop");
        let t: BrokerUrl = "nats://s3cr3t@127.0.0.1:4222".parse().unwrap();
        assert_eq!(t.to_string(), "nats://***@127.0.0.1:4222/troupe");
        let plain: BrokerUrl = "nats://127.0.0.1:4222/x".parse().unwrap();
        assert_eq!(plain.to_string(), "nats://127.0.0.1:4222/x");
    }
}
