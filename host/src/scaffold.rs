//! `troupe new NAME --lang LANG`: a new plugin directory from a template.
//!
//! Templates live in `host/templates/<lang>/` and are compiled into the
//! binary; `{{name}}` is replaced by the step's name. Every template is a
//! working step (it consumes `NAME.requested`, emits `NAME.done`, rejects
//! malformed data) that builds with `troupe build` and passes
//! `troupe conformance` as generated; a test holds them to that.

use std::path::{Path, PathBuf};

use crate::builder::{Lang, STEP_WIT};
use crate::contract::is_step_name;

/// Why a plugin could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a step name: lower-case letters, digits and `-`, starting with a letter")]
    Name(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

const C_JSON_H: &str = include_str!("../../plugins/shipping-dispatch-c/json.h");
const C_JSON_C: &str = include_str!("../../plugins/shipping-dispatch-c/json.c");

fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("wit/step.wit", STEP_WIT),
            (".gitignore", "/target\n"),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/python/app.py")),
            (".gitignore", ".troupe-build/\n__pycache__/\n"),
        ],
        Lang::Js => vec![
            ("package.json", include_str!("../templates/js/package.json")),
            ("app.js", include_str!("../templates/js/app.js")),
            (".gitignore", ".troupe-build/\nnode_modules/\n"),
        ],
        Lang::C => vec![
            ("step.c", include_str!("../templates/c/step.c")),
            ("json.h", C_JSON_H),
            ("json.c", C_JSON_C),
            (".gitignore", ".troupe-build/\n"),
        ],
    }
}

fn readme(name: &str, lang: Lang) -> String {
    let http = match lang {
        Lang::Rust => "`troupe_step::http::Request` (a blocking client over `wasi:http`)",
        Lang::Python => {
            "`import troupe_http` (`troupe_http.request(method, url, headers, body)`); the step's own types then come from `wit_world.imports.troupe_step_types`"
        }
        Lang::Js => "`fetch` (make `handle` `async`)",
        Lang::C => {
            "the `wasi:http` bindings wit-bindgen generates for the `troupe:step-http` world"
        }
    };
    let kv = match lang {
        Lang::Rust => {
            "`troupe_step::kv::Bucket` (`Bucket::own()`, `Bucket::open(\"stock\")`, `get_json`, `set_json`, `increment`)"
        }
        Lang::Python => {
            "`import troupe_kv` (`troupe_kv.Bucket.open(\"stock\")`, `get`, `set`, `increment`); the step's own types then come from `wit_world.imports.troupe_step_types`"
        }
        Lang::Js => {
            "`import { open } from 'wasi:keyvalue/store@0.2.0-draft'` (`open('stock').get(key)`, `.set(key, bytes)`; a failed call throws)"
        }
        Lang::C => {
            "the `wasi:keyvalue` bindings wit-bindgen generates for the `troupe:step-kv` world"
        }
    };
    let (title, toolchain, wit) = match lang {
        Lang::Rust => (
            "Rust",
            "Needs Rust with `rustup target add wasm32-wasip2`; `cargo build --release --target wasm32-wasip2` works too.",
            "a copy is in `wit/step.wit`, used by `wit_bindgen::generate!`",
        ),
        Lang::Python => (
            "Python",
            "Needs `componentize-py` (`pip install componentize-py==0.25.1`). The step is the `WitWorld` class in `app.py`; types come from `wit_world.imports.types`, and an error is raised as `componentize_py_types.Err(StepError_Reject(...))`.",
            "`troupe build` generates the bindings from the WIT built into `troupe`",
        ),
        Lang::Js => (
            "JavaScript",
            "Needs `componentize-js` (`npm install -g @bytecodealliance/componentize-js@0.23.0`). The step is the ES module `app.js` exporting `describe` and `handle`; an error is thrown as `{ tag: 'reject', val: '...' }`.",
            "`troupe build` generates the bindings from the WIT built into `troupe`",
        ),
        Lang::C => (
            "C",
            "Needs clang for wasm32-wasi (Debian: `apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32`). `troupe build` generates `step.h` into `.troupe-build/gen/`, compiles every `.c` file here, and wraps the module into a component. `json.c` is a small JSON reader and writer for flat records.",
            "`troupe build` generates `step.h` from the WIT built into `troupe`",
        ),
    };
    include_str!("../templates/README.md.tmpl")
        .replace("{{lang}}", title)
        .replace("{{lang_flag}}", lang.name())
        .replace("{{toolchain}}", toolchain)
        .replace("{{wit_note}}", wit)
        .replace("{{http}}", http)
        .replace("{{kv}}", kv)
        .replace("{{name}}", name)
}

/// Create `parent/NAME` with the `lang` template; returns the directory.
pub fn create(parent: &Path, name: &str, lang: Lang) -> Result<PathBuf, ScaffoldError> {
    if !is_step_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let mut all: Vec<(String, String)> = files(lang)
        .into_iter()
        .map(|(p, text)| (p.to_string(), text.replace("{{name}}", name)))
        .collect();
    all.push(("README.md".into(), readme(name, lang)));
    for (rel, text) in all {
        let path = dir.join(rel);
        let parent = path.parent().expect("a file has a parent");
        std::fs::create_dir_all(parent).map_err(|e| ScaffoldError::Io(parent.to_path_buf(), e))?;
        std::fs::write(&path, text).map_err(|e| ScaffoldError::Io(path.clone(), e))?;
    }
    Ok(dir)
}
