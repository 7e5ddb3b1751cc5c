//! What only PostgreSQL has: many handles (as many processes have) on one
//! database — racing appends to one stream, the live feed of another
//! handle's commits, migrations racing at open — and its refusals: a newer
//! schema, a database that is not Chronicle's, an unreachable server; and
//! the feed while the server ends the reading handle's connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chronicle_store::{
    PG_SCHEMA_VERSION, Position, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest,
};
use common::{ev, fresh_postgres};

/// At least `n` events from the live feed (each batch within 10 s).
async fn receive(
    sub: &mut tokio::sync::broadcast::Receiver<Arc<[chronicle_store::RawEnvelope]>>,
    n: usize,
) -> Vec<chronicle_store::RawEnvelope> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), sub.recv())
            .await
            .expect("the feed delivers within 10 s")
            .unwrap();
        got.extend(batch.iter().cloned());
    }
    got
}

/// Another process's transaction on `url`, begun, with its id taken: the
/// client, and the id.
async fn foreign_transaction(url: &str) -> (tokio_postgres::Client, i64) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute("BEGIN").await.unwrap();
    let xid: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0);
    (client, xid)
}

/// In `client`'s transaction `xid`: event 1 of `stream`, at the first
/// position of the transaction, written as a writer of this build would.
async fn insert_first_event(client: &tokio_postgres::Client, xid: i64, stream: &str) {
    client
        .execute(
            "INSERT INTO chronicle_events \
             (position, stream, seq, recorded_at_ns, schema_version, payload, hash) \
             VALUES ($1, $2, 1, 0, 1, $3, $4)",
            &[
                &((xid << 24) + 1),
                &stream,
                &br#"{"n":0}"#.to_vec(),
                &vec![7u8; 32],
            ],
        )
        .await
        .unwrap();
}

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
        let mut changes = reader.subscribe_changes();
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
        for e in receive(&mut sub, 4).await {
            got.push((e.stream.key(), e.seq.0));
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
        // The changes feed names the other handle's streams, not its own.
        let mut touched = Vec::new();
        while let Ok(c) = changes.try_recv() {
            assert!(!c.offers);
            touched.extend(c.streams.clone().unwrap());
        }
        touched.dedup();
        assert_eq!(touched, vec!["feed:a".to_string()]);
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

/// Positions are numbered from each commit's transaction id, so they are
/// not in commit order: a transaction that took its id first may commit
/// last. The live feed reads below the horizon (no transaction that could
/// still commit holds a smaller id), so it holds a later commit back while
/// an earlier transaction is open, and then delivers both, in position
/// order — none is skipped.
#[test]
fn the_feed_waits_for_a_transaction_that_took_a_smaller_position() {
    let url = fresh_postgres();
    let reader = open(&url);
    let writer = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sub = reader.subscribe();
        // Another process's transaction takes its id first and stays open.
        let (client, xid) = foreign_transaction(&url).await;
        let after = StreamId::named("feed:after").unwrap();
        let out = writer
            .append(after.clone(), Seq(0), vec![ev("committed first")])
            .await
            .unwrap();
        assert!(
            out[0].position.0 > ((xid as u64) << 24),
            "a larger id, a larger position"
        );
        let early = tokio::time::timeout(std::time::Duration::from_millis(500), sub.recv()).await;
        assert!(
            early.is_err(),
            "delivered while a smaller position could still commit: {early:?}"
        );
        // It commits its event now, at its smaller position.
        insert_first_event(&client, xid, "feed:before").await;
        client.batch_execute("COMMIT").await.unwrap();
        client
            .execute(
                "SELECT pg_notify('chronicle_events', $1)",
                &[&format!("{0}:{0}:other:-:feed:before", (xid << 24) + 1)],
            )
            .await
            .unwrap();
        let got: Vec<(String, u64)> = receive(&mut sub, 2)
            .await
            .iter()
            .map(|e| (e.stream.key(), e.position.0))
            .collect();
        assert_eq!(
            got.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            ["feed:before", "feed:after"],
            "in position order: {got:?}"
        );
    });
}

/// A commit whose notification never came (its writer's connection ended
/// right after the COMMIT took effect) still reaches the live feed: a
/// process with readers reads the log once a second, not only when told.
#[test]
fn the_feed_gets_a_commit_whose_notification_was_lost() {
    let url = fresh_postgres();
    let reader = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sub = reader.subscribe();
        // Committed by "another process", which then vanished: no notify.
        let (client, xid) = foreign_transaction(&url).await;
        insert_first_event(&client, xid, "feed:silent").await;
        client.batch_execute("COMMIT").await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), receive(&mut sub, 1))
            .await
            .expect("a commit without a notification reaches the feed within 5 s");
        assert_eq!(got[0].stream.key(), "feed:silent");
        assert_eq!(got[0].position.0, ((xid as u64) << 24) + 1);
    });
}

