//! Python plugins: `app.py` defines `class WitWorld(wit_world.WitWorld)`;
//! `componentize-py` bundles it with a Python interpreter into a component.

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

pub(super) fn build(dir: &Path, out: &Path, wit: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new(tool(dir)?);
    cmd.arg("-d")
        .arg(wit)
        .args(["-w", "step", "componentize", "-p"])
        .arg(dir)
        .args(["app", "-o"])
        .arg(out)
        .current_dir(dir);
    run(&mut cmd, dir)
}
