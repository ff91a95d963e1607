//! Partitions of an app's step state on NATS: which partition a key is
//! in, which partitions a log entry touches, and the subjects kept per
//! partition (totals, applied index, lease).
//!
//! An app's keys are split into [`PARTITIONS`] partitions by a hash of
//! bucket and key, the same on every host and every version. Each
//! partition has one leader at a time (`lead.rs`), the only writer of its
//! entries and totals; leaders of different partitions decide and apply
//! at once. Partition 0's rows keep the names the app had before there
//! were partitions (`_b.BUCKET`, `_ap.0`, `_lease.0`), so an app's totals
//! from then stay counted (a bucket's totals are the sum of its
//! partitions').

use sha2::{Digest, Sha256};

use super::{Kv, LogEntry};

/// How many partitions an app's keys are split into. Fixed: every host
/// and every version must agree on it.
pub(super) const PARTITIONS: usize = 16;

/// A set of partitions, bit `N` for partition `N`.
pub(super) type Mask = u32;

/// Every partition.
pub(super) const ALL: Mask = (1 << PARTITIONS) - 1;

/// The partition of `bucket`/`key`.
pub(super) fn partition(bucket: &str, key: &str) -> usize {
    let h = Sha256::new()
        .chain_update(bucket)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let head = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (head % PARTITIONS as u64) as usize
}

/// The partitions of `m`, lowest first.
pub(super) fn each(m: Mask) -> impl Iterator<Item = usize> {
    (0..PARTITIONS).filter(move |n| m & (1 << n) != 0)
}

impl LogEntry {
    /// The partitions deciding this entry needs: those of the keys it read
    /// and writes, and every one if it listed a bucket (a listing reads
    /// them all). An entry that touched no key is partition 0's.
    pub(super) fn partitions(&self) -> Mask {
        if !self.lists.is_empty() {
            return ALL;
        }
        let keys = self.reads.iter().map(|(b, k, _)| (b, k));
        let m = keys
            .chain(self.writes.iter().map(|(b, k, _)| (b, k)))
            .fold(0, |m, (b, k)| m | 1 << partition(b, k));
        if m == 0 { 1 } else { m }
    }
}

/// The partition that decides an entry touching `m`: its lowest.
pub(super) fn home(m: Mask) -> usize {
    m.trailing_zeros() as usize
}

/// How a verdict names partition `n` of `bucket` among its totals.
pub(super) fn totals_key(bucket: &str, n: usize) -> String {
    if n == 0 {
        bucket.to_string()
    } else {
        format!("{bucket}.{n}")
    }
}

impl Kv {
    /// The subject of `bucket`'s totals in partition `n`.
    pub(super) fn totals_subject(&self, bucket: &str, n: usize) -> String {
        format!("{}._b.{}", self.prefix, totals_key(bucket, n))
    }

    /// The subject of a verdict's totals key ([`totals_key`]).
    pub(super) fn totals_subject_of(&self, key: &str) -> String {
        format!("{}._b.{key}", self.prefix)
    }

    pub(super) fn applied_subject(&self, n: usize) -> String {
        format!("{}._ap.{n}", self.prefix)
    }

    pub(super) fn lease_subject(&self, n: usize) -> String {
        format!("{}._lease.{n}", self.prefix)
    }

    pub(super) fn host_subject(&self) -> String {
        format!("{}._host.{}", self.prefix, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Every host and version must agree: pinned values.
        assert_eq!(partition("stock", "count"), partition("stock", "count"));
        let mut seen = [0usize; PARTITIONS];
        for k in 0..1600 {
            seen[partition("b", &format!("k{k}"))] += 1;
        }
        assert!(seen.iter().all(|&n| (50..150).contains(&n)), "{seen:?}");
        assert_ne!(partition("ab", "c"), partition("a", "bc"));
    }

    #[test]
    fn an_entry_touches_its_keys_partitions_and_a_listing_all() {
        let e = |reads: &[(&str, &str)], lists: &[&str]| LogEntry {
            k: "k".into(),
            reply: String::new(),
            reads: reads
                .iter()
                .map(|(b, k)| (b.to_string(), k.to_string(), 0))
                .collect(),
            lists: lists.iter().map(|b| (b.to_string(), 0)).collect(),
            writes: Vec::new(),
            max_keys: 0,
            max_bucket_bytes: 0,
            events: Vec::new(),
        };
        let one = e(&[("b", "k1")], &[]);
        assert_eq!(one.partitions(), 1 << partition("b", "k1"));
        assert_eq!(e(&[], &[]).partitions(), 1);
        assert_eq!(e(&[("b", "k1")], &["b"]).partitions(), ALL);
        assert_eq!(home(0b1010_0000), 5);
        assert_eq!(each(0b101).collect::<Vec<_>>(), vec![0, 2]);
    }
}
