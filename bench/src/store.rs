//! The store benchmark behind `chronicle bench store`.
//!
//! Everything is measured in one run, in the database's own directory, so
//! each figure can be read against a baseline taken on the same disk at the
//! same moment (`raw_fsync_per_s`, `raw_batch_inserts_per_s`).

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;

use chronicle_store::{
    Append, NewEvent, Seq, Store, StoreError, StoreOptions, StreamId, WriteRequest, remove_database,
};

/// An I/O error on `path`, for `map_err`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A redb error of the benchmark's own files.
fn from_redb(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(format!("{}: {}", path.display(), e.into()))
}

/// The figures of one run; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct StoreBench {
    /// 200-byte write + fdatasync per second (one commit at a time, the floor).
    pub raw_fsync_per_s: f64,
    /// Durable single-event appends per second, one appender.
    pub appends_per_s_1: f64,
    /// Durable appends per second, 256 concurrent appenders (group commit).
    pub appends_per_s_256: f64,
    /// Median append latency with 256 appenders, milliseconds.
    pub append_p50_ms_256: f64,
    /// 99th percentile append latency with 256 appenders, milliseconds.
    pub append_p99_ms_256: f64,
    /// Durable appends per second, 1024 concurrent appenders.
    pub appends_per_s_1024: f64,
    /// The same events inserted straight into redb, 1,000 per transaction.
    pub raw_batch_inserts_per_s: f64,
    /// Events per second of a full read of 1,000,000 events (cold open).
    pub scan_events_per_s: f64,
    /// Milliseconds to open the same 1,000,000-event database read-write
    /// and close it: mostly the check of every page against its checksum
    /// (redb's `check_integrity`), done before anything is written.
    pub open_rw_ms_1m: f64,
}

/// A realistic event payload (~180 bytes of JSON, like a `StepSucceeded`).
pub fn sample_payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"StepSucceeded","step":"count-{}","attempt":1,"duration_ms":{},"output":{{"lines":{},"file":"examples/data/HDFS_2k.log"}},"truncated":false}}"#,
        i % 97,
        i % 1000,
        i * 7 % 2000
    )
    .into_bytes()
}

fn rt() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("<runtime>")))
}

