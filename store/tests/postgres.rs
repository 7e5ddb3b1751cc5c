//! What only PostgreSQL has: many handles (as many processes have) on one
//! database — racing appends to one stream, leases, migrations racing at
//! open — and its refusals: a newer schema, a database that is not
//! Chronicle's, an unreachable server. The live feed across handles is in
//! `postgres_feed.rs`.

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
    assert_eq!(all.len(), 100);
    for w in all.windows(2) {
        assert!(w[1].position > w[0].position, "positions increase");
    }
    eprintln!(
        "conflicts seen and retried: {}",
        conflicts.load(Ordering::Relaxed)
    );
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
    assert!(
        text.contains("check that the server is running"),
        "a connection failure says what to check: {text}"
    );
    let err = Store::open("postgres://u@h/db?nonsense=1", StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("malformed database URL"), "{err}");
    // Not a connection problem: no hint about the server.
    assert!(!err.to_string().contains("check that the server"), "{err}");
}

/// Leases: two workers claiming at once never get the same run; a write
/// fenced by an expired or taken-over lease fails and writes nothing; the
/// new holder's fenced write goes through; renewal reports the lost run.
#[test]
fn leases_are_claimed_once_and_fence_the_old_holder() {
    use chronicle_store::LeaseOp;
    let url = fresh_postgres();
    let store = open(&url);
    let runs: Vec<StreamId> = (0..20)
        .map(|_| StreamId::Run(uuid::Uuid::now_v7()))
        .collect();
    for r in &runs {
        let mut req = WriteRequest::append(r.clone(), Seq(0), vec![ev("created")]);
        req.leases.push(LeaseOp::Offer { run: r.key() });
        store.write_blocking(req).unwrap();
    }
    // Two workers claim concurrently: disjoint, all 20 claimed.
    let claims: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                let s = open(&url);
                let mut got = Vec::new();
                for _ in 0..10 {
                    got.extend(s.claim_leases(w, 2, 60_000, None).unwrap());
                }
                got
            })
        })
        .collect();
    let got: Vec<Vec<(String, u64)>> = claims.into_iter().map(|t| t.join().unwrap()).collect();
    let mut all: Vec<&String> = got.iter().flatten().map(|(r, _)| r).collect();
    assert_eq!(all.len(), 20);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20, "a run was claimed twice");

    // A run of the first worker that got one (named w1 below): a short
    // lease, let it expire, w3 takes it over.
    let (w, first) = if got[0].is_empty() {
        ("w2", &got[1])
    } else {
        ("w1", &got[0])
    };
    let (run, epoch) = first[0].clone();
    let stream: StreamId = run.parse().unwrap();
    assert_eq!(
        store
            .renew_leases(w, vec![(run.clone(), epoch)], 300)
            .unwrap(),
        vec![run.clone()]
    );
    let hold = |owner: &str, epoch: u64, after: u64, text: &str| {
        let mut req = WriteRequest::append(stream.clone(), Seq(after), vec![ev(text)]);
        req.leases.push(LeaseOp::Hold {
            run: run.clone(),
            owner: owner.into(),
            epoch,
        });
        store.write_blocking(req)
    };
    hold(w, epoch, 1, "by w1").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let err = hold(w, epoch, 2, "late").unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err:?}");
    assert!(err.to_string().contains("expired"), "{err}");
    let taken = store
        .claim_leases("w3", 5, 60_000, Some(vec![run.clone()]))
        .unwrap();
    assert_eq!(taken, vec![(run.clone(), epoch + 1)]);
    let err = hold(w, epoch, 2, "stale").unwrap_err();
    assert!(err.to_string().contains("held by w3"), "{err}");
    hold("w3", epoch + 1, 2, "by w3").unwrap();
    assert!(
        store
            .renew_leases(w, vec![(run.clone(), epoch)], 60_000)
            .unwrap()
            .is_empty()
    );
    let texts: Vec<String> = store
        .read_stream(&stream, Seq(1))
        .unwrap()
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![r#"{"v":"created"}"#, r#"{"v":"by w1"}"#, r#"{"v":"by w3"}"#]
    );
    let info = store.lease(&run).unwrap().unwrap();
    assert_eq!(
        (info.owner.as_deref(), info.epoch, info.live),
        (Some("w3"), epoch + 1, true)
    );
    // Ended: the lease is gone.
    let mut req = WriteRequest::append(stream.clone(), Seq(3), vec![ev("end")]);
    req.leases.push(LeaseOp::End { run: run.clone() });
    store.write_blocking(req).unwrap();
    assert_eq!(store.lease(&run).unwrap(), None);
}

/// Races another process wins: handles creating one new stream at once,
/// and handles inserting one unique key at once — exactly one of each
/// succeeds, the others get the error the redb writer gives (a conflict
/// naming the winner's seq, the winner's value).
#[test]
fn races_on_new_streams_and_unique_keys_have_one_winner() {
    use chronicle_store::IndexOp;
    let url = fresh_postgres();
    drop(open(&url));
    for round in 0..5 {
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let (url, barrier) = (url.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let store = open(&url);
                    let s = StreamId::named(format!("race:{round}")).unwrap();
                    let req = WriteRequest::append(s, Seq(0), vec![ev(&format!("w{w}"))])
                        .with_index(IndexOp::Insert {
                            index: "idem".into(),
                            key: format!("key-{round}"),
                            value: format!("w{w}").into_bytes(),
                        });
                    barrier.wait();
                    store.write_blocking(req)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for r in &results {
            match r {
                Ok(_) => {}
                Err(StoreError::Conflict {
                    expected, actual, ..
                }) => {
                    assert_eq!((*expected, *actual), (0, 1))
                }
                Err(StoreError::IndexConflict { existing, .. }) => {
                    assert!(existing.starts_with(b"w"))
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
    let store = open(&url);
    for round in 0..5 {
        let s = StreamId::named(format!("race:{round}")).unwrap();
        assert_eq!(store.read_stream(&s, Seq(1)).unwrap().len(), 1);
        assert!(store.verify_stream(&s).unwrap().ok());
    }
}
