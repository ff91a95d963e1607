//! Contracts, once: what a component's `describe` answered, kept beside
//! the compiled artifacts so that commands that only need contracts
//! (`check`, `docs`, `graph`, `publish`) never instantiate a guest.
//!
//! A step's contract is a pure function of its component, so it is keyed
//! by the component's digest (`<sha256>.contract.json`). Finding the digest
//! of a 20 MB component would cost more than the command itself, so a
//! second file remembers it for the component file as it was last seen
//! (`stat-<hash of path, size, mtime>`): a component that changes gets a
//! new size or mtime, hence a new digest, hence a new contract.
//!
//! Files are written whole (temporary, then rename); one that does not
//! read back is ignored, and the step is described again.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::contract::StepContract;
use crate::contract::json::{from_json, to_json};
use crate::world::Contract;

/// The contract cache of an app (`.troupe/cache`, shared with the
/// artifacts).
pub struct ContractCache {
    dir: PathBuf,
}

impl ContractCache {
    pub fn new(dir: impl Into<PathBuf>) -> ContractCache {
        ContractCache { dir: dir.into() }
    }

    /// The contract of the component at `path`, if it was seen before.
    pub fn get(&self, path: &Path) -> Option<Contract> {
        let digest = std::fs::read_to_string(self.dir.join(stat_key(path)?)).ok()?;
        let text = std::fs::read_to_string(self.contract_file(digest.trim())).ok()?;
        from_json(&serde_json::from_str(&text).ok()?)
    }

    /// Remember `contract` for the component at `path`, whose sha256 is
    /// `digest`. Best effort: a cache that cannot be written only costs
    /// time later.
    pub fn put(&self, path: &Path, digest: &str, contract: &StepContract) {
        let Some(key) = stat_key(path) else {
            return;
        };
        let text = to_json(contract).to_string();
        let _ = std::fs::create_dir_all(&self.dir);
        let _ = super::cache::write_whole(&self.contract_file(digest), text.as_bytes());
        let _ = super::cache::write_whole(&self.dir.join(key), digest.as_bytes());
    }

    fn contract_file(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.contract.json"))
    }
}

/// The name of the file that remembers the digest of `path` as it is now.
fn stat_key(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    let mut h = Sha256::new();
    h.update(path.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(mtime.as_nanos().to_le_bytes());
    Some(format!("stat-{}", hex::encode(&h.finalize()[..16])))
}
