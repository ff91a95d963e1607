//! JavaScript plugins: a `package.json` whose `main` (default `app.js`) is
//! an ES module exporting `describe` and `handle`; `componentize-js` bundles
//! it with a JavaScript engine into a component. The engine keeps what a
//! step in any language has (clocks and timers, random numbers, stdio,
//! which the host gives every step); `fetch-event` is left out (a step does
//! not serve HTTP), and so is `http` unless the step's sources call
//! `fetch(` (outbound HTTP, granted per step; `handle` may then be
//! `async`). A step whose sources import `wasi:keyvalue/...` (step state)
//! is built for the `troupe:step-kv/step-kv` world.
//!
//! **No feature the engine relies on is left out**: componentize-js
//! replaces a left-out feature's imports with stubs that trap. Built
//! without `clocks`, a step trapped on `setTimeout`, and the engine now and
//! then trapped waiting on a slow `fetch`; without `random`, every fresh
//! instance drew the same numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, Inputs, find_tool, run, sources, tool_version};

const INSTALL: &str = "npm install -g @bytecodealliance/componentize-js@0.23.0 (in this repository: ./scripts/toolchains js)";

fn tool(dir: &Path) -> Result<PathBuf, BuildError> {
    find_tool(
        "TROUPE_COMPONENTIZE_JS",
        "componentize-js",
        "js/node_modules/.bin/componentize-js",
        dir,
    )
    .ok_or_else(|| BuildError::MissingTool {
        tool: "componentize-js".into(),
        lang: "JavaScript",
        install: INSTALL.into(),
        env: "TROUPE_COMPONENTIZE_JS",
    })
}

/// The entry module: `main` of package.json, or `app.js`.
fn entry(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["main"].as_str().map(str::to_string))
        .unwrap_or_else(|| "app.js".into())
}

pub(super) fn inputs(dir: &Path) -> Result<Inputs, BuildError> {
    let mut files = sources(dir, &["js", "mjs"]);
    files.push(dir.join("package.json"));
    // How the tool is run is part of what a build depends on: a component
    // built with other features is built again.
    Ok(Inputs {
        files,
        tool_version: format!(
            "{} -d {}{}",
            tool_version(&tool(dir)?),
            left_out(dir).join(" "),
            if uses_kv(dir) { " (step-kv)" } else { "" }
        ),
    })
}

/// The engine features left out of the step's component.
fn left_out(dir: &Path) -> Vec<&'static str> {
    if uses_fetch(dir) {
        vec!["fetch-event"]
    } else {
        vec!["fetch-event", "http"]
    }
}

/// Whether the step's sources call `fetch` (then componentize-js's `http`
/// feature is kept: the component imports `wasi:http`).
fn uses_fetch(dir: &Path) -> bool {
    super::sources_contain(dir, &["js", "mjs"], &["fetch("])
}

/// Whether the step's sources import `wasi:keyvalue` (then it is built
/// for the `troupe:step-kv` world).
fn uses_kv(dir: &Path) -> bool {
    super::sources_contain(
        dir,
        &["js", "mjs"],
        &["'wasi:keyvalue/", "\"wasi:keyvalue/"],
    )
}

pub(super) fn build(dir: &Path, out: &Path, wit: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new(tool(dir)?);
    let (folder, world) = if uses_kv(dir) {
        (super::kv_wit_beside(wit)?, "step-kv")
    } else {
        (wit.to_path_buf(), "step")
    };
    cmd.arg("--wit")
        .arg(&folder)
        .args(["--world-name", world, "-d"])
        .args(left_out(dir))
        .arg("-o")
        .arg(out)
        .arg(entry(dir))
        .current_dir(dir);
    run(&mut cmd, dir)
}
