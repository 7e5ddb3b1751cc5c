//! Readers racing the writer: full scans and reads during appends, index
//! writes and memtable flushes, on real redb files and on PostgreSQL.

mod common;

use chronicle_store::{IndexOp, Position, Seq, StoreOptions, StreamId, WriteRequest};
use common::{Db, ev};

fn run_stream() -> StreamId {
    StreamId::Run(uuid::Uuid::now_v7())
}

/// Full scans running while groups commit never see an event the stream
/// index does not hold (the writer commits and indexes under one lock).
#[test]
fn scans_during_appends_see_a_consistent_index() {
    for db in Db::all() {
        let store = db.open();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scanner = {
            let store = store.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut scans = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    store.scan_all(|_| Ok(())).expect("a scan during appends");
                    scans += 1;
                }
                scans
            })
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let s = run_stream();
                    for i in 0..25u64 {
                        store
                            .append(s.clone(), Seq(i), vec![ev("x")])
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(scanner.join().unwrap() > 0);
        assert_eq!(store.scan_all(|_| Ok(())).unwrap(), 16 * 25);
    }
}

/// Readers racing appends and memtable flushes (a flush after nearly every
/// group) see every acknowledged write, exactly once, in order.
#[test]
fn reads_during_appends_and_flushes_see_each_acknowledged_write_once() {
    for db in Db::all() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const APPENDERS: usize = 8;
        const EACH: u64 = 40;
        let options = StoreOptions {
            memtable_bytes: 300,
            ..StoreOptions::default()
        };
        let store = db.open_with(options);
        let streams: Vec<StreamId> = (0..APPENDERS).map(|_| run_stream()).collect();
        let acked: Arc<Vec<AtomicU64>> =
            Arc::new((0..APPENDERS).map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, streams, acked, done) =
                (store.clone(), streams.clone(), acked.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !done.load(Ordering::Acquire) {
                    let before: Vec<u64> =
                        acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
                    for (i, s) in streams.iter().enumerate() {
                        let log = store.read_stream(s, Seq(1)).unwrap();
                        assert!(log.len() as u64 >= before[i], "acknowledged events missing");
                        for (k, e) in log.iter().enumerate() {
                            assert_eq!(e.seq, Seq(k as u64 + 1));
                        }
                        let v = store.index_get("last", &s.key()).unwrap();
                        let last = v.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                        assert!(last >= before[i], "an acknowledged index write is missing");
                    }
                    let all = store.read_all(Position(1), usize::MAX).unwrap();
                    for (k, e) in all.iter().enumerate() {
                        if db.is_postgres() {
                            // Increasing; sparse (numbered by transaction).
                            assert!(
                                k == 0 || e.position > all[k - 1].position,
                                "a position read twice or out of order"
                            );
                        } else {
                            assert_eq!(
                                e.position,
                                Position(k as u64 + 1),
                                "a position read twice or skipped"
                            );
                        }
                    }
                    assert!(all.len() as u64 >= before.iter().sum::<u64>());
                    rounds += 1;
                }
                rounds
            })
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for (i, s) in streams.iter().enumerate() {
                let (store, s, acked) = (store.clone(), s.clone(), acked.clone());
                tasks.push(tokio::spawn(async move {
                    for q in 0..EACH {
                        let req = WriteRequest::append(s.clone(), Seq(q), vec![ev("x")])
                            .with_index(IndexOp::Put {
                                index: "last".into(),
                                key: s.key(),
                                value: (q + 1).to_le_bytes().to_vec(),
                            });
                        store.write(req).await.unwrap();
                        acked[i].store(q + 1, Ordering::Release);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        done.store(true, Ordering::Release);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(store.scan_all(|_| Ok(())).unwrap(), APPENDERS as u64 * EACH);
    }
}
