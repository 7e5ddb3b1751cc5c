//! Power loss at every sync point of a workload, for the whole write path:
//! redb's file and the commit journal both sit on a simulated disk that
//! keeps what was written since each file's last sync apart. At a chosen
//! sync point the "power fails": each unsynced write is kept, dropped or
//! torn (per 512-byte sector) at random, for both files together, and every
//! later operation fails. The store is then reopened from the images and
//! must hold every acknowledged event (and refuse clearly only if nothing
//! was acknowledged yet).
//!
//! `CHRONICLE_SEED` replays a run; the number of crash points tried is
//! printed.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use chronicle_store::JournalFile;
use chronicle_store::{IndexOp, Seq, StorageBackend, Store, StoreOptions, StreamId, WriteRequest};
use common::{Rng, ev, seed};

const SECTOR: u64 = 512;
const REDB: usize = 0;
const JOURNAL: usize = 1;

/// One unsynced change to a file.
#[derive(Clone, Debug)]
enum Change {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(buf: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write(at, data) => {
            let end = *at as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*at as usize..end].copy_from_slice(data);
        }
        Change::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

/// A file: what survives a power loss, and what reads see.
#[derive(Clone, Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    view: Vec<u8>,
    unsynced: Vec<Change>,
}

impl SimFile {
    fn from_image(image: Vec<u8>) -> Self {
        Self {
            durable: image.clone(),
            view: image,
            unsynced: Vec::new(),
        }
    }

    fn change(&mut self, c: Change) {
        apply(&mut self.view, &c);
        self.unsynced.push(c);
    }

    fn sync(&mut self) {
        self.durable = self.view.clone();
        self.unsynced.clear();
    }

    /// What the disk holds after a power loss now: the durable bytes, and
    /// of each unsynced change all, nothing, or (writes) a random subset
    /// of its sectors.
    fn after_power_loss(&self, rng: &mut Rng) -> Vec<u8> {
        let mut img = self.durable.clone();
        for c in &self.unsynced {
            match (rng.below(3), c) {
                (0, _) => apply(&mut img, c),
                (1, _) => {}
                (_, Change::Write(at, data)) => {
                    // Torn: each sector (at absolute offsets) old or new.
                    let mut pos = *at;
                    let end = at + data.len() as u64;
                    while pos < end {
                        let next = ((pos / SECTOR) + 1) * SECTOR;
                        let stop = next.min(end);
                        if rng.below(2) == 0 {
                            let from = (pos - at) as usize;
                            let piece = data[from..from + (stop - pos) as usize].to_vec();
                            apply(&mut img, &Change::Write(pos, piece));
                        }
                        pos = stop;
                    }
                }
                (_, Change::SetLen(_)) => apply(&mut img, c),
            }
        }
        img
    }
}

/// Both files and the power.
#[derive(Debug)]
struct Disk {
    files: [SimFile; 2],
    syncs: u64,
    /// Cut the power at this sync point (0-based).
    fail_at: Option<u64>,
    /// The files as the power loss left them.
    images: Option<[Vec<u8>; 2]>,
    rng: Rng,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rng")
    }
}

type Shared = Arc<Mutex<Disk>>;

fn dead() -> io::Error {
    io::Error::other("simulated power loss")
}

impl Disk {
    fn new(images: [Vec<u8>; 2], fail_at: Option<u64>, seed: u64) -> Shared {
        let [a, b] = images;
        Arc::new(Mutex::new(Self {
            files: [SimFile::from_image(a), SimFile::from_image(b)],
            syncs: 0,
            fail_at,
            images: None,
            rng: Rng(seed),
        }))
    }

    fn alive(&self) -> io::Result<()> {
        if self.images.is_some() {
            Err(dead())
        } else {
            Ok(())
        }
    }

    /// Sync `which`, unless the power fails at this sync point.
    fn sync(&mut self, which: usize) -> io::Result<()> {
        self.alive()?;
        let n = self.syncs;
        self.syncs += 1;
        if Some(n) == self.fail_at {
            let rng = &mut self.rng;
            let a = self.files[REDB].after_power_loss(rng);
            let b = self.files[JOURNAL].after_power_loss(rng);
            self.images = Some([a, b]);
            return Err(dead());
        }
        self.files[which].sync();
        Ok(())
    }
}

#[derive(Debug)]
struct SimRedb(Shared);

