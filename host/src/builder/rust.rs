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
