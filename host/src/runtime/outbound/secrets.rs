//! Secrets: values the host holds for steps and adds to their requests,
//! so **a guest never sees a secret**, and neither does anything Troupe
//! writes (broker, logs, traces, dead letters, metrics, errors, documents).
//!
//! `troupe.toml`'s `[secrets]` table names where each value comes from (an
//! environment variable of the host, or a file), never the value itself.
//! Grants' headers refer to them as `${secrets.NAME}`. A [`Secret`] prints
//! as `***` however it is formatted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

/// Where a secret's value comes from, as written in `[secrets]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file (relative to the app directory); one trailing newline is
    /// dropped.
    File(std::path::PathBuf),
}

/// A secret's value. Formatting it, with `{}` or `{:?}`, gives `***`.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// The value, for the one place it goes: a request's header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The app's secrets, by name, with their values.
#[derive(Debug, Clone, Default)]
pub struct Secrets(BTreeMap<String, Secret>);

impl Secrets {
    /// Read every secret of `sources` (files relative to `dir`). The error
    /// names the secret and its source, never a value.
    pub fn resolve(
        sources: &BTreeMap<String, SecretSource>,
        dir: &Path,
    ) -> Result<Secrets, String> {
        let mut out = BTreeMap::new();
        for (name, source) in sources {
            if !is_secret_name(name) {
                return Err(format!(
                    "[secrets] {name:?}: a secret's name is letters, digits and `_`"
                ));
            }
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    format!("secret {name}: environment variable {var} is not set (or not UTF-8)")
                })?,
                SecretSource::File(p) => {
                    let path = dir.join(p);
                    let mut text = std::fs::read_to_string(&path).map_err(|e| {
                        format!("secret {name}: cannot read {}: {e}", path.display())
                    })?;
                    if text.ends_with('\n') {
                        text.pop();
                        if text.ends_with('\r') {
                            text.pop();
                        }
                    }
                    text
                }
            };
            if value.is_empty() {
                return Err(format!("secret {name}: the value is empty"));
            }
            out.insert(name.clone(), Secret(value.into()));
        }
        Ok(Secrets(out))
    }

    /// For tests and embedders: secrets given directly.
    pub fn from_values<'a>(values: impl IntoIterator<Item = (&'a str, &'a str)>) -> Secrets {
        Secrets(
            values
                .into_iter()
                .map(|(k, v)| (k.to_string(), Secret(v.into())))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A header value as written in a grant: text and `${secrets.NAME}` parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Secret(String),
}

impl Template {
    /// Parse `text`; `${` must open `${secrets.NAME}`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("{text:?}: `${{` without a closing `}}`"))?;
            let name = after[..end].strip_prefix("secrets.").ok_or_else(|| {
                format!("{text:?}: only `${{secrets.NAME}}` may be used in a header value")
            })?;
            if !is_secret_name(name) {
                return Err(format!("{text:?}: {name:?} is not a secret's name"));
            }
            parts.push(Part::Secret(name.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template(parts))
    }

    /// The secrets this template uses.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Secret(n) => Some(n.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The value with the secrets filled in, as a header value that is
    /// marked sensitive. The error names the header's secrets, not values.
    pub fn render(&self, secrets: &Secrets) -> Result<http::HeaderValue, String> {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Secret(n) => s.push_str(
                    secrets
                        .get(n)
                        .ok_or_else(|| format!("secret {n} is not in [secrets]"))?
                        .expose(),
                ),
            }
        }
        let mut v = http::HeaderValue::from_str(&s).map_err(|_| {
            let names: Vec<_> = self.secrets().collect();
            if names.is_empty() {
                "not a valid header value".to_string()
            } else {
                format!(
                    "not a valid header value once {} is filled in (a secret with a line break?)",
                    names.join(", ")
                )
            }
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_formats_as_its_value() {
        let s = Secrets::from_values([("KEY", "sk_live_canary")]);
        let shown = format!(
            "{s:?} {} {:?}",
            s.get("KEY").unwrap(),
            s.get("KEY").unwrap()
        );
        assert!(!shown.contains("canary"), "{shown}");
    }

    #[test]
    fn templates_fill_in_secrets_and_refuse_anything_else() {
        let s = Secrets::from_values([("KEY", "abc"), ("BAD", "a\nb")]);
        let t = Template::parse("Bearer ${secrets.KEY}").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), ["KEY"]);
        let v = t.render(&s).unwrap();
        assert_eq!(v, "Bearer abc");
        assert!(v.is_sensitive());
        assert_eq!(
            Template::parse("plain").unwrap().render(&s).unwrap(),
            "plain"
        );
        assert!(Template::parse("${env.HOME}").unwrap_err().contains("only"));
        assert!(
            Template::parse("${secrets.KEY")
                .unwrap_err()
                .contains("closing")
        );
        assert!(
            Template::parse("${secrets.a-b}")
                .unwrap_err()
                .contains("not a secret")
        );
        assert!(
            Template::parse("${secrets.NOPE}")
                .unwrap()
                .render(&s)
                .unwrap_err()
                .contains("NOPE")
        );
        let e = Template::parse("x ${secrets.BAD}")
            .unwrap()
            .render(&s)
            .unwrap_err();
        assert!(e.contains("BAD") && !e.contains("a\nb"), "{e}");
    }

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        let dir = std::env::temp_dir().join(format!("troupe-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "from-file\n").unwrap();
        let mut src = BTreeMap::new();
        src.insert("F".to_string(), SecretSource::File("k".into()));
        src.insert("P".to_string(), SecretSource::Env("PATH".into()));
        let s = Secrets::resolve(&src, &dir).unwrap();
        assert_eq!(s.get("F").unwrap().expose(), "from-file");
        assert!(!s.get("P").unwrap().expose().is_empty());
        src.insert(
            "M".to_string(),
            SecretSource::Env("TROUPE_NO_SUCH_VARIABLE".into()),
        );
        let e = Secrets::resolve(&src, &dir).unwrap_err();
        assert!(e.contains("TROUPE_NO_SUCH_VARIABLE"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