impl StorageBackend for SimRedb {
    fn len(&self) -> io::Result<u64> {
        let d = self.0.lock().unwrap();
        d.alive()?;
        Ok(d.files[REDB].view.len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let d = self.0.lock().unwrap();
        d.alive()?;
        let view = &d.files[REDB].view;
        let end = offset as usize + out.len();
        if end > view.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&view[offset as usize..end]);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.alive()?;
        d.files[REDB].change(Change::SetLen(len));
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.lock().unwrap().sync(REDB)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.alive()?;
        d.files[REDB].change(Change::Write(offset, data.to_vec()));
        Ok(())
    }
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

struct SimJournal(Shared);

impl JournalFile for SimJournal {
    fn size(&self) -> io::Result<u64> {
        let d = self.0.lock().unwrap();
        d.alive()?;
        Ok(d.files[JOURNAL].view.len() as u64)
    }
    fn read_all(&self) -> io::Result<Option<Vec<u8>>> {
        let d = self.0.lock().unwrap();
        d.alive()?;
        Ok(Some(d.files[JOURNAL].view.clone()))
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.alive()?;
        d.files[JOURNAL].change(Change::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().sync(JOURNAL)
    }
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.0.lock().unwrap();
        d.alive()?;
        d.files[JOURNAL].change(Change::Write(offset, buf.to_vec()));
        // The write is in flight: a power loss now may keep, drop or tear it.
        d.sync(JOURNAL)
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        // Checkpoints (redb syncs) and flushes every few groups.
        checkpoint_bytes: 16 << 10,
        memtable_bytes: 1 << 10,
        ..StoreOptions::default()
    }
}

fn open(disk: &Shared) -> Result<Store, chronicle_store::StoreError> {
    Store::with_backends(SimRedb(disk.clone()), SimJournal(disk.clone()), options())
}

/// Acknowledged writes: stream → seq → payload; projection key → value.
#[derive(Default)]
struct Acked {
    events: BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
    index: BTreeMap<String, Vec<u8>>,
}

const STREAMS: usize = 3;
const WRITES: u64 = 45;

/// Append to three streams with a projection update per write until the
/// writes run out or one fails; then close the store.
fn workload(disk: &Shared, streams: &[StreamId]) -> Acked {
    let mut acked = Acked::default();
    let Ok(store) = open(disk) else {
        return acked;
    };
    for i in 0..WRITES {
        let s = &streams[i as usize % STREAMS];
        let seq = i / STREAMS as u64;
        let mut req = WriteRequest::append(s.clone(), Seq(seq), vec![ev(&i.to_string())]);
        let value = format!("{i}").into_bytes();
        req.index.push(IndexOp::Put {
            index: "last".into(),
            key: s.key(),
            value: value.clone(),
        });
        match store.write_blocking(req) {
            Ok(envs) => {
                for e in envs {
                    acked
                        .events
                        .entry(s.key())
                        .or_default()
                        .insert(e.seq.0, e.payload.clone());
                }
                acked.index.insert(s.key(), value);
            }
            Err(_) => break,
        }
    }
    drop(store);
    acked
}

#[test]
fn power_loss_at_every_sync_point_loses_no_acknowledged_event() {
    let seed = seed("power loss");
    let streams: Vec<StreamId> = (0..STREAMS)
        .map(|i| StreamId::named(format!("s{i}")).unwrap())
        .collect();
    // Count the sync points of the whole workload.
    let disk = Disk::new([Vec::new(), Vec::new()], None, seed);
    let full = workload(&disk, &streams);
    assert_eq!(
        full.events.values().map(BTreeMap::len).sum::<usize>() as u64,
        WRITES
    );
    let points = disk.lock().unwrap().syncs;
    assert!(points > WRITES, "{points} sync points");
    let mut opened = 0;
    for point in 0..points {
        let seed = seed ^ point.wrapping_mul(0x9E37_79B9);
        let disk = Disk::new([Vec::new(), Vec::new()], Some(point), seed);
        let acked = workload(&disk, &streams);
        // The number of sync points can differ by one between runs (the
        // writer thread's last checkpoint may come before or after the
        // close's); a workload that ended first loses power after it.
        let images = {
            let mut d = disk.lock().unwrap();
            match d.images.clone() {
                Some(images) => images,
                None => {
                    let d = &mut *d;
                    let a = d.files[REDB].after_power_loss(&mut d.rng);
                    let b = d.files[JOURNAL].after_power_loss(&mut d.rng);
                    [a, b]
                }
            }
        };
        let after = Disk::new(images, None, seed);
        let store = match open(&after) {
            Ok(s) => s,
            Err(e) => {
                assert!(
                    acked.events.is_empty(),
                    "sync point {point} (seed {seed}): reopening refused ({e}) after {} acknowledged writes",
                    acked.index.len()
                );
                continue;
            }
        };
        opened += 1;
        for s in &streams {
            let got: BTreeMap<u64, Vec<u8>> = store
                .read_stream(s, Seq(1))
                .unwrap()
                .into_iter()
                .map(|e| (e.seq.0, e.payload))
                .collect();
            for (seq, payload) in acked.events.get(&s.key()).into_iter().flatten() {
                assert_eq!(
                    got.get(seq),
                    Some(payload),
                    "sync point {point} (seed {seed}): acknowledged {}#{seq} is missing",
                    s.key()
                );
            }
            assert!(store.verify_stream(s).unwrap().ok(), "sync point {point}");
            // The projection is at least as new as what was acknowledged.
            if let Some(v) = acked.index.get(&s.key()) {
                let now = store.index_get("last", &s.key()).unwrap().unwrap();
                let n = |b: &[u8]| String::from_utf8_lossy(b).parse::<u64>().unwrap();
                assert!(n(&now) >= n(v), "sync point {point}: projection went back");
            }
        }
        // It goes on: a write at the head, and a clean reopen.
        let s = &streams[0];
        let head = store.head(s).unwrap().map_or(0, |h| h.last_seq.0);
        store
            .write_blocking(WriteRequest::append(
                s.clone(),
                Seq(head),
                vec![ev("after")],
            ))
            .unwrap();
        drop(store);
        let again = open(&after).unwrap();
        assert_eq!(again.head(s).unwrap().unwrap().last_seq.0, head + 1);
    }
    eprintln!(
        "power loss: {points} sync points tried, {opened} reopened with every acknowledged write"
    );
    assert!(
        opened * 2 > points as usize,
        "most crash points come after acknowledged writes"
    );
}

/// A journal on a real file whose disk fills up after some frames.
struct FullingJournal {
    file: std::fs::File,
    path: std::path::PathBuf,
    frames_left: Option<u64>,
}

impl JournalFile for FullingJournal {
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_all(&self) -> io::Result<Option<Vec<u8>>> {
        std::fs::read(&self.path).map(Some)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, offset)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(n) = self.frames_left.as_mut() {
            if *n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "No space left on device (simulated)",
                ));
            }
            *n -= 1;
        }
        self.file.write_all_at(buf, offset)?;
        self.file.sync_data()
    }
}

