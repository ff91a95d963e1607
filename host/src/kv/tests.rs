//! The decisions of step state, without a broker: what reads see, what
//! writes may be, and what a commit finds still true.

use std::collections::BTreeMap;

use super::*;

fn txn() -> Txn {
    Txn::new("reserve", &["stock".to_string()], KvLimits::default())
}

/// A committed state as a store keeps it: entries with versions, bucket
/// versions, a clock that never gives a version twice.
#[derive(Default)]
struct Store {
    entries: BTreeMap<(String, String), (Vec<u8>, Version)>,
    buckets: BTreeMap<String, Version>,
    clock: Version,
}

impl Store {
    fn read(&self, t: &mut Txn, b: &str, k: &str) -> Option<Vec<u8>> {
        if let View::Known(v) = t.view(b, k).unwrap() {
            return v.map(<[u8]>::to_vec);
        }
        let (v, ver) = match self.entries.get(&(b.into(), k.into())) {
            Some((v, ver)) => (Some(v.clone()), *ver),
            None => (None, 0),
        };
        t.saw(b, k, v.clone(), ver).unwrap();
        v
    }

    fn list(&self, t: &mut Txn, b: &str) -> Vec<String> {
        if !t.has_listed(b) {
            let keys = self
                .entries
                .keys()
                .filter(|(bb, _)| bb == b)
                .map(|(_, k)| k.clone())
                .collect();
            t.listed(b, keys, self.buckets.get(b).copied().unwrap_or(0))
                .unwrap();
        }
        t.keys(b).unwrap()
    }

    fn commit(&mut self, w: &Writes) -> Result<(), Conflict> {
        check(
            w,
            |b, k| self.entries.get(&(b.into(), k.into())).map_or(0, |e| e.1),
            |b| self.buckets.get(b).copied().unwrap_or(0),
        )?;
        for (b, k, v) in &w.writes {
            self.clock += 1;
            self.buckets.insert(b.clone(), self.clock);
            match v {
                Some(v) => self
                    .entries
                    .insert((b.clone(), k.clone()), (v.clone(), self.clock)),
                None => self.entries.remove(&(b.clone(), k.clone())),
            };
        }
        Ok(())
    }
}

#[test]
fn a_step_opens_its_own_bucket_and_those_granted_and_no_other() {
    let t = txn();
    assert_eq!(t.open("").unwrap(), "reserve");
    assert_eq!(t.open("reserve").unwrap(), "reserve");
    assert_eq!(t.open("stock").unwrap(), "stock");
    let e = t.open("payments").unwrap_err();
    assert_eq!(
        e.to_string(),
        "bucket \"payments\" is not granted to step `reserve` (grants.kv)"
    );
}

#[test]
fn reads_see_the_committed_state_and_the_invocations_own_writes() {
    let mut s = Store::default();
    let mut seed = txn();
    seed.set("stock", "tea", b"5".to_vec()).unwrap();
    s.commit(&seed.into_writes()).unwrap();

    let mut t = txn();
    assert_eq!(t.view("stock", "tea").unwrap(), View::Unread);
    assert_eq!(s.read(&mut t, "stock", "tea"), Some(b"5".to_vec()));
    t.set("stock", "tea", b"4".to_vec()).unwrap();
    assert_eq!(
        t.view("stock", "tea").unwrap(),
        View::Known(Some(&b"4"[..]))
    );
    t.delete("stock", "tea").unwrap();
    assert_eq!(t.view("stock", "tea").unwrap(), View::Known(None));
    // The version kept is the first one read, whatever was seen after.
    t.saw("stock", "tea", Some(b"9".to_vec()), 99).unwrap();
    let w = t.into_writes();
    assert_eq!(w.reads, vec![("stock".into(), "tea".into(), 1)]);
    assert_eq!(w.writes, vec![("stock".into(), "tea".into(), None)]);
}

