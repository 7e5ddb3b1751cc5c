//! Property test against an in-memory model (a map of streams): random
//! appends, conflicting appends and reads, with the database closed and
//! reopened between steps; the log always equals the model.

use std::collections::BTreeMap;

use chronicle_store::{NewEvent, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest};
use proptest::prelude::*;

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 1..4usize, prop_oneof![4 => Just(0i64), 1 => -2..3i64])
            .prop_map(|(s, n, skew)| Op::Append { s, n, skew }),
        1 => Just(Op::Reopen),
        2 => (0..4usize, 0..8u64).prop_map(|(s, from)| Op::Read { s, from }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn log_equals_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.redb");
        let streams: Vec<StreamId> = (0..4).map(|i| StreamId::named(format!("m{i}")).unwrap()).collect();
        let mut model: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        let mut store = Store::open(&path, StoreOptions::default()).unwrap();
        let mut counter = 0u64;
        for op in ops {
            match op {
                Op::Append { s, n, skew } => {
                    let len = model.get(&s).map_or(0, Vec::len) as i64;
                    let expected = (len + skew).max(0) as u64;
                    let payloads: Vec<Vec<u8>> = (0..n).map(|_| { counter += 1; format!("{{\"n\":{counter}}}").into_bytes() }).collect();
                    let events = payloads.iter().map(|p| NewEvent::new(1, p.clone())).collect();
                    let r = store.write_blocking(WriteRequest::append(streams[s].clone(), Seq(expected), events));
                    if expected as i64 == len {
                        let out = r.unwrap();
                        prop_assert_eq!(out.len(), n);
                        model.entry(s).or_default().extend(payloads);
                    } else {
                        match r {
                            Err(StoreError::Conflict { expected: e, actual, .. }) => {
                                prop_assert_eq!(e, expected);
                                prop_assert_eq!(actual, len as u64);
                            }
                            other => prop_assert!(false, "expected conflict, got {:?}", other),
                        }
                    }
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&path, StoreOptions::default()).unwrap();
                }
                Op::Read { s, from } => {
                    let got: Vec<Vec<u8>> = store.read_stream(&streams[s], Seq(from)).unwrap().into_iter().map(|e| e.payload).collect();
                    let want: Vec<Vec<u8>> = model.get(&s).map(|v| v.iter().skip(from.max(1) as usize - 1).cloned().collect()).unwrap_or_default();
                    prop_assert_eq!(got, want);
                }
            }
        }
        for (s, want) in &model {
            let got: Vec<Vec<u8>> = store.read_stream(&streams[*s], Seq(1)).unwrap().into_iter().map(|e| e.payload).collect();
            prop_assert_eq!(&got, want);
            prop_assert!(store.verify_stream(&streams[*s]).unwrap().ok());
            prop_assert_eq!(store.head(&streams[*s]).unwrap().unwrap().last_seq, Seq(want.len() as u64));
        }
    }
}
