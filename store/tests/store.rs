//! Behaviour of the store API on real redb files, and (the tests that
//! loop over `Db::all()`) the same behaviour on PostgreSQL.

mod common;

use chronicle_store::{
    IndexOp, NewEvent, Position, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest,
};
use common::{Db, ev};

fn run_stream() -> StreamId {
    StreamId::Run(uuid::Uuid::now_v7())
}

#[test]
fn append_read_and_heads() {
    for db in Db::all() {
        let store = db.open();
        let s = run_stream();
        let out = store
            .write_blocking(WriteRequest::append(
                s.clone(),
                Seq(0),
                vec![ev("a"), ev("b")],
            ))
            .unwrap();
        assert_eq!(out.iter().map(|e| e.seq.0).collect::<Vec<_>>(), vec![1, 2]);
        if db.is_postgres() {
            assert_eq!(
                out[1].position.0,
                out[0].position.0 + 1,
                "one commit's events in order"
            );
        } else {
            assert_eq!(out[0].position, Position(1));
        }
        let read = store.read_stream(&s, Seq(1)).unwrap();
        assert_eq!(read, out);
        assert_eq!(store.read_stream(&s, Seq(2)).unwrap().len(), 1);
        let last = store.last_event(&s).unwrap().unwrap();
        assert_eq!(last.seq, Seq(2));
        let head = store.head(&s).unwrap().unwrap();
        assert_eq!(head.last_seq, Seq(2));
        assert_eq!(head.hash, last.hash);
        assert!(store.verify_stream(&s).unwrap().ok());
    }
}

#[test]
fn conflict_names_both_seqs_and_writes_nothing() {
    for db in Db::all() {
        let store = db.open();
        let s = StreamId::named("agent:x").unwrap();
        store
            .write_blocking(WriteRequest::append(s.clone(), Seq(0), vec![ev("a")]))
            .unwrap();
        let err = store
            .write_blocking(WriteRequest::append(s.clone(), Seq(0), vec![ev("b")]))
            .unwrap_err();
        match &err {
            StoreError::Conflict {
                expected, actual, ..
            } => assert_eq!((*expected, *actual), (0, 1)),
            other => panic!("expected conflict, got {other:?}"),
        }
        assert!(
            err.to_string().contains("expected last seq 0, found 1"),
            "{err}"
        );
        assert_eq!(store.read_stream(&s, Seq(1)).unwrap().len(), 1);
    }
}

/// An append with no events is a check: its request commits only while
/// the stream's head is the seq expected, and nothing is written to the
/// stream (an absent stream stays absent).
#[test]
fn an_append_without_events_checks_the_head_and_writes_nothing() {
    for db in Db::all() {
        let store = db.open();
        let checked = StreamId::named("agent:checked").unwrap();
        let absent = StreamId::named("agent:absent").unwrap();
        let run = run_stream();
        store
            .write_blocking(WriteRequest::append(checked.clone(), Seq(0), vec![ev("a")]))
            .unwrap();
        let with_checks = |expected: Seq, events: Vec<NewEvent>, run_expected: Seq| WriteRequest {
            appends: vec![
                chronicle_store::Append {
                    stream: run.clone(),
                    expected: run_expected,
                    events,
                },
                chronicle_store::Append {
                    stream: checked.clone(),
                    expected,
                    events: Vec::new(),
                },
                chronicle_store::Append {
                    stream: absent.clone(),
                    expected: Seq(0),
                    events: Vec::new(),
                },
            ],
            ..Default::default()
        };
        // Heads as expected: the run's event commits, the checked streams
        // are untouched.
        let out = store
            .write_blocking(with_checks(Seq(1), vec![ev("r1")], Seq(0)))
            .unwrap();
        assert_eq!(out.len(), 1, "only the run's event: {out:?}");
        assert_eq!(store.read_stream(&checked, Seq(1)).unwrap().len(), 1);
        assert!(store.head(&absent).unwrap().is_none(), "no stream created");
        // The checked stream moved on: the whole request is refused.
        store
            .write_blocking(WriteRequest::append(checked.clone(), Seq(1), vec![ev("b")]))
            .unwrap();
        let err = store
            .write_blocking(with_checks(Seq(1), vec![ev("r2")], Seq(1)))
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { stream, expected: 1, actual: 2 } if stream == "agent:checked"),
            "{err:?}"
        );
        assert_eq!(
            store.read_stream(&run, Seq(1)).unwrap().len(),
            1,
            "r2 not written"
        );
        assert!(store.head(&absent).unwrap().is_none());
        assert!(store.verify_stream(&checked).unwrap().ok());
    }
}

