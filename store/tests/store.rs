//! Behaviour of the store API on real redb files, and (the tests that
//! loop over `Db::all()`) the same behaviour on PostgreSQL.

mod common;

use chronicle_store::journal_path;
use chronicle_store::{
    IndexOp, NewEvent, Position, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest,
};
use common::{Db, ev, open};

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
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    drop(open(&path));
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            t.insert("format_version", b"99".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("format version 99"), "{err}");
}

#[test]
fn a_foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.redb");
    drop(redb::Database::create(&path).unwrap());
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { .. }),
        "{err:?}"
    );
}

#[test]
fn a_non_database_file_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.redb");
    std::fs::write(
        &path,
        b"this is not a database at all, just text".repeat(200),
    )
    .unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(err.is_storage_problem(), "{err:?}");
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        Store::open(&empty, StoreOptions::default()),
        Err(StoreError::Corruption { .. })
    ));
}

#[test]
fn creation_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir.path().join("db.redb")));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names: Vec<_> = names
        .into_iter()
        .map(|n| n.into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["db.redb", "db.redb-journal"]);
}

/// Processes (here threads) that create the same database at once: one
/// gets the file, the others a `Locked` error — never a second database
/// put in place under the first one's writer.
#[test]
fn concurrent_creators_one_wins_the_others_see_it_locked() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.redb");
        let start = std::sync::Barrier::new(6);
        let done = std::sync::Barrier::new(6);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (db, start, done) = (&db, &start, &done);
                    s.spawn(move || {
                        start.wait();
                        let opened = Store::open(db, StoreOptions::default());
                        if let Ok(store) = &opened {
                            store
                                .write_blocking(WriteRequest::append(
                                    StreamId::named(format!("creator-{i}")).unwrap(),
                                    Seq(0),
                                    vec![ev("mine")],
                                ))
                                .unwrap();
                        }
                        // Hold the store until every thread has tried.
                        done.wait();
                        opened.map(drop)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, StoreError::Locked { .. }),
                    "round {round}: {e:?}"
                );
            }
        }
        // The winner's event is in the file at the path.
        let store = open(&db);
        assert_eq!(store.streams().unwrap().len(), 1, "round {round}");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("creating"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
}

/// A copy of the files taken while the store is open is what a crash
/// leaves: redb holds the groups only in non-durable commits, the journal
/// holds them durably. Opening the copy applies the journal.
#[test]
fn a_crash_image_is_recovered_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let store = open(&path);
    let s = run_stream();
    for i in 0..20u64 {
        store
            .write_blocking(WriteRequest::append(
                s.clone(),
                Seq(i),
                vec![ev(&i.to_string())],
            ))
            .unwrap();
    }
    let image = dir.path().join("image.redb");
    let bare = dir.path().join("bare.redb");
    std::fs::copy(&path, &image).unwrap();
    std::fs::copy(&path, &bare).unwrap();
    std::fs::copy(journal_path(&path), journal_path(&image)).unwrap();
    drop(store);

    // Read-only opens refuse the image (crash repair or journal pending)
    // and leave it as it is.
    let before = std::fs::read(&image).unwrap();
    assert!(Store::open_read_only(&image).is_err());
    assert_eq!(std::fs::read(&image).unwrap(), before);

    // Without its journal the image lacks acknowledged groups: the journal
    // is what made them durable. Such an open is refused, and changes
    // nothing; accepting the loss opens it with what redb has and records
    // the loss.
    let bare_before = std::fs::read(&bare).unwrap();
    match Store::open(&bare, StoreOptions::default()) {
        Err(StoreError::JournalLost { problem, .. }) => assert_eq!(problem, "is missing"),
        other => panic!("a crashed database without its journal opened: {other:?}"),
    }
    assert!(
        !journal_path(&bare).exists(),
        "the refusal created no journal"
    );
    assert_eq!(std::fs::read(&bare).unwrap().len(), bare_before.len());
    let accepted = Store::open(
        &bare,
        StoreOptions {
            accept_journal_loss: true,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert!(accepted.read_stream(&s, Seq(1)).unwrap().len() < 20);
    let losses = accepted
        .index_scan(chronicle_store::JOURNAL_LOSS_INDEX, "")
        .unwrap();
    assert_eq!(losses.len(), 1, "the loss is recorded once");
    drop(accepted);
    // Closed cleanly now: it opens without the option.
    drop(open(&bare));

    let recovered = open(&image);
    let events = recovered.read_stream(&s, Seq(1)).unwrap();
    assert_eq!(events.len(), 20);
    assert!(recovered.verify_stream(&s).unwrap().ok());
    recovered
        .write_blocking(WriteRequest::append(s.clone(), Seq(20), vec![ev("after")]))
        .unwrap();
    assert_eq!(
        recovered.last_event(&s).unwrap().unwrap().position.0,
        events[19].position.0 + 1
    );
    drop(recovered);
    let ro = Store::open_read_only(&image).unwrap();
    assert_eq!(ro.read_stream(&s, Seq(1)).unwrap().len(), 21);
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

/// Checkpoints every 4 KiB of journal: a stream spans many index segments,
/// the journal restarts at offset 0 many times (and keeps its size), and a
/// crash image taken between checkpoints reopens with every event.
#[test]
fn many_checkpoints_segments_and_a_crash_image_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let options = || StoreOptions {
        checkpoint_bytes: 4096,
        ..StoreOptions::default()
    };
    let streams: Vec<StreamId> = (0..3).map(|_| run_stream()).collect();
    let store = Store::open(&path, options()).unwrap();
    for i in 0..300u64 {
        let s = &streams[(i % 3) as usize];
        store
            .write_blocking(WriteRequest::append(
                s.clone(),
                Seq(i / 3),
                vec![ev(&i.to_string())],
            ))
            .unwrap();
    }
    let image = dir.path().join("image.redb");
    let probe = dir.path().join("probe.redb");
    std::fs::copy(&path, &image).unwrap();
    std::fs::copy(&path, &probe).unwrap();
    std::fs::copy(journal_path(&path), journal_path(&image)).unwrap();
    drop(store);
    // The durable state of the image shows checkpoints during the run: a
    // journal frame number recorded, and streams indexed in several segments.
    {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let db = redb::Database::open(&probe).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap();
        let lsn = meta.get("journal_lsn").unwrap().unwrap().value().to_vec();
        assert!(u64::from_le_bytes(lsn.try_into().unwrap()) > 10);
        let segments = txn
            .open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new(
                "stream_index",
            ))
            .unwrap();
        assert!(segments.len().unwrap() > 3 * 5);
    }

    for db in [&path, &image] {
        let store = Store::open(db, options()).unwrap();
        for s in &streams {
            let events = store.read_stream(s, Seq(1)).unwrap();
            assert_eq!(events.len(), 100, "{}", db.display());
            assert!(events.windows(2).all(|w| w[0].position < w[1].position));
            assert!(store.verify_stream(s).unwrap().ok());
        }
        // The log continues where it ended.
        store
            .write_blocking(WriteRequest::append(
                streams[0].clone(),
                Seq(100),
                vec![ev("more")],
            ))
            .unwrap();
        assert_eq!(
            store.last_event(&streams[0]).unwrap().unwrap().position,
            Position(301)
        );
    }
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
