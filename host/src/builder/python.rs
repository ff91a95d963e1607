//! Python plugins: `app.py` defines `class WitWorld(wit_world.WitWorld)`;
//! `componentize-py` bundles it with a Python interpreter into a component.
//! A step whose sources import `troupe_http` (outbound HTTP, shipped in
//! this binary: `python/troupe_http.py`) is built for the
//! `troupe:step-http` world; componentize-py then names the step's own
//! types module `troupe_step_types` (two interfaces are called `types`).
//! One whose sources import `troupe_kv` (step state: `python/troupe_kv.py`)
//! is built for `troupe:step-kv/step-http-kv` (state and outbound HTTP),
//! with both helpers on its path, and names its types module the same way.

use std::path::Path;
use std::process::Command;

use super::{BuildError, Inputs, find_tool, run, sources, tool_version};

const INSTALL: &str =
    "pip install componentize-py==0.25.1 (in this repository: ./scripts/toolchains python)";

fn tool(dir: &Path) -> Result<std::path::PathBuf, BuildError> {
    find_tool(
        "TROUPE_COMPONENTIZE_PY",
        "componentize-py",
        "python/.venv/bin/componentize-py",
        dir,
    )
    .ok_or_else(|| BuildError::MissingTool {
        tool: "componentize-py".into(),
        lang: "Python",
        install: INSTALL.into(),
        env: "TROUPE_COMPONENTIZE_PY",
    })
}

pub(super) fn inputs(dir: &Path) -> Result<Inputs, BuildError> {
    Ok(Inputs {
        files: sources(dir, &["py"]),
        tool_version: tool_version(&tool(dir)?),
    })
}

/// The helper Python steps import for outbound HTTP.
const TROUPE_HTTP: &str = include_str!("python/troupe_http.py");

/// The helper Python steps import for step state.
const TROUPE_KV: &str = include_str!("python/troupe_kv.py");

/// Whether the step's sources import module `name`.
fn imports(dir: &Path, name: &str) -> bool {
    sources(dir, &["py"]).iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let l = l.trim_start();
                [format!("import {name}"), format!("from {name}")]
                    .iter()
                    .any(|p| {
                        l.strip_prefix(p.as_str())
                            .is_some_and(|r| r.is_empty() || r.starts_with([' ', ',', '.', '\n']))
                    })
            })
        })
    })
}

pub(super) fn build(dir: &Path, out: &Path, wit: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new(tool(dir)?);
    let (http, kv) = (imports(dir, "troupe_http"), imports(dir, "troupe_kv"));
    if http || kv {
        let build = wit.parent().unwrap_or(wit);
        let (folder, world) = if kv {
            (super::kv_wit_beside(wit)?, "troupe:step-kv/step-http-kv")
        } else {
            let w = build.join("wit-http");
            super::write_http_wit(&w)?;
            (w, "troupe:step-http/step-http")
        };
        let lib = build.join("py");
        std::fs::create_dir_all(&lib).map_err(|e| BuildError::Io(lib.clone(), e))?;
        for (name, text) in [("troupe_http.py", TROUPE_HTTP), ("troupe_kv.py", TROUPE_KV)] {
            let helper = lib.join(name);
            std::fs::write(&helper, text).map_err(|e| BuildError::Io(helper, e))?;
        }
        cmd.arg("-d")
            .arg(&folder)
            .args(["-w", world, "componentize", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(&lib);
    } else {
        cmd.arg("-d")
            .arg(wit)
            .args(["-w", "step", "componentize", "-p"])
            .arg(dir);
    }
    cmd.args(["app", "-o"]).arg(out).current_dir(dir);
    run(&mut cmd, dir)
}
