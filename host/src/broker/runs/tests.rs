//! The index against a model: every page of every query is what filtering
//! and sorting every entry gives, and paging visits each match once.

use proptest::prelude::*;

use super::*;

/// A UUID v7 as the orchestrator draws one, at `ms`.
fn v7(ms: u64, rand: u64) -> String {
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    let mut id = *uuid::Uuid::new_v7(ts).as_bytes();
    id[8..16].copy_from_slice(&rand.to_be_bytes());
    id[8] = (id[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(id).to_string()
}

#[test]
fn an_id_floor_is_below_every_id_of_its_millisecond_and_above_the_last() {
    for ms in [0, 1, 65_535, 65_536, 1_765_000_000_000, 1_765_000_000_999] {
        let floor = id_floor(ms);
        for rand in [0, 1, u64::MAX] {
            assert!(floor <= v7(ms, rand), "{floor} > {}", v7(ms, rand));
            if ms > 0 {
                assert!(v7(ms - 1, rand) < floor);
            }
        }
    }
}

fn entry(ms: u64, rand: u64, flow: u8, state: u8, key: Option<u8>) -> RunEntry {
    RunEntry {
        id: v7(ms, rand),
        flow: format!("f{flow}"),
        state: ["running", "completed", "failed"][state as usize].to_string(),
        created_ms: ms,
        updated_ms: ms,
        deployment: None,
        key: key.map(|k| format!("k{k}")),
        error: None,
    }
}

fn entries() -> impl Strategy<Value = Vec<RunEntry>> {
    prop::collection::vec(
        (
            0u64..50,
            any::<u64>(),
            0u8..3,
            0u8..3,
            prop::option::of(0u8..4),
        ),
        0..80,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(ms, r, f, s, k)| entry(1_000_000 + ms, r, f, s, k))
            .collect()
    })
}

fn queries() -> impl Strategy<Value = RunQuery> {
    (
        prop::option::of(0u8..3),
        prop::option::of(0u8..3),
        prop::option::of(0u64..50),
        prop::option::of(0u64..50),
        prop::option::of(0u8..4),
        1usize..7,
    )
        .prop_map(|(f, s, since, until, k, limit)| RunQuery {
            flow: f.map(|f| format!("f{f}")),
            state: s.map(|s| ["running", "completed", "failed"][s as usize].to_string()),
            since_ms: since.map(|m| 1_000_000 + m),
            until_ms: until.map(|m| 1_000_000 + m),
            key: k.map(|k| format!("k{k}")),
            limit,
            after: None,
        })
}

proptest! {
    #[test]
    fn paging_a_query_yields_what_filtering_every_entry_yields(
        es in entries(),
        updates in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3), 0..20),
        removes in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        q in queries(),
    ) {
        let mut index = MemIndex::default();
        let mut model: BTreeMap<String, RunEntry> = BTreeMap::new();
        for e in es {
            model.insert(e.id.clone(), e.clone());
            index.put(e);
        }
        if !model.is_empty() {
            for (i, s) in updates {
                let id = model.keys().nth(i.index(model.len())).unwrap().clone();
                let mut e = model[&id].clone();
                e.state = ["running", "completed", "failed"][s as usize].to_string();
                model.insert(id, e.clone());
                index.put(e);
            }
            for i in removes {
                if model.is_empty() { break }
                let id = model.keys().nth(i.index(model.len())).unwrap().clone();
                model.remove(&id);
                index.remove(&id);
            }
        }
        let want: Vec<&RunEntry> = model
            .values()
            .rev()
            .filter(|e| q.flow.as_ref().is_none_or(|f| *f == e.flow))
            .filter(|e| q.state.as_ref().is_none_or(|s| *s == e.state))
            .filter(|e| q.key.as_ref().is_none_or(|k| e.key.as_ref() == Some(k)))
            .filter(|e| q.since_ms.is_none_or(|t| e.created_ms >= t))
            .filter(|e| q.until_ms.is_none_or(|t| e.created_ms < t))
            .collect();
        let mut got = Vec::new();
        let mut q = q;
        loop {
            let page = index.query(&q);
            prop_assert!(page.runs.len() <= q.limit);
            got.extend(page.runs.clone());
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
            prop_assert!(got.len() <= model.len());
        }
        let got: Vec<&RunEntry> = got.iter().collect();
        prop_assert_eq!(got, want);
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for e in model.values() {
            *counts.entry((e.flow.clone(), e.state.clone())).or_default() += 1;
        }
        let counted: BTreeMap<(String, String), u64> = index
            .counts()
            .into_iter()
            .map(|c| ((c.flow, c.state), c.count))
            .collect();
        prop_assert_eq!(counted, counts);
        prop_assert_eq!(index.len(), model.len());
    }
}

#[test]
fn ended_runs_older_than_the_horizon_are_forgotten_and_no_others() {
    let mut index = MemIndex::default();
    index.put(entry(1_000, 1, 0, 1, None));
    index.put(entry(2_000, 1, 0, 2, None));
    index.put(entry(500, 1, 0, 0, None));
    assert_eq!(
        index.forget_ended_before(&["completed", "failed"], 1_500),
        1
    );
    let left: Vec<String> = index
        .query(&RunQuery {
            limit: 10,
            ..RunQuery::default()
        })
        .runs
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(left, ["failed", "running"]);
}
