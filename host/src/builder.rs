//! Building plugin sources into components (`troupe build`, and `troupe
//! run` for steps given as `plugin = "DIR"`).
//!
//! The language of a plugin directory is detected from its files
//! (`Cargo.toml`: Rust). Rust plugins are built with
//! `cargo build --release --target wasm32-wasip2`, which is itself
//! incremental: nothing is rebuilt when nothing changed. The component's
//! path is read from cargo's own JSON messages, not guessed.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
}

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot tell the language of {0}: expected a Cargo.toml (Rust)")]
    UnknownLanguage(PathBuf),
    #[error("`{tool}` is not installed; install it with: {install}")]
    MissingTool { tool: String, install: String },
    #[error(
        "the wasm32-wasip2 target is not installed; install it with: rustup target add wasm32-wasip2"
    )]
    MissingTarget,
    #[error("building {dir} failed:\n{output}")]
    Failed { dir: PathBuf, output: String },
    #[error("building {0} produced no component (is the crate a `cdylib`?)")]
    NoComponent(PathBuf),
}

/// The language of the plugin in `dir`.
pub fn detect(dir: &Path) -> Result<Lang, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::NotADirectory(dir.to_path_buf()));
    }
    if dir.join("Cargo.toml").is_file() {
        return Ok(Lang::Rust);
    }
    Err(BuildError::UnknownLanguage(dir.to_path_buf()))
}

/// Build the plugin in `dir`; the path of the component it produced.
pub fn build(dir: &Path) -> Result<PathBuf, BuildError> {
    match detect(dir)? {
        Lang::Rust => build_rust(dir),
    }
}

fn build_rust(dir: &Path) -> Result<PathBuf, BuildError> {
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
            install: "curl https://sh.rustup.rs -sSf | sh (see https://rustup.rs)".into(),
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
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_ours = msg["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path());
        if !is_ours {
            continue;
        }
        for f in msg["filenames"].as_array().into_iter().flatten() {
            if let Some(f) = f.as_str().filter(|f| f.ends_with(".wasm")) {
                component = Some(PathBuf::from(f));
            }
        }
    }
    let output = child.wait_with_output().map_err(|e| BuildError::Failed {
        dir: dir.to_path_buf(),
        output: e.to_string(),
    })?;
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
