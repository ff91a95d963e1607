//! C plugins: every `.c` file of the directory, compiled with clang for
//! `wasm32-wasi` (Debian's `clang`, `lld` and `wasi-libc`) against bindings
//! generated here with wit-bindgen's C generator, then wrapped into a
//! component with the WASI preview1 adapter that matches this host's
//! wasmtime. Only clang is needed outside `troupe`.
//!
//! The bindings (`step.h`, `step.c`) are written to `DIR/.troupe-build/gen`
//! so the plugin's sources can `#include "step.h"`. A step whose sources
//! call `wasi_keyvalue_...` (step state) gets the bindings of the
//! `troupe:step-kv/step-kv` world instead: `step_kv.h`, whose names start
//! with `step_kv_` and `exports_step_kv_`.

use std::path::{Path, PathBuf};
use std::process::Command;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::Files;

use super::{BUILD_DIR, BuildError, Inputs, find_tool, run, sources, tool_version};

const INSTALL: &str = "apt-get install clang lld wasi-libc";

fn tool(dir: &Path) -> Result<PathBuf, BuildError> {
    find_tool("TROUPE_CLANG", "clang", "c/bin/clang", dir).ok_or_else(|| BuildError::MissingTool {
        tool: "clang".into(),
        lang: "C",
        install: INSTALL.into(),
        env: "TROUPE_CLANG",
    })
}

pub(super) fn inputs(dir: &Path) -> Result<Inputs, BuildError> {
    let mut files = sources(dir, &["c", "h"]);
    files.retain(|f| !f.starts_with(dir.join(BUILD_DIR)));
    Ok(Inputs {
        files,
        tool_version: tool_version(&tool(dir)?),
    })
}

fn failed(dir: &Path, what: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError::Failed {
        dir: dir.to_path_buf(),
        output: format!("{what}: {e:#}"),
    }
}

/// Whether the step's sources use `wasi:keyvalue` (then its bindings are
/// those of the `step-kv` world).
fn uses_kv(dir: &Path) -> bool {
    super::sources_contain(dir, &["c"], &["wasi_keyvalue_"])
}

/// Generate the C bindings of the `step` (or `step-kv`) world into `gen`.
fn bindings(dir: &Path, wit: &Path, gen_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let (folder, world) = if uses_kv(dir) {
        (super::kv_wit_beside(wit)?, "step-kv")
    } else {
        (wit.to_path_buf(), "step")
    };
    let mut resolve = wit_bindgen_core::wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(&folder)
        .map_err(|e| failed(dir, "reading the WIT", e))?;
    let world = resolve
        .select_world(&[pkg], Some(world))
        .map_err(|e| failed(dir, "selecting the step world", e))?;
    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| failed(dir, "generating C bindings", e))?;
    std::fs::create_dir_all(gen_dir).map_err(|e| BuildError::Io(gen_dir.to_path_buf(), e))?;
    let mut objects = Vec::new();
    for (name, contents) in files.iter() {
        let p = gen_dir.join(name);
        std::fs::write(&p, contents).map_err(|e| BuildError::Io(p.clone(), e))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            objects.push(p);
        }
    }
    Ok(objects)
}

pub(super) fn build(dir: &Path, out: &Path, wit: &Path) -> Result<(), BuildError> {
    let build_dir = dir.join(BUILD_DIR);
    let gen_dir = build_dir.join("gen");
    let generated = bindings(dir, wit, &gen_dir)?;
    let core = build_dir.join("step.core.wasm");
    let mut cmd = Command::new(tool(dir)?);
    cmd.args([
        "--target=wasm32-wasi",
        "-O2",
        "-s",
        "-mexec-model=reactor",
        "-Wall",
    ])
    .arg("-I")
    .arg(&gen_dir)
    .arg("-o")
    .arg(&core)
    .args(
        sources(dir, &["c"])
            .iter()
            .filter(|f| !f.starts_with(&build_dir)),
    )
    .args(&generated)
    .current_dir(dir);
    run(&mut cmd, dir)?;
    let module = std::fs::read(&core).map_err(|e| BuildError::Io(core.clone(), e))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|e| {
            e.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.encode())
        .map_err(|e| failed(dir, "making a component of the C module", e))?;
    std::fs::write(out, component).map_err(|e| BuildError::Io(out.to_path_buf(), e))
}