/// Writes of 200 bytes + fdatasync per second (at offset 0 of a new file in
/// `dir`, see [`FsyncProbe`]), for `budget` and at least 20 writes.
pub fn raw_fsync_per_s(dir: &Path, budget: Duration) -> Result<f64, StoreError> {
    let probe = FsyncProbe::new(dir)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n < 20 {
        probe.write_once()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A file for timing 200-byte writes + fdatasync (`bench steps`'
/// `fsync_ms` is their median). Each write goes to offset 0 of the same
/// file, as `raw_fsync_per_s`'s do and as the commit journal's go over
/// space already written: writes that grow a file also commit the file
/// system's metadata and measured 20–30 % slower here. The file stays
/// open between samples (creating and removing one between slices of a
/// benchmark made the next commit wait for the file system's journal) and
/// is removed on drop.
pub struct FsyncProbe {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl FsyncProbe {
    /// Create the file `bench-fsync.bin` in `dir`.
    pub fn new(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("bench-fsync.bin");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(Self { path, file })
    }

    /// One 200-byte write at offset 0 + fdatasync.
    pub fn write_once(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(&[7u8; 200], 0)
            .map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Latencies of `samples` write + fdatasync, milliseconds.
    pub fn sample(&self, samples: usize) -> Result<Vec<f64>, StoreError> {
        let mut lat = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            let t = Instant::now();
            self.write_once()?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    }
}

impl Drop for FsyncProbe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `q` quantile (0..=1) of `v` (sorted in place).
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((v.len() - 1) as f64 * q).round() as usize;
    v[idx]
}

/// Appends with `appenders` concurrent appenders, each on its own stream,
/// one event per append, `per_appender` appends each. Returns (appends/s,
/// latencies in ms).
///
/// Several appenders are tasks spawned on a multi-thread runtime. One
/// appender is the runtime's main future, on the calling thread — as the
/// baseline's loop is — so the figure is the store's cost and not that of
/// waking an idle runtime worker from another thread (in one probe's
/// same runs, a spawned appender made 0.69–0.77 × the baseline and one on
/// the calling thread 0.88–0.98 ×; README, "Benchmarks").
pub fn concurrent_appends(
    store: &Store,
    appenders: usize,
    per_appender: usize,
) -> Result<(f64, Vec<f64>), StoreError> {
    let rt = rt()?;
    let appender = |a: usize, store: Store| async move {
        let stream = StreamId::named(format!("bench:{a}:{}", uuid::Uuid::now_v7()))?;
        let mut lat = Vec::with_capacity(per_appender);
        for i in 0..per_appender {
            let t = Instant::now();
            store
                .append(
                    stream.clone(),
                    Seq(i as u64),
                    vec![NewEvent::new(1, sample_payload(i as u64))],
                )
                .await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok::<_, StoreError>(lat)
    };
    rt.block_on(async {
        let start = Instant::now();
        let mut all = Vec::with_capacity(appenders * per_appender);
        if appenders == 1 {
            all = appender(0, store.clone()).await?;
        } else {
            let mut tasks = Vec::with_capacity(appenders);
            for a in 0..appenders {
                tasks.push(tokio::spawn(appender(a, store.clone())));
            }
            for t in tasks {
                let lat = t.await.map_err(|e| StoreError::Storage(e.to_string()))??;
                all.extend(lat);
            }
        }
        let rate = all.len() as f64 / start.elapsed().as_secs_f64();
        Ok((rate, all))
    })
}

/// Insert `total` events straight into a fresh redb file, 1,000 per
/// durable transaction; events per second.
pub fn raw_batch_inserts_per_s(dir: &Path, total: u64) -> Result<f64, StoreError> {
    const T: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
    let path = dir.join("bench-raw.redb");
    remove_database(&path);
    let db = Database::create(&path).map_err(|e| from_redb(&path, e))?;
    let map = |e: redb::Error| from_redb(&path, e);
    let start = Instant::now();
    let mut i = 0u64;
    while i < total {
        let txn = db.begin_write().map_err(|e| map(e.into()))?;
        {
            let mut t = txn.open_table(T).map_err(|e| map(e.into()))?;
            for _ in 0..1000 {
                let mut rec = vec![0u8; 52];
                rec.extend_from_slice(&sample_payload(i));
                t.insert(("bench:raw", i), rec.as_slice())
                    .map_err(|e| map(e.into()))?;
                i += 1;
            }
        }
        txn.commit().map_err(|e| map(e.into()))?;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    drop(db);
    remove_database(&path);
    Ok(rate)
}

/// Fill a fresh store at `path` with `total` events (1,000 streams), using
/// large group-committed requests.
pub fn fill(path: &Path, total: u64) -> Result<(), StoreError> {
    let store = Store::open(path, StoreOptions::default())?;
    let streams = 1000u64;
    let per_stream = total / streams;
    let ids: Vec<StreamId> = (0..streams)
        .map(|s| StreamId::named(format!("bench:scan:{s:04}")))
        .collect::<Result<_, _>>()?;
    let chunk = 100u64;
    let mut seq = 0u64;
    while seq < per_stream {
        let n = chunk.min(per_stream - seq);
        let mut req = WriteRequest::default();
        for id in &ids {
            req.appends.push(Append {
                stream: id.clone(),
                expected: Seq(seq),
                events: (0..n)
                    .map(|i| NewEvent::new(1, sample_payload(seq + i)))
                    .collect(),
            });
        }
        store.write_blocking(req)?;
        seq += n;
    }
    Ok(())
}

/// Cold-open `path` read-only (as the query commands do) and read every
/// event, decoding each envelope; events per second.
pub fn scan_events_per_s(path: &Path) -> Result<(f64, u64), StoreError> {
    let start = Instant::now();
    let store = Store::open_read_only(path)?;
    let mut bytes = 0usize;
    let n = store.scan_all(|view| {
        bytes += view.payload.len() + view.hash[0] as usize + view.seq as usize;
        Ok(())
    })?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    Ok((rate, n))
}

/// Run the whole store benchmark in `dir` (a directory on the disk to
/// measure). Takes about 20–40 s on a 2-core machine.
pub fn run(dir: &Path) -> Result<StoreBench, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("bench-appends.redb");
    remove_database(&path);
    let store = Store::open(&path, StoreOptions::default())?;
    // The baseline and the one-appender figure in interleaved slices, the
    // median of each: this disk's speed drifts by ±20 % within a minute,
    // and one long measurement of each, taken one after the other, compared
    // that drift as much as the store.
    let mut fsyncs = Vec::new();
    let mut ones = Vec::new();
    for _ in 0..5 {
        fsyncs.push(raw_fsync_per_s(dir, Duration::from_millis(400))?);
        ones.push(concurrent_appends(&store, 1, 600)?.0);
    }
    let raw_fsync_per_s = percentile(&mut fsyncs, 0.5);
    let appends_per_s_1 = percentile(&mut ones, 0.5);
    let (appends_per_s_256, mut lat) = concurrent_appends(&store, 256, 100)?;
    let append_p50_ms_256 = percentile(&mut lat, 0.50);
    let append_p99_ms_256 = percentile(&mut lat, 0.99);
    let (appends_per_s_1024, _) = concurrent_appends(&store, 1024, 100)?;
    drop(store);
    remove_database(&path);

    let raw_batch_inserts_per_s = raw_batch_inserts_per_s(dir, 200_000)?;

    let scan_path = dir.join("bench-scan.redb");
    remove_database(&scan_path);
    fill(&scan_path, 1_000_000)?;
    // Let the fill's writes reach the disk, so the scan is not timed
    // against the kernel's writeback of them.
    std::fs::File::open(&scan_path)
        .and_then(|f| f.sync_all())
        .map_err(io(&scan_path))?;
    let (scan_events_per_s, _) = scan_events_per_s(&scan_path)?;
    // A read-write open checks every page against its checksum first.
    let t = Instant::now();
    drop(Store::open(&scan_path, StoreOptions::default())?);
    let open_rw_ms_1m = t.elapsed().as_secs_f64() * 1e3;
    remove_database(&scan_path);

    Ok(StoreBench {
        raw_fsync_per_s,
        appends_per_s_1,
        appends_per_s_256,
        append_p50_ms_256,
        append_p99_ms_256,
        appends_per_s_1024,
        raw_batch_inserts_per_s,
        scan_events_per_s,
        open_rw_ms_1m,
    })
}

/// The quick-repair study: single-appender and 256-appender throughput
/// with redb quick repair off and on, and the time of a full integrity walk
/// (what a non-quick repair costs after a crash) on a 1,000,000-event file.
#[derive(Clone, Debug, Serialize)]
pub struct QuickRepairStudy {
    /// Appends/s, one appender, quick repair off.
    pub off_appends_per_s_1: f64,
    /// Appends/s, one appender, quick repair on.
    pub on_appends_per_s_1: f64,
    /// Appends/s, 256 appenders, quick repair off.
    pub off_appends_per_s_256: f64,
    /// Appends/s, 256 appenders, quick repair on.
    pub on_appends_per_s_256: f64,
    /// Milliseconds for `check_integrity` (a full repair's walk) of a
    /// 1,000,000-event database.
    pub full_walk_ms_1m: f64,
}

/// Measure [`QuickRepairStudy`] in `dir`.
pub fn quick_repair_study(dir: &Path) -> Result<QuickRepairStudy, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut figures = [0f64; 4];
    // Off, on, on, off: whichever goes second runs while the disk settles
    // from the first (measured: that alone cost the second 40%), so each
    // setting goes once first and once second, and its best run counts.
    for (i, quick) in [(0, false), (1, true), (1, true), (0, false)] {
        let path = dir.join(format!("bench-qr-{quick}.redb"));
        remove_database(&path);
        let store = Store::open(
            &path,
            StoreOptions {
                quick_repair: quick,
                ..StoreOptions::default()
            },
        )?;
        figures[i] = figures[i].max(concurrent_appends(&store, 1, 1000)?.0);
        figures[2 + i] = figures[2 + i].max(concurrent_appends(&store, 256, 50)?.0);
        drop(store);
        remove_database(&path);
    }
    let scan_path = dir.join("bench-qr-walk.redb");
    remove_database(&scan_path);
    fill(&scan_path, 1_000_000)?;
    // Let the writer thread of `fill` release the file.
    std::thread::sleep(Duration::from_millis(200));
    let mut db = Database::open(&scan_path).map_err(|e| from_redb(&scan_path, e))?;
    let t = Instant::now();
    db.check_integrity().map_err(|e| from_redb(&scan_path, e))?;
    let full_walk_ms_1m = t.elapsed().as_secs_f64() * 1e3;
    let _ = db.begin_read().map(drop);
    drop(db);
    remove_database(&scan_path);
    Ok(QuickRepairStudy {
        off_appends_per_s_1: figures[0],
        on_appends_per_s_1: figures[1],
        off_appends_per_s_256: figures[2],
        on_appends_per_s_256: figures[3],
        full_walk_ms_1m,
    })
}
