//! Python plugins: `app.py` defines `class WitWorld(wit_world.WitWorld)`;
//! `componentize-py` bundles it with a Python interpreter into a component.
//! A step whose sources import `troupe_http` (outbound HTTP, shipped in
//! this binary: `python/troupe_http.py`) is built for the
//! `troupe:step-http` world; componentize-py then names the step's own
//! types module `troupe_step_types` (two interfaces are called `types`).

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

/// Whether the step's sources import `troupe_http` (then it is built for
/// the `troupe:step-http` world, with the helper on its path).
fn uses_http(dir: &Path) -> bool {
    sources(dir, &["py"]).iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("import troupe_http") || l.starts_with("from troupe_http")
            })
        })
    })
}

pub(super) fn build(dir: &Path, out: &Path, wit: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new(tool(dir)?);
    if uses_http(dir) {
        let build = wit.parent().unwrap_or(wit);
        let http_wit = build.join("wit-http");
        super::write_http_wit(&http_wit)?;
        let lib = build.join("py");
        std::fs::create_dir_all(&lib).map_err(|e| BuildError::Io(lib.clone(), e))?;
        let helper = lib.join("troupe_http.py");
        std::fs::write(&helper, TROUPE_HTTP).map_err(|e| BuildError::Io(helper, e))?;
        cmd.arg("-d")
            .arg(&http_wit)
            .args(["-w", "troupe:step-http/step-http", "componentize", "-p"])
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
