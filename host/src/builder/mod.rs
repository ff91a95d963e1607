//! Building plugin sources into components (`troupe build`, and `troupe
//! run` for steps given as `plugin = "DIR"`).
//!
//! The language of a plugin directory is told by its files:
//!
//! | file | language | toolchain |
//! |---|---|---|
//! | `Cargo.toml` | Rust | `cargo build --release --target wasm32-wasip2` |
//! | `app.py` | Python | `componentize-py` |
//! | `package.json` | JavaScript | `componentize-js` |
//! | `*.c` | C | `clang` for `wasm32-wasi`, then bindings and the component wrap in-process |
//!
//! Builds are cached: Rust by cargo itself; the others by a hash of the
//! sources, the WIT and the toolchain's version, kept with the output in
//! `DIR/.troupe-build/`. A missing toolchain is reported with the command
//! that installs it.
//!
//! [`build`] (`troupe build`) always asks the toolchain. [`prepare`] (what
//! `run`, `check`, `docs`, `graph` and `publish` use) takes the last build
//! as it is when the sources it was built from are unchanged (for Rust:
//! the plugin's `.rs`, `.toml`, `.lock` and `.wit` files and those of its
//! `path` dependencies), without running any tool; so a built step needs no
//! toolchain, and a changed one is rebuilt. After upgrading a toolchain,
//! run `troupe build`. Python, JavaScript and C builds use the WIT of this
//! `troupe` binary, so a step is always built against the contract the host
//! enforces.
//!
//! Tools are found, in order: an environment variable naming the tool
//! (`TROUPE_COMPONENTIZE_PY`, `TROUPE_COMPONENTIZE_JS`, `TROUPE_CLANG`),
//! the `PATH`, then a `toolchains/` folder in the plugin's directory or any
//! parent, or in the directory of the `troupe` binary or any parent (what
//! `scripts/toolchains` installs in this repository, found by a `troupe`
//! built here wherever the plugin is).

mod c;
mod js;
mod python;
mod rust;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The `troupe:step` WIT this binary was built with.
pub const STEP_WIT: &str = include_str!("../../../wit/step.wit");
/// The `troupe:step-http` world (the step world plus outbound HTTP) and
/// the WASI packages it needs, as `(path inside the WIT folder, text)`.
pub const STEP_HTTP_WIT: [(&str, &str); 8] = [
    (
        "step-http.wit",
        include_str!("../../../wit/http/step-http.wit"),
    ),
    (
        "deps/cli/cli.wit",
        include_str!("../../../wit/http/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../wit/http/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../wit/http/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../../wit/http/deps/http/http.wit"),
    ),
    (
        "deps/io/io.wit",
        include_str!("../../../wit/http/deps/io/io.wit"),
    ),
    (
        "deps/random/random.wit",
        include_str!("../../../wit/http/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../wit/http/deps/sockets/sockets.wit"),
    ),
];

/// The `troupe:step-kv` worlds (the step world plus `wasi:keyvalue`, with
/// or without outbound HTTP) and the `wasi:keyvalue` package, as `(path
/// inside the WIT folder, text)`; the folder also holds the WASI packages
/// of [`STEP_HTTP_WIT`].
pub const STEP_KV_WIT: [(&str, &str); 6] = [
    ("step-kv.wit", include_str!("../../../wit/kv/step-kv.wit")),
    (
        "deps/keyvalue/store.wit",
        include_str!("../../../wit/kv/deps/keyvalue/store.wit"),
    ),
    (
        "deps/keyvalue/atomic.wit",
        include_str!("../../../wit/kv/deps/keyvalue/atomic.wit"),
    ),
    (
        "deps/keyvalue/batch.wit",
        include_str!("../../../wit/kv/deps/keyvalue/batch.wit"),
    ),
    (
        "deps/keyvalue/watch.wit",
        include_str!("../../../wit/kv/deps/keyvalue/watch.wit"),
    ),
    (
        "deps/keyvalue/world.wit",
        include_str!("../../../wit/kv/deps/keyvalue/world.wit"),
    ),
];

/// Write the `troupe:step-kv` WIT folder (with `troupe:step` and the WASI
/// packages among its deps) at `dir`.
fn write_kv_wit(dir: &Path) -> Result<(), BuildError> {
    let files = STEP_KV_WIT
        .iter()
        .copied()
        .chain(
            STEP_HTTP_WIT
                .iter()
                .copied()
                .filter(|(p, _)| p.starts_with("deps/")),
        )
        .chain([("deps/step/step.wit", STEP_WIT)]);
    write_files(dir, files)
}

/// The `troupe:step-kv` WIT folder, written beside the step's WIT folder
/// `wit` (in the plugin's build folder).
pub(crate) fn kv_wit_beside(wit: &Path) -> Result<PathBuf, BuildError> {
    let dir = wit.parent().unwrap_or(wit).join("wit-kv");
    write_kv_wit(&dir)?;
    Ok(dir)
}

