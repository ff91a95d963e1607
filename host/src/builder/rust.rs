//! Rust plugins: `cargo build --release --target wasm32-wasip2` in the
//! plugin's directory. Cargo is incremental, so an unchanged plugin costs a
//! no-op build; the component's path is read from cargo's JSON messages.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::BuildError;

pub(super) fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    let mut child = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| BuildError::MissingTool {
            tool: "cargo".into(),
            lang: "Rust",
            install: "rustup (https://rustup.rs), then: rustup target add wasm32-wasip2".into(),
            env: "PATH",
        })?;
    let stdout = child.stdout.take().expect("piped");
    let manifest =
        std::fs::canonicalize(dir.join("Cargo.toml")).unwrap_or_else(|_| dir.join("Cargo.toml"));
    let mut component = None;
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact"
            || msg["manifest_path"].as_str().map(Path::new) != Some(&manifest)
        {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                component = Some(PathBuf::from(f));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| BuildError::Io(dir.to_path_buf(), e))?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            return Err(BuildError::MissingTarget);
        }
        return Err(BuildError::Failed {
            dir: dir.to_path_buf(),
            output: stderr,
        });
    }
    component.ok_or_else(|| BuildError::NoComponent(dir.to_path_buf()))
}

/// What a Rust plugin is built from, as far as can be told without cargo:
/// the `.rs`, `.toml`, `.lock` and `.wit` files of the plugin, of its
/// workspace root (`Cargo.toml`, `Cargo.lock`) and of every `path`
/// dependency named in either manifest, transitively.
pub(super) fn source_files(dir: &Path) -> Vec<PathBuf> {
    let root = dir
        .ancestors()
        .skip(1)
        .find(|a| {
            std::fs::read_to_string(a.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .map(Path::to_path_buf);
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    if let Some(root) = &root {
        files.extend(
            ["Cargo.toml", "Cargo.lock"]
                .iter()
                .map(|f| root.join(f))
                .filter(|p| p.is_file()),
        );
        todo.extend(path_dependencies(root));
    }
    while let Some(crate_dir) = todo.pop() {
        let Ok(crate_dir) = crate_dir.canonicalize() else {
            continue;
        };
        if !seen.insert(crate_dir.clone()) {
            continue;
        }
        files.extend(super::sources(&crate_dir, &["rs", "toml", "lock", "wit"]));
        todo.extend(path_dependencies(&crate_dir));
    }
    files
}

/// The directories of the `path` dependencies a manifest names (in any
/// dependency table, `[workspace.dependencies]` included).
fn path_dependencies(crate_dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(crate_dir.join("Cargo.toml")) else {
        return Vec::new();
    };
    let Ok(manifest) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut tables: Vec<&toml::Table> = Vec::new();
    for key in ["dependencies", "build-dependencies", "dev-dependencies"] {
        if let Some(t) = manifest.get(key).and_then(toml::Value::as_table) {
            tables.push(t);
        }
    }
    if let Some(t) = manifest
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table)
    {
        tables.push(t);
    }
    tables
        .iter()
        .flat_map(|t| t.values())
        .filter_map(|d| d.get("path").and_then(toml::Value::as_str))
        .map(|p| crate_dir.join(p))
        .collect()
}