#[test]
fn a_request_is_atomic_across_streams_and_index() {
    for db in Db::all() {
        let store = db.open();
        let a = run_stream();
        let b = run_stream();
        store
            .write_blocking(WriteRequest::append(b.clone(), Seq(0), vec![ev("b1")]))
            .unwrap();
        // Second append conflicts (b is at 1): nothing of the request is written.
        let mut req = WriteRequest::append(a.clone(), Seq(0), vec![ev("a1")]);
        req.appends.push(chronicle_store::Append {
            stream: b.clone(),
            expected: Seq(0),
            events: vec![ev("b2")],
        });
        req.index.push(IndexOp::Put {
            index: "runs".into(),
            key: a.key(),
            value: b"x".to_vec(),
        });
        assert!(matches!(
            store.write_blocking(req),
            Err(StoreError::Conflict { .. })
        ));
        assert!(store.read_stream(&a, Seq(1)).unwrap().is_empty());
        assert_eq!(store.index_get("runs", &a.key()).unwrap(), None);
    }
}

#[test]
fn unique_index_insert_refuses_a_taken_key() {
    for db in Db::all() {
        let store = db.open();
        let a = run_stream();
        let insert = |v: &[u8]| IndexOp::Insert {
            index: "idem".into(),
            key: "k1".into(),
            value: v.to_vec(),
        };
        store
            .write_blocking(
                WriteRequest::append(a.clone(), Seq(0), vec![ev("a")]).with_index(insert(b"run-a")),
            )
            .unwrap();
        let b = run_stream();
        let err = store
            .write_blocking(
                WriteRequest::append(b.clone(), Seq(0), vec![ev("b")]).with_index(insert(b"run-b")),
            )
            .unwrap_err();
        match err {
            StoreError::IndexConflict { existing, .. } => assert_eq!(existing, b"run-a"),
            other => panic!("{other:?}"),
        }
        assert!(store.read_stream(&b, Seq(1)).unwrap().is_empty());
        assert_eq!(
            store.index_scan("idem", "").unwrap(),
            vec![("k1".to_string(), b"run-a".to_vec())]
        );
    }
}

#[test]
fn read_all_orders_by_global_position() {
    for db in Db::all() {
        let store = db.open();
        let a = run_stream();
        let b = run_stream();
        store
            .write_blocking(WriteRequest::append(a.clone(), Seq(0), vec![ev("1")]))
            .unwrap();
        store
            .write_blocking(WriteRequest::append(b.clone(), Seq(0), vec![ev("2")]))
            .unwrap();
        store
            .write_blocking(WriteRequest::append(a.clone(), Seq(1), vec![ev("3")]))
            .unwrap();
        let all = store.read_all(Position(1), 100).unwrap();
        let order: Vec<_> = all.iter().map(|e| (e.stream.clone(), e.seq.0)).collect();
        assert_eq!(order, vec![(a.clone(), 1), (b.clone(), 1), (a.clone(), 2)]);
        let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
        if db.is_postgres() {
            // Numbered from each commit's transaction id: increasing.
            assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        } else {
            assert_eq!(positions, vec![1, 2, 3]);
        }
        assert_eq!(
            store.read_all(Position(positions[2]), 100).unwrap().len(),
            1
        );
        let streams = store.streams().unwrap();
        assert_eq!(streams.len(), 2);
    }
}

#[test]
fn snapshots_load_the_latest_at_or_before() {
    for db in Db::all() {
        let store = db.open();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = run_stream();
        rt.block_on(async {
            store
                .put_snapshot(s.clone(), Seq(10), b"ten".to_vec())
                .await
                .unwrap();
            store
                .put_snapshot(s.clone(), Seq(20), b"twenty".to_vec())
                .await
                .unwrap();
        });
        assert_eq!(
            store.load_snapshot(&s, None).unwrap(),
            Some((Seq(20), b"twenty".to_vec()))
        );
        assert_eq!(
            store.load_snapshot(&s, Some(Seq(15))).unwrap(),
            Some((Seq(10), b"ten".to_vec()))
        );
        assert_eq!(store.load_snapshot(&s, Some(Seq(5))).unwrap(), None);
        assert_eq!(store.snapshot_seqs(&s).unwrap(), vec![Seq(10), Seq(20)]);
    }
}

#[test]
fn subscription_sees_committed_events() {
    for db in Db::all() {
        let store = db.open();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut sub = store.subscribe();
            let s = run_stream();
            store
                .append(s.clone(), Seq(0), vec![ev("x"), ev("y")])
                .await
                .unwrap();
            let got = sub.recv().await.unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[1].seq, Seq(2));
            assert_eq!(got[1].stream, s);
        });
    }
}

