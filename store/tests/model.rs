//! Property test against an in-memory model (a map of streams, the global
//! order, an index and snapshots): random appends, conflicting appends,
//! index writes, snapshots and reads, with the database closed and
//! reopened between steps, and the memtable flushed to redb after every
//! group, after a few, or rarely; the log always equals the model.

use std::collections::BTreeMap;

use chronicle_store::{
    IndexOp, MEMTABLE_BYTES, NewEvent, Position, Seq, StoreError, StoreOptions, StreamId,
    WriteRequest,
};
use proptest::prelude::*;

mod common;
use common::Db;

#[derive(Debug, Clone)]
enum Op {
    /// Append `n` events to stream `s`; `skew` 0 = correct expected seq.
    Append {
        s: usize,
        n: usize,
        skew: i64,
    },
    Reopen,
    Read {
        s: usize,
        from: u64,
    },
    ReadAll {
        from: u64,
        limit: usize,
    },
    /// `put` (or insert, failing if present) or delete index key `k`.
    Index {
        k: usize,
        put: Option<u8>,
        insert: bool,
    },
    Snapshot {
        s: usize,
        seq: u64,
        v: u8,
    },
    LoadSnapshot {
        s: usize,
        at: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 1..4usize, prop_oneof![4 => Just(0i64), 1 => -2..3i64])
            .prop_map(|(s, n, skew)| Op::Append { s, n, skew }),
        1 => Just(Op::Reopen),
        2 => (0..4usize, 0..8u64).prop_map(|(s, from)| Op::Read { s, from }),
        1 => (0..30u64, 1..10usize).prop_map(|(from, limit)| Op::ReadAll { from, limit }),
        2 => (0..4usize, proptest::option::of(any::<u8>()), any::<bool>())
            .prop_map(|(k, put, insert)| Op::Index { k, put, insert }),
        1 => (0..4usize, 0..8u64, any::<u8>()).prop_map(|(s, seq, v)| Op::Snapshot { s, seq, v }),
        1 => (0..4usize, 0..9u64).prop_map(|(s, at)| Op::LoadSnapshot { s, at }),
    ]
}

