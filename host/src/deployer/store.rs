//! What a host keeps of each deployment it made or loaded, by digest, in
//! `.troupe/deployments/`: the components (`components/SHA256.wasm`) and
//! the manifests (`manifests/SHA256.toml`), so a deployment can be loaded
//! again (a run pinned to it, after a restart; a rollback) whatever has
//! become of the files it came from. The broker holds the record of each
//! deployment (contracts, flows, digests); the bytes of components stay on
//! the machines that run them, as container images do.
//!
//! Files are written whole (a temporary name, then a rename) and named by
//! the digest of their content, which is checked again when read.

use std::path::{Path, PathBuf};

use crate::deploy::sha256;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of the app whose state folder is `state_dir`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.join("deployments"),
        }
    }

    fn component_path(&self, digest: &str) -> PathBuf {
        self.dir.join("components").join(format!("{digest}.wasm"))
    }

    fn manifest_path(&self, digest: &str) -> PathBuf {
        self.dir.join("manifests").join(format!("{digest}.toml"))
    }

    /// Keep `bytes`, whose SHA-256 is `digest`, as a component.
    pub fn put_component(&self, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
        put(&self.component_path(digest), bytes)
    }

    /// The file of component `digest`, if this host keeps it (and it is
    /// still what its name says).
    pub fn component(&self, digest: &str) -> Option<PathBuf> {
        let p = self.component_path(digest);
        let bytes = std::fs::read(&p).ok()?;
        (sha256(&bytes) == digest).then_some(p)
    }

    pub fn put_manifest(&self, digest: &str, text: &str) -> std::io::Result<()> {
        put(&self.manifest_path(digest), text.as_bytes())
    }

    /// The manifest `digest`, if this host keeps it.
    pub fn manifest(&self, digest: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.manifest_path(digest)).ok()?;
        (sha256(text.as_bytes()) == digest).then_some(text)
    }
}

/// Write `bytes` to `path` whole, unless a file is there already (its name
/// is its content's digest).
fn put(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.part-{}",
        path.file_name().expect("a name").to_string_lossy(),
        std::process::id()
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the folder is.
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_kept_reads_back_by_digest_and_a_changed_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let d = sha256(b"component");
        assert_eq!(s.component(&d), None);
        s.put_component(&d, b"component").unwrap();
        let p = s.component(&d).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"component");
        std::fs::write(&p, b"tampered").unwrap();
        assert_eq!(
            s.component(&d),
            None,
            "a file no longer its digest is not used"
        );
        let m = sha256(b"name = \"a\"");
        s.put_manifest(&m, "name = \"a\"").unwrap();
        assert_eq!(s.manifest(&m).as_deref(), Some("name = \"a\""));
    }
}