#[test]
fn a_commit_whose_reads_changed_is_refused_and_applies_nothing() {
    let mut s = Store::default();
    let mut a = txn();
    let mut b = txn();
    // Both read the counter (absent: 0) and both add one.
    assert_eq!(s.read(&mut a, "stock", "tea"), None);
    assert_eq!(s.read(&mut b, "stock", "tea"), None);
    assert_eq!(a.increment("stock", "tea", 1).unwrap(), 1);
    assert_eq!(b.increment("stock", "tea", 1).unwrap(), 1);
    b.set("stock", "other", b"x".to_vec()).unwrap();
    s.commit(&a.into_writes()).unwrap();
    let e = s.commit(&b.into_writes()).unwrap_err();
    assert_eq!(e.to_string(), "stock/tea changed (version 0 read, 1 now)");
    assert!(!s.entries.contains_key(&("stock".into(), "other".into())));
    // Run again, it sees the first one's write and commits.
    let mut b = txn();
    assert_eq!(s.read(&mut b, "stock", "tea"), Some(b"1".to_vec()));
    assert_eq!(b.increment("stock", "tea", 1).unwrap(), 2);
    s.commit(&b.into_writes()).unwrap();
    assert_eq!(s.entries[&("stock".into(), "tea".into())].0, b"2");
}

#[test]
fn an_entry_deleted_and_written_again_is_not_taken_for_unchanged() {
    let mut s = Store::default();
    let mut seed = txn();
    seed.set("stock", "tea", b"5".to_vec()).unwrap();
    s.commit(&seed.into_writes()).unwrap();
    let mut reader = txn();
    s.read(&mut reader, "stock", "tea");
    reader.set("stock", "log", b"saw 5".to_vec()).unwrap();
    for v in [None, Some(b"5".to_vec())] {
        let mut t = txn();
        match v {
            Some(v) => t.set("stock", "tea", v).unwrap(),
            None => t.delete("stock", "tea").unwrap(),
        }
        s.commit(&t.into_writes()).unwrap();
    }
    assert!(s.commit(&reader.into_writes()).is_err());
}

#[test]
fn read_only_invocations_are_checked_too() {
    let mut s = Store::default();
    let mut t = txn();
    s.read(&mut t, "stock", "a");
    let mut other = txn();
    other.set("stock", "a", b"1".to_vec()).unwrap();
    other.set("stock", "b", b"1".to_vec()).unwrap();
    s.commit(&other.into_writes()).unwrap();
    // `t` would now see b = 1 with a absent: two states at once.
    assert_eq!(s.read(&mut t, "stock", "b"), Some(b"1".to_vec()));
    let w = t.into_writes();
    assert!(w.writes.is_empty());
    assert!(matches!(s.commit(&w), Err(Conflict::Key { .. })));
}

#[test]
fn listing_merges_own_writes_and_a_bucket_written_since_conflicts() {
    let mut s = Store::default();
    let mut seed = txn();
    for k in ["a", "b", "c"] {
        seed.set("stock", k, b"1".to_vec()).unwrap();
    }
    s.commit(&seed.into_writes()).unwrap();
    let mut t = txn();
    t.delete("stock", "b").unwrap();
    t.set("stock", "d", b"1".to_vec()).unwrap();
    assert_eq!(s.list(&mut t, "stock"), ["a", "c", "d"]);
    // Absent from the listing: known absent without the broker.
    assert_eq!(t.view("stock", "zz").unwrap(), View::Known(None));
    let mut other = txn();
    other.set("stock", "e", b"1".to_vec()).unwrap();
    s.commit(&other.into_writes()).unwrap();
    assert_eq!(
        s.commit(&t.into_writes()),
        Err(Conflict::Bucket {
            bucket: "stock".into()
        })
    );
}

#[test]
fn sizes_and_writes_are_limited_inside_the_guest() {
    let limits = KvLimits {
        max_key_bytes: 4,
        max_value_bytes: 3,
        max_writes: 2,
        ..KvLimits::default()
    };
    let mut t = Txn::new("s", &[], limits);
    assert_eq!(t.set("s", "", vec![]), Err(KvError::EmptyKey));
    assert_eq!(
        t.view("s", "12345"),
        Err(KvError::KeyTooLong { len: 5, max: 4 })
    );
    assert!(matches!(
        t.set("s", "k", b"1234".to_vec()),
        Err(KvError::ValueTooLarge { len: 4, max: 3, .. })
    ));
    t.set("s", "a", b"1".to_vec()).unwrap();
    t.set("s", "b", b"1".to_vec()).unwrap();
    // Writing a key again is not another write.
    t.set("s", "a", b"2".to_vec()).unwrap();
    t.delete("s", "b").unwrap();
    assert_eq!(t.delete("s", "c"), Err(KvError::TooManyWrites { max: 2 }));
}

