//! What only PostgreSQL has: many handles (as many processes have) on one
//! database — racing appends to one stream, the live feed of another
//! handle's commits, migrations racing at open — and its refusals: a newer
//! schema, a database that is not Chronicle's, an unreachable server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chronicle_store::{
    PG_SCHEMA_VERSION, Position, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest,
};
use common::{ev, fresh_postgres};

fn open(url: &str) -> Store {
    Store::open(url, StoreOptions::default()).expect("open the PostgreSQL store")
}

/// Four handles append to one stream at once, each re-reading its head
/// after a conflict: every acknowledged event is in the stream once, the
/// seqs have no gap, the chain verifies, and global positions are dense.
#[test]
fn handles_racing_on_one_stream_lose_nothing_and_duplicate_nothing() {
    let url = fresh_postgres();
    let stream = StreamId::named("agent:shared").unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (url, stream, acked, conflicts) = (
                url.clone(),
                stream.clone(),
                acked.clone(),
                conflicts.clone(),
            );
            std::thread::spawn(move || {
                let store = open(&url);
                let mut done = 0;
                while done < 25 {
                    let head = store.head(&stream).unwrap().map_or(Seq(0), |h| h.last_seq);
                    let req = WriteRequest::append(
                        stream.clone(),
                        head,
                        vec![ev(&format!("w{w}-{done}"))],
                    );
                    match store.write_blocking(req) {
                        Ok(_) => {
                            done += 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(StoreError::Conflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = open(&url);
    let log = store.read_stream(&stream, Seq(1)).unwrap();
    assert_eq!(log.len() as u64, acked.load(Ordering::Relaxed));
    assert_eq!(log.len(), 100);
    let mut payloads: Vec<_> = log.iter().map(|e| e.payload.clone()).collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 100, "an event was written twice");
    assert!(store.verify_stream(&stream).unwrap().ok());
    let all = store.read_all(Position(1), usize::MAX).unwrap();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, Position(i as u64 + 1));
    }
    eprintln!(
        "conflicts seen and retried: {}",
        conflicts.load(Ordering::Relaxed)
    );
}

/// A handle's subscription sees what another handle commits (through
/// LISTEN/NOTIFY), once, and its own commits once.
#[test]
fn the_live_feed_carries_other_handles_commits_once() {
    let url = fresh_postgres();
    let reader = open(&url);
    let writer = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sub = reader.subscribe();
        let a = StreamId::named("feed:a").unwrap();
        let b = StreamId::named("feed:b").unwrap();
        writer
            .append(a.clone(), Seq(0), vec![ev("1"), ev("2")])
            .await
            .unwrap();
        reader
            .append(b.clone(), Seq(0), vec![ev("3")])
            .await
            .unwrap();
        writer
            .append(a.clone(), Seq(2), vec![ev("4")])
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let batch = tokio::time::timeout(std::time::Duration::from_secs(10), sub.recv())
                .await
                .expect("the feed delivers within 10 s")
                .unwrap();
            got.extend(batch.iter().map(|e| (e.stream.key(), e.seq.0)));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("feed:a".to_string(), 1),
                ("feed:a".to_string(), 2),
                ("feed:a".to_string(), 3),
                ("feed:b".to_string(), 1)
            ]
        );
        // Nothing more arrives (no duplicates) within a second.
        let more = tokio::time::timeout(std::time::Duration::from_secs(1), sub.recv()).await;
        assert!(more.is_err(), "an event was delivered twice: {more:?}");
    });
}

/// Eight handles opening a new database at once: the migrations run once
/// and every handle works.
#[test]
fn opens_racing_on_a_new_database_migrate_it_once() {
    let url = fresh_postgres();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let store = open(&url);
                let s = StreamId::named(format!("open:{i}")).unwrap();
                store
                    .write_blocking(WriteRequest::append(s, Seq(0), vec![ev("x")]))
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(open(&url).streams().unwrap().len(), 8);
}

fn psql(url: &str, sql: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
    });
}

/// A database migrated by a newer build is refused with the versions
/// named, and left as it was.
#[test]
fn a_newer_schema_is_refused() {
    let url = fresh_postgres();
    drop(open(&url));
    psql(
        &url,
        "INSERT INTO chronicle_schema_history (version, name, applied_on, checksum) \
         VALUES (99, 'future', '2030-01-01T00:00:00Z', '0')",
    );
    let err = Store::open(&url, StoreOptions::default()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("99"), "{text}");
    assert!(text.contains(&PG_SCHEMA_VERSION.to_string()), "{text}");
}

/// A read-only handle reads and refuses writes; a database with no
/// Chronicle schema cannot be opened read-only (nothing is created).
#[test]
fn read_only_handles_read_and_never_write() {
    let url = fresh_postgres();
    let s = StreamId::named("ro:x").unwrap();
    open(&url)
        .write_blocking(WriteRequest::append(s.clone(), Seq(0), vec![ev("a")]))
        .unwrap();
    let ro = Store::open_read_only(&url).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.read_stream(&s, Seq(1)).unwrap().len(), 1);
    assert!(matches!(
        ro.write_blocking(WriteRequest::append(s.clone(), Seq(1), vec![ev("b")])),
        Err(StoreError::ReadOnly(_))
    ));
    let empty = fresh_postgres();
    let err = Store::open_read_only(&empty).unwrap_err();
    assert!(
        err.to_string().contains("not a Chronicle database"),
        "{err}"
    );
}

/// An unreachable server and a malformed URL are storage problems whose
/// message names the database without its password.
#[test]
fn unreachable_servers_and_bad_urls_are_clear_errors() {
    let err = Store::open(
        "postgres://someone:hunter2@127.0.0.1:1/nothing?connect_timeout=2",
        StoreOptions::default(),
    )
    .unwrap_err();
    assert!(err.is_storage_problem());
    let text = err.to_string();
    assert!(
        text.contains("postgres://someone:***@127.0.0.1:1/nothing"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let err = Store::open("postgres://u@h/db?nonsense=1", StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("malformed database URL"), "{err}");
}