fn options(memtable_bytes: usize, caller_commits: bool) -> StoreOptions {
    StoreOptions {
        memtable_bytes,
        caller_commits,
        ..StoreOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]
    #[test]
    fn log_equals_model(
        ops in proptest::collection::vec(op(), 1..50),
        memtable_bytes in prop_oneof![Just(0usize), Just(400), Just(MEMTABLE_BYTES)],
        caller_commits in any::<bool>(),
    ) {
        check(ops, &Db::redb(), options(memtable_bytes, caller_commits))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    /// The same model on PostgreSQL (a new database per case).
    #[test]
    fn log_equals_model_on_postgres(ops in proptest::collection::vec(op(), 1..50)) {
        check(ops, &Db::postgres(), StoreOptions::default())?;
    }
}

fn check(ops: Vec<Op>, db: &Db, options: StoreOptions) -> Result<(), TestCaseError> {
    let streams: Vec<StreamId> = (0..4)
        .map(|i| StreamId::named(format!("m{i}")).unwrap())
        .collect();
    let mut model: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
    let mut global: Vec<Vec<u8>> = Vec::new();
    // The position of each event of `global` (dense from 1 on redb;
    // increasing on PostgreSQL).
    let mut positions: Vec<u64> = Vec::new();
    let mut index: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut snapshots: BTreeMap<(usize, u64), Vec<u8>> = BTreeMap::new();
    let mut store = db.open_with(options.clone());
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append { s, n, skew } => {
                let len = model.get(&s).map_or(0, Vec::len) as i64;
                let expected = (len + skew).max(0) as u64;
                let payloads: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        counter += 1;
                        format!("{{\"n\":{counter}}}").into_bytes()
                    })
                    .collect();
                let events = payloads
                    .iter()
                    .map(|p| NewEvent::new(1, p.clone()))
                    .collect();
                let r = store.write_blocking(WriteRequest::append(
                    streams[s].clone(),
                    Seq(expected),
                    events,
                ));
                if expected as i64 == len {
                    let out = r.unwrap();
                    prop_assert_eq!(out.len(), n);
                    for (env, p) in out.iter().zip(&payloads) {
                        if db.is_postgres() {
                            prop_assert!(env.position.0 > positions.last().copied().unwrap_or(0));
                        } else {
                            prop_assert_eq!(env.position, Position(global.len() as u64 + 1));
                        }
                        positions.push(env.position.0);
                        global.push(p.clone());
                    }
                    model.entry(s).or_default().extend(payloads);
                } else {
                    match r {
                        Err(StoreError::Conflict {
                            expected: e,
                            actual,
                            ..
                        }) => {
                            prop_assert_eq!(e, expected);
                            prop_assert_eq!(actual, len as u64);
                        }
                        other => prop_assert!(false, "expected conflict, got {:?}", other),
                    }
                }
            }
            Op::Reopen => {
                drop(store);
                store = db.open_with(options.clone());
            }
            Op::Read { s, from } => {
                let got: Vec<Vec<u8>> = store
                    .read_stream(&streams[s], Seq(from))
                    .unwrap()
                    .into_iter()
                    .map(|e| e.payload)
                    .collect();
                let want: Vec<Vec<u8>> = model
                    .get(&s)
                    .map(|v| v.iter().skip(from.max(1) as usize - 1).cloned().collect())
                    .unwrap_or_default();
                prop_assert_eq!(got, want);
            }
            Op::ReadAll { from, limit } => {
                // The from-th event's position (past the last: none).
                let at = positions
                    .get(from.max(1) as usize - 1)
                    .copied()
                    .unwrap_or(positions.last().copied().unwrap_or(0) + 1);
                let got: Vec<Vec<u8>> = store
                    .read_all(Position(at), limit)
                    .unwrap()
                    .into_iter()
                    .map(|e| e.payload)
                    .collect();
                let want: Vec<Vec<u8>> = global
                    .iter()
                    .skip(from.max(1) as usize - 1)
                    .take(limit)
                    .cloned()
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Index { k, put, insert } => {
                let key = format!("k{k}");
                let op = match (put, insert) {
                    (Some(v), true) => IndexOp::Insert {
                        index: "t".into(),
                        key: key.clone(),
                        value: vec![v],
                    },
                    (Some(v), false) => IndexOp::Put {
                        index: "t".into(),
                        key: key.clone(),
                        value: vec![v],
                    },
                    (None, _) => IndexOp::Delete {
                        index: "t".into(),
                        key: key.clone(),
                    },
                };
                let r = store.write_blocking(WriteRequest::default().with_index(op));
                match (put, insert, index.get(&key).cloned()) {
                    (Some(_), true, Some(existing)) => match r {
                        Err(StoreError::IndexConflict { existing: e, .. }) => {
                            prop_assert_eq!(e, existing)
                        }
                        other => prop_assert!(false, "expected an index conflict, got {:?}", other),
                    },
                    (Some(v), _, _) => {
                        r.unwrap();
                        index.insert(key, vec![v]);
                    }
                    (None, _, _) => {
                        r.unwrap();
                        index.remove(&key);
                    }
                }
                let got: BTreeMap<String, Vec<u8>> =
                    store.index_scan("t", "").unwrap().into_iter().collect();
                prop_assert_eq!(&got, &index);
                for k in 0..4 {
                    let key = format!("k{k}");
                    prop_assert_eq!(
                        store.index_get("t", &key).unwrap(),
                        index.get(&key).cloned()
                    );
                }
            }
            Op::Snapshot { s, seq, v } => {
                let req = WriteRequest {
                    snapshots: vec![(streams[s].clone(), Seq(seq), vec![v])],
                    ..WriteRequest::default()
                };
                store.write_blocking(req).unwrap();
                snapshots.insert((s, seq), vec![v]);
            }
            Op::LoadSnapshot { s, at } => {
                let want = snapshots
                    .range((s, 0)..=(s, at))
                    .next_back()
                    .map(|((_, q), v)| (Seq(*q), v.clone()));
                prop_assert_eq!(
                    store.load_snapshot(&streams[s], Some(Seq(at))).unwrap(),
                    want
                );
                let seqs: Vec<Seq> = snapshots
                    .range((s, 0)..=(s, u64::MAX))
                    .map(|((_, q), _)| Seq(*q))
                    .collect();
                prop_assert_eq!(store.snapshot_seqs(&streams[s]).unwrap(), seqs);
            }
        }
    }
    for (s, want) in &model {
        let got: Vec<Vec<u8>> = store
            .read_stream(&streams[*s], Seq(1))
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        prop_assert_eq!(&got, want);
        prop_assert!(store.verify_stream(&streams[*s]).unwrap().ok());
        prop_assert_eq!(
            store.head(&streams[*s]).unwrap().unwrap().last_seq,
            Seq(want.len() as u64)
        );
    }
    let mut scanned = Vec::new();
    store
        .scan_all(|v| {
            scanned.push(v.payload.to_vec());
            Ok(())
        })
        .unwrap();
    prop_assert_eq!(scanned, global);
    Ok(())
}