/// A worker's commits to the runs it holds go to the feed's channel: a
/// process reading the live feed gets them (one that started reading after
/// it opened, too), and another worker — which reads no feed — is not
/// woken by them; it hears what concerns it: offers, and appends to a
/// run without its lease (a command from another process).
#[test]
fn a_workers_commits_to_its_runs_reach_feed_readers_and_wake_no_other_worker() {
    use chronicle_store::LeaseOp;
    let url = fresh_postgres();
    let worker = open(&url);
    let other = open(&url);
    let reader = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut changes = other.subscribe_changes();
        // Opened before anyone read its feed: it listens on the feed's
        // channel from this subscription on.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut sub = reader.subscribe();
        let run = StreamId::Run(uuid::Uuid::now_v7());
        let mut req = WriteRequest::append(run.clone(), Seq(0), vec![ev("created")]);
        req.leases.push(LeaseOp::Offer { run: run.key() });
        worker.write(req).await.unwrap();
        let (key, epoch) = worker
            .claim_leases("w1", 1, 60_000, None)
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(key, run.key());
        for (seq, text) in [(1, "started"), (2, "succeeded")] {
            let mut req = WriteRequest::append(run.clone(), Seq(seq), vec![ev(text)]);
            req.leases.push(LeaseOp::Hold {
                run: key.clone(),
                owner: "w1".into(),
                epoch,
            });
            worker.write(req).await.unwrap();
        }
        // A command from another process: no lease.
        other
            .append(run.clone(), Seq(3), vec![ev("signal")])
            .await
            .unwrap();
        let texts: Vec<String> = receive(&mut sub, 4)
            .await
            .iter()
            .map(|e| String::from_utf8(e.payload.clone()).unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                r#"{"v":"created"}"#,
                r#"{"v":"started"}"#,
                r#"{"v":"succeeded"}"#,
                r#"{"v":"signal"}"#
            ]
        );
        // The other worker heard the offer, and nothing of the held
        // writes (its own append is not announced to itself).
        let mut heard = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
        while let Ok(Ok(c)) = tokio::time::timeout_at(deadline, changes.recv()).await {
            heard.push((c.offers, c.streams.clone()));
        }
        assert_eq!(heard, vec![(true, Some(vec![run.key()]))]);
    });
}

/// The live feed while the server ends the reading handle's connections
/// (one every 50 ms, its listener's among them): another handle's 300
/// appends to 10 streams reach the feed each once, in order per stream —
/// the listener reconnects and catches up from where it was.
#[test]
fn the_live_feed_loses_and_repeats_nothing_when_its_connections_are_ended() {
    let url = fresh_postgres();
    let name = url.rsplit('/').next().unwrap().to_string();
    let app = format!("chronicle_feedcut_{}", uuid::Uuid::now_v7().simple());
    let reader = open(&format!("{url}?application_name={app}"));
    let writer = open(&url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut sub = reader.subscribe();
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cutter = {
            let (stop, name, app) = (stop.clone(), name.clone(), app.clone());
            tokio::spawn(async move {
                let mut ended = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    let row = admin
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM \
                             pg_stat_activity WHERE datname = $1 AND application_name = $2 \
                             ORDER BY random() LIMIT 1) p",
                            &[&name, &app],
                        )
                        .await
                        .unwrap();
                    ended += row.get::<_, i64>(0);
                }
                ended
            })
        };
        let mut expected = Vec::new();
        for i in 0..300u64 {
            let stream = StreamId::named(format!("cut:{}", i % 10)).unwrap();
            let seq = i / 10;
            writer
                .append(stream.clone(), Seq(seq), vec![ev(&i.to_string())])
                .await
                .unwrap();
            expected.push((stream.key(), seq + 1));
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), receive(&mut sub, 300))
            .await
            .expect("every event reaches the feed within 60 s");
        stop.store(true, Ordering::Relaxed);
        let ended = cutter.await.unwrap();
        assert!(
            ended >= 5,
            "only {ended} of the reader's connections were ended"
        );
        // In order per stream, each once.
        let mut last: std::collections::HashMap<String, u64> = Default::default();
        for e in &got {
            let prev = last.insert(e.stream.key(), e.seq.0).unwrap_or(0);
            assert_eq!(
                e.seq.0,
                prev + 1,
                "{}: seq {} after {prev}",
                e.stream.key(),
                e.seq.0
            );
        }
        let mut got: Vec<(String, u64)> = got.iter().map(|e| (e.stream.key(), e.seq.0)).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected);
        let more = tokio::time::timeout(std::time::Duration::from_secs(1), sub.recv()).await;
        assert!(more.is_err(), "an event was delivered twice: {more:?}");
        eprintln!("300 appends, {ended} of the reader's connections ended");
    });
}
