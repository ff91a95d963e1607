//! `troupe new`, `troupe build`, `troupe conformance`: step plugins.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use troupe::runtime::Runtime;
use troupe::text::escape;

pub(crate) fn new_plugin(name: &str, lang: &str, parent: &Path, json: bool) -> Result<()> {
    let Some(l) = troupe::builder::Lang::parse(lang) else {
        bail!("unknown language {lang:?}: choose rust, python, js or c");
    };
    let dir = troupe::scaffold::create(parent, name, l)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "created": dir, "lang": l.name() })
        );
    } else {
        println!("created {} ({} step)", dir.display(), l.name());
        println!(
            "next: troupe build {0} && troupe conformance $(troupe build {0} 2>/dev/null)",
            dir.display()
        );
    }
    Ok(())
}

/// Where the conformance kit caches compiled components.
pub(crate) fn user_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("troupe").join("artifacts")
}

pub(crate) fn conformance(component: &Path, json: bool) -> Result<()> {
    use troupe::conformance::Verdict;
    let rt = Runtime::new()?;
    let report = troupe::conformance::check(&rt, component, &user_cache_dir())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "conformance of {}{}",
            report.component,
            report
                .step
                .as_ref()
                .map(|s| format!(" (step {s})"))
                .unwrap_or_default()
        );
        for c in &report.checks {
            let v = match c.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            println!("  {v}  {:<18} {}", c.rule.id(), c.detail);
        }
    }
    if !report.passed() {
        let failed: Vec<&str> = report.failed().iter().map(|r| r.id()).collect();
        bail!(
            "{} does not conform: {}",
            component.display(),
            failed.join(", ")
        );
    }
    if !json {
        println!("conforms");
    }
    Ok(())
}

pub(crate) fn build(dirs: Vec<PathBuf>, json: bool) -> Result<()> {
    let dirs = if dirs.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        dirs
    };
    let mut built = Vec::new();
    for d in dirs {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("building {}", d.display()));
        bar.enable_steady_tick(Duration::from_millis(100));
        let b = troupe::builder::build(&d).with_context(|| format!("cannot build {}", d.display()));
        bar.finish_and_clear();
        let b = b?;
        let how = if b.rebuilt {
            format!("built in {:.1?}", b.elapsed)
        } else {
            "up to date".into()
        };
        eprintln!("{} ({}): {how}", d.display(), b.lang.name());
        if !json {
            println!("{}", b.component.display());
        }
        built.push(serde_json::json!({
            "dir": d, "lang": b.lang.name(), "component": b.component, "rebuilt": b.rebuilt,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    }
    Ok(())
}

/// `troupe check`; with `against`, the gate too (`cli/deploys.rs`).
pub(crate) fn check(
    dir: &Path,
    json: bool,
    against: Option<super::deploys::Against>,
) -> Result<()> {
    use troupe::check::Severity;
    let app = super::load_app(dir)?;
    let steps = troupe::host::describe_steps(&app)?;
    let gate = match against {
        Some(a) => Some(super::deploys::gate(&app, &steps, a)?),
        None => None,
    };
    let mut findings = troupe::check::check(&steps);
    let imports = troupe::host::http_imports(&app)?;
    let uses: Vec<_> = app
        .steps
        .iter()
        .map(|(name, cfg)| troupe::check::HttpUse {
            step: name,
            imports: imports.get(name).copied().unwrap_or(false),
            grants: cfg.grants.http.iter().map(|g| g.url.as_str()).collect(),
        })
        .collect();
    findings.extend(troupe::check::http(&uses));
    let flows = troupe::host::load_flows(&app, &steps);
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
        + usize::from(flows.is_err())
        + gate.as_ref().map_or(0, |(_, b)| b.len());
    if json {
        let mut v = serde_json::json!({
            "steps": steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "flows": flows.as_ref().map(|f| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>()).unwrap_or_default(),
            "findings": findings,
            "flow_error": flows.as_ref().err().map(|e| e.to_string()),
        });
        if let Some((what, breaks)) = &gate {
            v["gate"] = serde_json::json!({ "against": what, "breaks": breaks });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in &steps {
            let c = &s.contract;
            println!(
                "ok    step {} ({} {}): consumes {}; produces {}",
                s.name,
                c.name,
                c.version,
                names(&c.consumed_kinds()),
                names(
                    &c.produces
                        .iter()
                        .map(|t| t.kind.clone())
                        .collect::<Vec<_>>()
                )
            );
        }
        match &flows {
            Ok(fs) => fs
                .iter()
                .for_each(|f| println!("ok    flow {} ({} steps)", f.name, f.steps.len())),
            Err(e) => println!("ERROR {e}"),
        }
        for f in &findings {
            let tag = match f.severity {
                Severity::Error => "ERROR",
                Severity::Warning => "warn ",
                Severity::Info => "info ",
            };
            println!("{tag} {}", f.message);
        }
        if let Some((what, breaks)) = &gate {
            if breaks.is_empty() {
                println!(
                    "ok    every changed contract is passive against {}",
                    escape(what)
                );
            }
            for b in breaks {
                println!(
                    "ERROR not passive against {}: {}",
                    escape(what),
                    escape(&b.to_string())
                );
            }
        }
    }
    if errors > 0 {
        bail!("{} has {errors} error(s)", dir.display());
    }
    if !json {
        println!("no errors");
    }
    Ok(())
}

fn names(kinds: &[String]) -> String {
    if kinds.is_empty() {
        "nothing".into()
    } else {
        kinds.join(", ")
    }
}

pub(crate) fn graph(dir: &Path, format: &str) -> Result<()> {
    let format = match format {
        "mermaid" => troupe::graph::Format::Mermaid,
        "dot" => troupe::graph::Format::Dot,
        other => bail!("unknown format {other:?}: choose mermaid or dot"),
    };
    let app = super::load_app(dir)?;
    let steps = troupe::host::describe_steps(&app)?;
    let flows = troupe::host::load_flows(&app, &steps)?;
    let calls = http_calls(&app);
    print!(
        "{}",
        troupe::graph::render_with_calls(&steps, &flows, &calls, format)
    );
    Ok(())
}

pub(crate) fn docs(dir: &Path, output: Option<&Path>) -> Result<()> {
    let app = super::load_app(dir)?;
    let steps = troupe::host::describe_steps(&app)?;
    let mut doc = troupe::asyncapi::document(&app.name, &steps, &app.broker);
    let grants: Vec<_> = app
        .steps
        .iter()
        .map(|(step, c)| troupe::asyncapi::StepGrants {
            step,
            grants: &c.grants.http,
        })
        .collect();
    troupe::asyncapi::add_outbound_http(&mut doc, &grants);
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    match output {
        Some(path) => {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Each step's `grants.http` urls (steps without any left out).
fn http_calls(app: &troupe::app::App) -> Vec<(String, Vec<String>)> {
    app.steps
        .iter()
        .filter(|(_, c)| !c.grants.http.is_empty())
        .map(|(n, c)| {
            (
                n.clone(),
                c.grants.http.iter().map(|g| g.url.clone()).collect(),
            )
        })
        .collect()
}
