//! The redb file itself: its format version, foreign and non-database
//! files, creation (no temporary file left, one creator wins), and crash
//! images recovered from the commit journal across checkpoints.

mod common;

use chronicle_store::journal_path;
use chronicle_store::{Position, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest};
use common::{ev, open};

fn run_stream() -> StreamId {
    StreamId::Run(uuid::Uuid::now_v7())
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