#[test]
fn counters_are_decimal_and_do_not_overflow() {
    assert_eq!(counter("k", None), Ok(0));
    assert_eq!(counter("k", Some(b"42")), Ok(42));
    for bad in [&b""[..], b"-1", b"4 2", b"x", b"99999999999999999999"] {
        assert!(counter("k", Some(bad)).is_err(), "{bad:?}");
    }
    let mut t = txn();
    t.saw("stock", "n", Some(u64::MAX.to_string().into_bytes()), 3)
        .unwrap();
    assert!(matches!(
        t.increment("stock", "n", 1),
        Err(KvError::Overflow { .. })
    ));
}

#[test]
fn bucket_names() {
    for ok in ["stock", "a", "inventory-2", "x_y", &"a".repeat(64)] {
        assert!(valid_bucket(ok), "{ok}");
    }
    for bad in [
        "",
        "Stock",
        "-a",
        "_a",
        "a.b",
        "a/b",
        "a b",
        &"a".repeat(65),
    ] {
        assert!(!valid_bucket(bad), "{bad}");
    }
}

#[test]
fn the_trace_names_the_keys_written() {
    let mut t = txn();
    t.set("stock", "tea", b"1".to_vec()).unwrap();
    t.delete("reserve", "o-1").unwrap();
    t.set("stock", "coffee", b"1".to_vec()).unwrap();
    let w = t.into_writes();
    let (by, more) = w.written();
    assert_eq!(by["stock"], ["coffee", "tea"]);
    assert_eq!(by["reserve"], ["o-1"]);
    assert_eq!(more, 0);
    // A record names a bounded number of keys, and counts the rest.
    let mut t = txn();
    for i in 0..MAX_RECORDED_KEYS + 5 {
        t.set("stock", &format!("k{i:04}"), b"1".to_vec()).unwrap();
    }
    let w = t.into_writes();
    let (by, more) = w.written();
    assert_eq!(by["stock"].len(), MAX_RECORDED_KEYS);
    assert_eq!(more, 5);
}

/// Reads have limits of their own, the same on both brokers: how many keys
/// one invocation reads, and how many bytes of keys and values the host
/// holds for it (1.4 million absent keys read by one invocation grew the
/// host by a gigabyte; on NATS they overflowed the commit's message).
#[test]
fn reads_are_bounded_in_keys_and_bytes() {
    let limits = KvLimits {
        max_reads: 3,
        max_read_bytes: 40,
        ..KvLimits::default()
    };
    let mut t = Txn::new("s", &[], limits);
    for k in ["a", "b", "c"] {
        assert_eq!(t.view("s", k), Ok(View::Unread));
        t.saw("s", k, None, 0).unwrap();
    }
    // Read before, or written: known, no new read.
    assert_eq!(t.view("s", "a"), Ok(View::Known(None)));
    t.set("s", "w", b"1".to_vec()).unwrap();
    assert_eq!(t.view("s", "w"), Ok(View::Known(Some(&b"1"[..]))));
    assert_eq!(t.view("s", "d"), Err(KvError::TooManyReads { max: 3 }));
    let e = KvError::TooManyReads { max: 3 }.to_string();
    assert!(e.contains("limits.kv.max_reads"), "{e}");

    let mut t = Txn::new("s", &[], limits_bytes(40));
    t.saw("s", "k1", Some(vec![b'x'; 30]), 1).unwrap();
    let e = t.saw("s", "k2", Some(vec![b'x'; 10]), 1).unwrap_err();
    assert_eq!(e, KvError::ReadTooMuch { bytes: 46, max: 40 });
    assert_eq!(t.view("s", "k2"), Ok(View::Unread), "not kept");
}

fn limits_bytes(max_read_bytes: usize) -> KvLimits {
    KvLimits {
        max_read_bytes,
        ..KvLimits::default()
    }
}