fn write_files<'a>(
    dir: &Path,
    files: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), BuildError> {
    for (rel, text) in files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BuildError::Io(parent.to_path_buf(), e))?;
        }
        std::fs::write(&p, text).map_err(|e| BuildError::Io(p.clone(), e))?;
    }
    Ok(())
}

/// Write the `troupe:step-http` WIT folder (with `troupe:step` among its
/// deps) at `dir`.
pub(crate) fn write_http_wit(dir: &Path) -> Result<(), BuildError> {
    let files = STEP_HTTP_WIT
        .iter()
        .copied()
        .chain([("deps/step/step.wit", STEP_WIT)]);
    write_files(dir, files)
}

/// Whether any of the plugin's source files with these extensions holds
/// one of `needles` (how a build tells which features a step uses).
pub(crate) fn sources_contain(dir: &Path, exts: &[&str], needles: &[&str]) -> bool {
    sources(dir, exts)
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| needles.iter().any(|n| t.contains(n))))
}

/// The folder, inside a plugin, for build outputs of non-Rust plugins.
pub const BUILD_DIR: &str = ".troupe-build";

/// A plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "rust" | "rs" => Some(Lang::Rust),
            "python" | "py" => Some(Lang::Python),
            "js" | "javascript" => Some(Lang::Js),
            "c" => Some(Lang::C),
            _ => None,
        }
    }
}

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "cannot tell the language of {0}: expected Cargo.toml (Rust), app.py (Python), package.json (JavaScript) or a .c file (C)"
    )]
    UnknownLanguage(PathBuf),
    #[error(
        "`{tool}` is not installed (needed for {lang} plugins); install it with: {install}; \
         or set {env} to where it is"
    )]
    MissingTool {
        tool: String,
        lang: &'static str,
        install: String,
        /// The environment variable that names the tool.
        env: &'static str,
    },
    #[error(
        "the wasm32-wasip2 target is not installed; install it with: rustup target add wasm32-wasip2"
    )]
    MissingTarget,
    #[error("building {dir} failed:\n{output}")]
    Failed { dir: PathBuf, output: String },
    #[error("building {0} produced no component (is the crate a `cdylib`?)")]
    NoComponent(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A built plugin.
#[derive(Debug, Clone)]
pub struct Built {
    pub lang: Lang,
    pub component: PathBuf,
    /// False when the cached output was still good.
    pub rebuilt: bool,
    pub elapsed: Duration,
}

/// The language of the plugin in `dir`.
pub fn detect(dir: &Path) -> Result<Lang, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::NotADirectory(dir.to_path_buf()));
    }
    if dir.join("Cargo.toml").is_file() {
        return Ok(Lang::Rust);
    }
    if dir.join("app.py").is_file() {
        return Ok(Lang::Python);
    }
    if dir.join("package.json").is_file() {
        return Ok(Lang::Js);
    }
    let has_c = std::fs::read_dir(dir)
        .map_err(|e| BuildError::Io(dir.to_path_buf(), e))?
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "c"));
    if has_c {
        return Ok(Lang::C);
    }
    Err(BuildError::UnknownLanguage(dir.to_path_buf()))
}

/// Build the plugin in `dir`.
pub fn build(dir: &Path) -> Result<Built, BuildError> {
    let start = Instant::now();
    let lang = detect(dir)?;
    // Tools run in the plugin's directory: give them absolute paths.
    let dir = &dir
        .canonicalize()
        .map_err(|e| BuildError::Io(dir.to_path_buf(), e))?;
    let (component, rebuilt) = match lang {
        Lang::Rust => (rust::build(dir)?, true),
        Lang::Python => cached(dir, lang, &python::inputs(dir)?, |out, wit| {
            python::build(dir, out, wit)
        })?,
        Lang::Js => cached(dir, lang, &js::inputs(dir)?, |out, wit| {
            js::build(dir, out, wit)
        })?,
        Lang::C => cached(dir, lang, &c::inputs(dir)?, |out, wit| {
            c::build(dir, out, wit)
        })?,
    };
    // Best effort: a plugin directory that cannot be written to is built
    // again next time, not refused.
    if let Err(e) = note_build(dir, lang, &component) {
        tracing::debug!("cannot note the build of {}: {e}", dir.display());
    }
    Ok(Built {
        lang,
        component,
        rebuilt,
        elapsed: start.elapsed(),
    })
}

/// The plugin in `dir` as last built, if the sources it was built from are
/// unchanged (no tool is run to tell); else built now. See the module.
pub fn prepare(dir: &Path) -> Result<Built, BuildError> {
    let start = Instant::now();
    let lang = detect(dir)?;
    let dir = &dir
        .canonicalize()
        .map_err(|e| BuildError::Io(dir.to_path_buf(), e))?;
    let build_dir = dir.join(BUILD_DIR);
    let hash = sources_hash(dir, lang)?;
    let recorded = std::fs::read_to_string(build_dir.join(SOURCES_STAMP)).ok();
    let component = std::fs::read_to_string(build_dir.join(COMPONENT_NOTE))
        .ok()
        .map(|p| PathBuf::from(p.trim()));
    if let (Some(recorded), Some(component)) = (recorded, component)
        && recorded.trim() == hash
        && component.is_file()
    {
        return Ok(Built {
            lang,
            component,
            rebuilt: false,
            elapsed: start.elapsed(),
        });
    }
    build(dir)
}

