//! The keys a step's state commits in flight will write, so that an
//! invocation that read one of them is not committed on a read that is
//! already stale.
//!
//! Workers hand state commits to the broker without waiting for them. An
//! invocation that read a key a commit in flight writes would be refused
//! at its own commit (what it read is about to change), and on a hot key
//! most would be: each rerun would read the same stale value while the
//! pipeline of commits drains. So before its commit an invocation claims
//! the keys it writes, and one that read a key claimed by a commit in
//! flight waits for that commit to end and runs again instead. Commits of
//! different keys stay pipelined; commits of one key go one at a time.
//! (Across steps sharing a bucket the broker's check still decides.)

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use super::Writes;

/// A step's claims (see the module).
#[derive(Debug, Default)]
pub struct InFlight {
    /// Claimed keys, by bucket, with how many commits in flight write each.
    keys: Mutex<HashMap<String, HashMap<String, u32>>>,
    released: Condvar,
}

/// The keys one commit claimed: released when its verdict is known.
#[derive(Debug)]
pub struct Claimed(Vec<(String, String)>);

fn stale(keys: &HashMap<String, HashMap<String, u32>>, w: &Writes) -> bool {
    w.reads
        .iter()
        .any(|(b, k, _)| keys.get(b).is_some_and(|m| m.contains_key(k)))
        || w.lists
            .iter()
            .any(|(b, _)| keys.get(b).is_some_and(|m| !m.is_empty()))
}

impl InFlight {
    /// Claim the keys `w` writes, unless it read one a commit in flight
    /// writes (`None`: wait with [`InFlight::wait`], then run it again).
    pub fn claim(&self, w: &Writes) -> Option<Claimed> {
        let mut keys = self.keys.lock().expect("in-flight lock");
        if stale(&keys, w) {
            return None;
        }
        let claimed: Vec<(String, String)> = w
            .writes
            .iter()
            .map(|(b, k, _)| (b.clone(), k.clone()))
            .collect();
        for (b, k) in &claimed {
            *keys
                .entry(b.clone())
                .or_default()
                .entry(k.clone())
                .or_default() += 1;
        }
        Some(Claimed(claimed))
    }

    /// Wait until no commit in flight writes a key `w` read.
    pub fn wait(&self, w: &Writes) {
        let mut keys = self.keys.lock().expect("in-flight lock");
        while stale(&keys, w) {
            keys = self.released.wait(keys).expect("in-flight lock");
        }
    }

    /// The commit that claimed `c` has its verdict.
    pub fn release(&self, c: Claimed) {
        let mut keys = self.keys.lock().expect("in-flight lock");
        for (b, k) in c.0 {
            if let Some(m) = keys.get_mut(&b) {
                if let Some(n) = m.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&k);
                    }
                }
                if m.is_empty() {
                    keys.remove(&b);
                }
            }
        }
        drop(keys);
        self.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rw(read: &[&str], write: &[&str]) -> Writes {
        Writes {
            reads: read
                .iter()
                .map(|k| ("b".into(), k.to_string(), 1))
                .collect(),
            lists: Vec::new(),
            writes: write
                .iter()
                .map(|k| ("b".into(), k.to_string(), Some(vec![])))
                .collect(),
        }
    }

    #[test]
    fn a_read_of_a_key_in_flight_waits_for_its_commit() {
        let f = Arc::new(InFlight::default());
        let first = f.claim(&rw(&["count"], &["count"])).unwrap();
        // Another key: pipelined.
        let other = f.claim(&rw(&["tea"], &["tea"])).unwrap();
        // The same key: stale.
        let hot = rw(&["count"], &["count"]);
        assert!(f.claim(&hot).is_none());
        // A listing of the bucket is stale too.
        let listing = Writes {
            lists: vec![("b".into(), 3)],
            ..Writes::default()
        };
        assert!(f.claim(&listing).is_none());
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || f.wait(&rw(&["count"], &[])))
        };
        f.release(first);
        waiter.join().unwrap();
        assert!(f.claim(&hot).is_some());
        f.release(other);
    }
}
