//! The live feed on PostgreSQL across handles (as across processes):
//! another handle's commits arrive once, in position order per stream;
//! the feed waits below the horizon for a transaction that took a smaller
//! position; a commit whose notification was lost still arrives; a
//! worker's commits to its own runs wake no other worker; and nothing is
//! lost or repeated while the server ends the reader's connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chronicle_store::{Seq, Store, StoreOptions, StreamId, WriteRequest};
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
    let xid = begin(&client).await;
    (client, xid)
}

/// Begin a transaction on `client`; its id.
async fn begin(client: &tokio_postgres::Client) -> i64 {
    client.batch_execute("BEGIN").await.unwrap();
    client
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .await
        .unwrap()
        .get(0)
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
/// The tests that hold a transaction open, and the one that times how
/// soon an unannounced commit arrives, one at a time: the horizon is the
/// cluster's, so one test's open transaction holds every database's feed
/// back.
static HORIZON: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open(url: &str) -> Store {
    Store::open(url, StoreOptions::default()).expect("open the PostgreSQL store")
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

/// Positions are numbered from each commit's transaction id, so they are
/// not in commit order: a transaction that took its id first may commit
/// last. The live feed reads below the horizon (no transaction that could
/// still commit holds a smaller id), so it holds a later commit back while
/// an earlier transaction is open, and then delivers both, in position
/// order — none is skipped.
#[test]
fn the_feed_waits_for_a_transaction_that_took_a_smaller_position() {
    let _one = HORIZON.lock().unwrap_or_else(|e| e.into_inner());
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
    let _one = HORIZON.lock().unwrap_or_else(|e| e.into_inner());
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

/// A store subscribed to as soon as it is opened gets a commit made right
/// after: the feed starts at the horizon of the open, not at one its
/// listener reads later (which a commit made meanwhile would be below,
/// and never sent). Twenty opens, each followed at once by an
/// unannounced commit from a connection made beforehand.
#[test]
fn a_commit_right_after_the_open_reaches_a_subscriber() {
    let _one = HORIZON.lock().unwrap_or_else(|e| e.into_inner());
    let url = fresh_postgres();
    drop(open(&url));
    let rt = tokio::runtime::Runtime::new().unwrap();
    for i in 0..20 {
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls))
            .unwrap();
        rt.spawn(conn);
        let reader = open(&url);
        let mut sub = reader.subscribe();
        let stream = format!("feed:early-{i}");
        rt.block_on(async {
            let xid = begin(&client).await;
            insert_first_event(&client, xid, &stream).await;
            client.batch_execute("COMMIT").await.unwrap();
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), receive(&mut sub, 1))
                .await
                .unwrap_or_else(|_| panic!("open {i}: the commit never reached the feed"));
            assert_eq!(got[0].stream.key(), stream);
        });
    }
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