/// A store on real files (redb's own file backend, so that its close does
/// what it does on a file) with a journal that fills up.
fn open_files(
    dir: &std::path::Path,
    frames_left: Option<u64>,
) -> Result<Store, chronicle_store::StoreError> {
    let rw = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    };
    let db = dir.join("db.redb");
    let jpath = dir.join("db.redb-journal");
    let journal = FullingJournal {
        file: rw(&jpath),
        path: jpath,
        frames_left,
    };
    Store::with_backends(
        chronicle_store::FileBackend::new(rw(&db)).unwrap(),
        journal,
        options(),
    )
}

#[test]
fn a_full_disk_stops_writes_and_the_database_opens_again_with_every_acknowledged_event() {
    let streams: Vec<StreamId> = (0..STREAMS)
        .map(|i| StreamId::named(format!("s{i}")).unwrap())
        .collect();
    for full_after in [1, 5, 9, 20, 33] {
        let dir = tempfile::tempdir().unwrap();
        let mut acked: BTreeMap<String, u64> = BTreeMap::new();
        {
            let store = open_files(dir.path(), Some(full_after)).unwrap();
            for i in 0..WRITES {
                let s = &streams[i as usize % STREAMS];
                let req = WriteRequest::append(s.clone(), Seq(i / STREAMS as u64), vec![ev("x")]);
                match store.write_blocking(req) {
                    Ok(_) => *acked.entry(s.key()).or_default() += 1,
                    Err(e) => {
                        assert!(e.is_storage_problem(), "{e}");
                        // The cause once, not the error's text within itself.
                        let text = e.to_string();
                        assert_eq!(text.matches("No space left").count(), 1, "{text}");
                        assert_eq!(text.matches("I/O error").count(), 1, "{text}");
                        // Stopped: every later write is refused too.
                        let again =
                            WriteRequest::append(s.clone(), Seq(i / STREAMS as u64), vec![ev("y")]);
                        assert!(store.write_blocking(again).is_err());
                        break;
                    }
                }
            }
            // Closed normally.
        }
        assert!(acked.values().sum::<u64>() < WRITES, "the disk filled up");
        // The disk has room again.
        let store = open_files(dir.path(), None).unwrap_or_else(|e| {
            panic!("full after {full_after} frames: the database does not open again: {e}")
        });
        for s in &streams {
            let got = store.read_stream(s, Seq(1)).unwrap().len() as u64;
            let want = acked.get(&s.key()).copied().unwrap_or(0);
            assert!(
                got >= want,
                "full after {full_after}: {} lost events",
                s.key()
            );
            assert!(store.verify_stream(s).unwrap().ok());
        }
        let s = &streams[0];
        let head = store.head(s).unwrap().map_or(0, |h| h.last_seq.0);
        store
            .write_blocking(WriteRequest::append(
                s.clone(),
                Seq(head),
                vec![ev("room again")],
            ))
            .unwrap();
    }
}
