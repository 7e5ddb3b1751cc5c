//! Fault injection through a redb `StorageBackend` wrapper that fails I/O
//! after N operations, and corruption of database copies by flipped bytes.

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chronicle_store::{
    FileBackend, Seq, StorageBackend, Store, StoreOptions, StreamId, WriteRequest,
};
use common::{Rng, ev, open, seed};
use redb::ReadableTable;

/// Passes every call to a real file until `budget` writes/syncs have
/// happened, then fails them all with an I/O error.
#[derive(Debug)]
struct FailAfter {
    inner: FileBackend,
    ops: Arc<AtomicU64>,
    budget: u64,
}

impl FailAfter {
    fn tick(&self) -> io::Result<()> {
        if self.ops.fetch_add(1, Ordering::SeqCst) >= self.budget {
            Err(io::Error::other("injected fault"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FailAfter {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.tick()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.tick()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.tick()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
}

#[test]
fn io_faults_give_typed_errors_and_lose_no_acknowledged_event() {
    let seed = seed("fault injection");
    let mut rng = Rng(seed);
    for round in 0..12 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults.redb");
        drop(open(&path)); // a well-formed file to start from
        let budget = 10 + rng.below(400);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let backend = FailAfter {
            inner: FileBackend::new(file).unwrap(),
            ops: Arc::new(AtomicU64::new(0)),
            budget,
        };
        let mut acked: BTreeMap<u64, String> = BTreeMap::new();
        let stream = StreamId::named("faults").unwrap();
        match Store::with_backend(backend, StoreOptions::default()) {
            Err(e) => assert!(e.is_storage_problem(), "seed {seed} round {round}: {e:?}"),
            Ok(store) => {
                let mut seq = 0;
                let mut failed = false;
                for _ in 0..500 {
                    match store.write_blocking(WriteRequest::append(
                        stream.clone(),
                        Seq(seq),
                        vec![ev("x")],
                    )) {
                        Ok(out) => {
                            seq += 1;
                            acked.insert(seq, out[0].hash_hex());
                        }
                        Err(e) => {
                            assert!(e.is_storage_problem(), "seed {seed} round {round}: {e:?}");
                            failed = true;
                            break;
                        }
                    }
                }
                assert!(
                    failed,
                    "seed {seed} round {round}: budget {budget} never ran out"
                );
            }
        }
        let store = open(&path);
        let log = store.read_stream(&stream, Seq(1)).unwrap();
        for (seq, hash) in &acked {
            let env = log.get(*seq as usize - 1).unwrap_or_else(|| {
                panic!("seed {seed} round {round}: acknowledged seq {seq} lost")
            });
            assert_eq!(&env.hash_hex(), hash);
        }
        assert!(store.verify_stream(&stream).unwrap().ok());
    }
}

#[test]
fn flipped_bytes_give_a_typed_error_or_a_failed_verify_never_a_panic() {
    let seed = seed("corruption");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("good.redb");
    let streams: Vec<StreamId> = (0..4)
        .map(|i| StreamId::named(format!("s{i}")).unwrap())
        .collect();
    {
        let store = open(&original);
        for s in &streams {
            for i in 0..50u64 {
                store
                    .write_blocking(WriteRequest::append(
                        s.clone(),
                        Seq(i),
                        vec![ev("payload-to-flip")],
                    ))
                    .unwrap();
            }
        }
    }
    let bytes = std::fs::read(&original).unwrap();
    let mut detected = 0;
    for round in 0..150 {
        let mut copy = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(copy.len() as u64) as usize;
            copy[at] ^= 1 << rng.below(8);
        }
        let path = dir.path().join(format!("bad-{round}.redb"));
        std::fs::write(&path, &copy).unwrap();
        let outcome = std::panic::catch_unwind(|| -> Result<bool, chronicle_store::StoreError> {
            let store = Store::open(&path, StoreOptions::default())?;
            let mut all_ok = true;
            for s in &streams {
                let r = store.verify_stream(s)?;
                all_ok &= r.ok() && r.events == 50;
            }
            Ok(all_ok)
        });
        match outcome {
            Err(_) => panic!("seed {seed} round {round}: a corrupt file caused a panic"),
            Ok(Err(e)) => {
                assert!(e.is_storage_problem(), "seed {seed} round {round}: {e:?}");
                detected += 1;
            }
            Ok(Ok(false)) => detected += 1,
            Ok(Ok(true)) => {} // the flip hit unused space
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("corruption: {detected}/150 copies detected (others hit unused pages)");
}

#[test]
fn a_flipped_payload_byte_is_named_by_seq() {
    // Rewrite one stored record through redb itself (so redb's own checksums
    // stay valid) to show the hash chain catches what the storage cannot.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let s = StreamId::named("s").unwrap();
    {
        let store = open(&path);
        for i in 0..10u64 {
            store
                .write_blocking(WriteRequest::append(s.clone(), Seq(i), vec![ev("abc")]))
                .unwrap();
        }
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            // The only stream: seq 7 is at global position 7.
            let def = redb::TableDefinition::<u64, &[u8]>::new("log");
            let mut t = txn.open_table(def).unwrap();
            let mut rec = t.get(7).unwrap().unwrap().value().to_vec();
            let last = rec.len() - 3;
            rec[last] ^= 0x01;
            t.insert(7, rec.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = open(&path);
    let report = store.verify_stream(&s).unwrap();
    assert_eq!(
        report.first_bad.as_ref().map(|b| b.0),
        Some(Seq(7)),
        "{report:?}"
    );
}