/// Where [`build`] notes what [`prepare`] reuses: the hash of the sources
/// alone, and the component's path.
const SOURCES_STAMP: &str = "sources.sha256";
const COMPONENT_NOTE: &str = "component.path";

/// A hash of what a plugin is built from, without asking any tool: its
/// source files (and, for Rust, those of its `path` dependencies) and the
/// WIT.
fn sources_hash(dir: &Path, lang: Lang) -> Result<String, BuildError> {
    let mut files = match lang {
        Lang::Rust => rust::source_files(dir),
        Lang::Python => sources(dir, &["py"]),
        Lang::Js => sources(dir, &["js", "mjs", "json"]),
        Lang::C => sources(dir, &["c", "h"]),
    };
    files.sort();
    files.dedup();
    let mut h = Sha256::new();
    h.update(lang.name());
    h.update(STEP_WIT);
    for f in &files {
        h.update(f.to_string_lossy().as_bytes());
        h.update(std::fs::read(f).map_err(|e| BuildError::Io(f.clone(), e))?);
    }
    Ok(hex::encode(h.finalize()))
}

/// After a build: note its sources and output for [`prepare`].
fn note_build(dir: &Path, lang: Lang, component: &Path) -> Result<(), BuildError> {
    let build_dir = dir.join(BUILD_DIR);
    let io = |e| BuildError::Io(build_dir.clone(), e);
    std::fs::create_dir_all(&build_dir).map_err(io)?;
    std::fs::write(build_dir.join(".gitignore"), "*\n").map_err(io)?;
    std::fs::write(
        build_dir.join(COMPONENT_NOTE),
        component.to_string_lossy().as_bytes(),
    )
    .map_err(io)?;
    std::fs::write(build_dir.join(SOURCES_STAMP), sources_hash(dir, lang)?).map_err(io)?;
    Ok(())
}

/// What a non-Rust build depends on: source files and the tool's version.
pub(crate) struct Inputs {
    pub files: Vec<PathBuf>,
    pub tool_version: String,
}

/// Run `make(out, wit_dir)` unless the output for these exact inputs exists.
fn cached(
    dir: &Path,
    lang: Lang,
    inputs: &Inputs,
    make: impl FnOnce(&Path, &Path) -> Result<(), BuildError>,
) -> Result<(PathBuf, bool), BuildError> {
    let build_dir = dir.join(BUILD_DIR);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| BuildError::Io(p, e)
    };
    let mut h = Sha256::new();
    h.update(lang.name());
    h.update(&inputs.tool_version);
    h.update(STEP_WIT);
    for f in &inputs.files {
        h.update(
            f.strip_prefix(dir)
                .unwrap_or(f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(std::fs::read(f).map_err(io(f))?);
    }
    let hash = hex::encode(h.finalize());
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "step".into());
    let out = build_dir.join(format!("{name}.wasm"));
    let stamp = build_dir.join("inputs.sha256");
    if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok((out, false));
    }
    let wit = build_dir.join("wit");
    std::fs::create_dir_all(&wit).map_err(io(&wit))?;
    std::fs::write(wit.join("step.wit"), STEP_WIT).map_err(io(&wit))?;
    std::fs::write(build_dir.join(".gitignore"), "*\n").map_err(io(&build_dir))?;
    let _ = std::fs::remove_file(&stamp);
    make(&out, &wit)?;
    std::fs::write(&stamp, hash).map_err(io(&stamp))?;
    Ok((out, true))
}

/// Files under `dir` (not in build or dependency folders) with one of
/// `exts`, sorted.
pub(crate) fn sources(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    fn walk(d: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.')
                || name == "node_modules"
                || name == "target"
                || name == "__pycache__"
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, exts, out);
            } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, exts, &mut out);
    out.sort();
    out
}

/// Find a tool: `$env`, then `PATH`, then `toolchains/<rel>` in `dir` or a
/// parent.
pub(crate) fn find_tool(env: &str, name: &str, rel: &str, dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for p in std::env::split_paths(&paths) {
            let candidate = p.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let here = dir.canonicalize().ok();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.canonicalize().ok());
    [here, exe]
        .iter()
        .flatten()
        .flat_map(|start| start.ancestors())
        .map(|a| a.join("toolchains").join(rel))
        .find(|p| p.is_file())
}

/// The first line a tool prints for `--version`.
pub(crate) fn tool_version(tool: &Path) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

/// Run a build command; its output becomes the error on failure.
pub(crate) fn run(cmd: &mut Command, dir: &Path) -> Result<(), BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Io(dir.to_path_buf(), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    Err(BuildError::Failed {
        dir: dir.to_path_buf(),
        output: text.trim().to_string(),
    })
}