#[test]
fn group_commit_acknowledges_every_concurrent_appender() {
    for db in Db::all() {
        let store = db.open();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let s = run_stream();
                    for i in 0..20u64 {
                        store
                            .append(s.clone(), Seq(i), vec![ev("e")])
                            .await
                            .unwrap();
                    }
                    s
                }));
            }
            for t in tasks {
                let s = t.await.unwrap();
                assert_eq!(store.head(&s).unwrap().unwrap().last_seq, Seq(20));
                assert!(store.verify_stream(&s).unwrap().ok());
            }
            // Positions are unique and dense (on PostgreSQL unique and
            // increasing, numbered by transaction).
            let all = store.read_all(Position(1), usize::MAX).unwrap();
            assert_eq!(all.len(), 64 * 20);
            for (i, e) in all.iter().enumerate() {
                if db.is_postgres() {
                    assert!(i == 0 || e.position > all[i - 1].position);
                } else {
                    assert_eq!(e.position.0, i as u64 + 1);
                }
            }
        });
    }
}

#[test]
fn reopen_keeps_everything_and_continues_positions() {
    for db in Db::all() {
        let s = run_stream();
        {
            let store = db.open();
            store
                .write_blocking(WriteRequest::append(s.clone(), Seq(0), vec![ev("a")]))
                .unwrap();
        }
        let store = db.open();
        let first = store.last_event(&s).unwrap().unwrap().position;
        let out = store
            .write_blocking(WriteRequest::append(s.clone(), Seq(1), vec![ev("b")]))
            .unwrap();
        if db.is_postgres() {
            assert!(out[0].position > first, "positions go on increasing");
        } else {
            assert_eq!(out[0].position, Position(2));
        }
        assert!(store.verify_stream(&s).unwrap().ok());
    }
}

#[test]
fn recorded_at_comes_from_the_injected_clock() {
    for db in Db::all() {
        let clock = std::sync::Arc::new(chronicle_store::ManualClock::epoch());
        let store = db.open_with(StoreOptions {
            clock: clock.clone(),
            ..StoreOptions::default()
        });
        let s = run_stream();
        let out = store
            .write_blocking(WriteRequest::append(s, Seq(0), vec![ev("a"), ev("b")]))
            .unwrap();
        assert_eq!(out[0].recorded_at.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(
            out[1].recorded_at.to_rfc3339(),
            "2026-01-01T00:00:00.001+00:00"
        );
    }
}

#[test]
fn invalid_stream_names_are_refused() {
    assert!(StreamId::named("").is_err());
    assert!(StreamId::named("x".repeat(257)).is_err());
    assert!(StreamId::named(uuid::Uuid::now_v7().to_string()).is_err());
    assert!(StreamId::named("agent:ok").is_ok());
}

#[test]
fn same_stream_twice_in_one_request_is_refused() {
    for db in Db::all() {
        let store = db.open();
        let s = run_stream();
        let mut req = WriteRequest::append(s.clone(), Seq(0), vec![ev("a")]);
        req.appends.push(chronicle_store::Append {
            stream: s.clone(),
            expected: Seq(1),
            events: vec![ev("b")],
        });
        assert!(matches!(
            store.write_blocking(req),
            Err(StoreError::InvalidRequest(_))
        ));
        assert!(store.read_stream(&s, Seq(1)).unwrap().is_empty());
    }
}

#[test]
fn json_payload_round_trips_through_envelope_serde() {
    let store = Store::in_memory(StoreOptions::default()).unwrap();
    let s = run_stream();
    let payload = br#"{"type":"X","n":[1,2,3],"s":"\u00e9"}"#.to_vec();
    let out = store
        .write_blocking(WriteRequest::append(
            s,
            Seq(0),
            vec![NewEvent::new(1, payload.clone())],
        ))
        .unwrap();
    let line = serde_json::to_string(&out[0]).unwrap();
    let back: chronicle_store::RawEnvelope = serde_json::from_str(&line).unwrap();
    assert_eq!(back.payload, payload);
    assert_eq!(back, out[0]);
}

#[test]
fn a_group_too_large_is_refused_alone_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let options = || StoreOptions {
        max_group_bytes: 64 << 10,
        ..StoreOptions::default()
    };
    let store = Store::open(&path, options()).unwrap();
    let s = run_stream();
    let big = format!(r#"{{"v":"{}"}}"#, "x".repeat(100 << 10));
    let err = store
        .write_blocking(WriteRequest::append(
            s.clone(),
            Seq(0),
            vec![NewEvent::new(1, big.into_bytes())],
        ))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRequest(ref m) if m.contains("over the limit")),
        "{err:?}"
    );
    // Not poisoned: the next write commits, and nothing of the refused one
    // was written.
    store
        .write_blocking(WriteRequest::append(s.clone(), Seq(0), vec![ev("small")]))
        .unwrap();
    drop(store);
    let store = Store::open(&path, options()).unwrap();
    let events = store.read_stream(&s, Seq(1)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload, ev("small").payload);
}
