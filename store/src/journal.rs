//! The commit journal: a write-ahead file beside the database that makes a
//! group commit durable with one small sequential write (`O_DIRECT | O_DSYNC`, or
//! a buffered write and an fdatasync).
//!
//! Why: a durable redb commit rewrites every B-tree page on the path of
//! each changed key plus redb's own system pages and header — about eight
//! scattered 4 KiB pages for one event — and an fdatasync of eight pages
//! costs ~1.7× one of a single page on this kind of disk (figures in the
//! README, "The commit journal"). The journal writes a group as one frame
//! into space already written once (no file-size change, so the write
//! flushes data only); the group's writes then go into the
//! [memtable](crate::memtable), readable at once, and reach redb in
//! non-durable flushes of many groups. redb is made durable by a
//! checkpoint — an `Immediate` commit — every [`CHECKPOINT_BYTES`] of
//! journal and when the store closes.
//!
//! ## Layout
//!
//! File `DB-journal`: 512-byte sectors. Each sector ends with a stamp —
//! `salt` (u64 LE), `lsn` (u64 LE), CRC-32 (IEEE) of the sector's data,
//! salt and lsn (u32 LE) — so that every sector tells by itself whether it
//! is whole and which frame wrote it. The 492 data bytes of the sectors of
//! one frame, in order, hold `CJ02`, the body length (u64 LE) and the body:
//! the group's writes (events as `position ‖ record`, index puts and
//! deletes, snapshots; see `Op` in the source). A frame fills whole 4 KiB
//! blocks and starts at a block boundary, so a frame write never rewrites
//! a block that holds an earlier, acknowledged frame (no reliance on the
//! device's powersafe overwrite).
//!
//! `lsn` numbers frames 1, 2, … for the life of the database; `salt` is
//! drawn at random at each checkpoint (`meta.journal_salt`), when the next
//! frame goes to offset 0 again: frames of an older cycle — including ones
//! a crash left behind a torn frame — never pass for frames of this one.
//!
//! ## Recovery: a torn frame against damage
//!
//! `meta.journal_open` is 1 from before the first frame of a store's life
//! is written until a clean close; only then may the journal hold frames
//! redb lacks. Opening such a database reads frames of the current salt
//! from offset 0, lsn `meta.journal_lsn + 1` on. Every sector is one of:
//! all zeros (never written), whole (its CRC holds: written by some
//! frame), or damaged (CRC fails). Under the usual model of a crash — each
//! 512-byte sector of an interrupted write is either old or new — a crash
//! during a frame's write leaves its sectors old or new, never damaged:
//!
//! - **torn** (dropped quietly): the next frame's sectors are partly
//!   missing (zero or an older stamp) and none is damaged; such a frame was
//!   never acknowledged, since a frame is acknowledged only once its whole
//!   write returned;
//! - **damaged** (refused): a sector with a failing CRC where the next
//!   frame is, or a whole sector of this cycle with a higher lsn after the
//!   end (a later frame exists, so the one before it was written whole and
//!   acknowledged); a missing or truncated journal file is refused the same
//!   way. [`StoreError::JournalLost`] names what is wrong and the two ways
//!   on: restore the journal, or accept the loss
//!   ([`StoreOptions::accept_journal_loss`](crate::StoreOptions), `chronicle
//!   recover --accept-loss`), which applies the frames before the damage and
//!   records what was given up in the `index` table
//!   ([`JOURNAL_LOSS_INDEX`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{StoreError, io};

/// Default bytes of group writes after which the writer checkpoints redb
/// and starts the journal again at offset 0 ([`crate::StoreOptions`]'s
/// `checkpoint_bytes`): 16 MiB bounds recovery's work; a checkpoint of this
/// much costs ~10–100 ms here. Frames fill whole 4 KiB blocks, so small
/// groups take more file than their bytes: a checkpoint also comes once
/// the file holds 16 times this much (the file counts 4 KiB for a one-event group).
pub const CHECKPOINT_BYTES: u64 = 16 << 20;

/// The journal file's bytes since a checkpoint that bring the next one,
/// as a multiple of `checkpoint_bytes` (16 × 16 MiB = 256 MiB by default,
/// ~65,000 one-event groups). Counting the file's bytes alone checkpointed
/// one-event workloads ~12× as often as before frames were padded, and
/// each checkpoint stalls the writer (p99 latency with 256 appenders rose
/// from 1.7–3.2 ms to 6.7–7.3 ms, `chronicle bench store`, 2026-11-30).
pub const CHECKPOINT_FILE_FACTOR: u64 = 16;

/// The journal grows (zero-filled, then fsynced with its size) by this
/// much at a time, so that frames are written over existing bytes. A
/// journal file shorter than this was truncated.
const GROW_BYTES: u64 = 4 << 20;

/// The `index` table's name under which an accepted journal loss is
/// recorded: key = the time of the open (RFC 3339), value = JSON
/// `{"journal", "problem", "frames_applied", "last_lsn_applied"}`.
pub const JOURNAL_LOSS_INDEX: &str = "store.journal_loss";

const MAGIC: &[u8; 4] = b"CJ02";
/// Bytes of a sector.
const SECTOR: usize = 512;
/// The stamp at the end of each sector: salt, lsn, CRC-32.
const STAMP: usize = 8 + 8 + 4;
/// Data bytes of a sector.
const DATA: usize = SECTOR - STAMP;
/// Magic and body length, at the start of a frame's data.
const HEADER: usize = 4 + 8;
/// Direct writes go in whole blocks of this many bytes, at offsets that are
/// multiples of it (`O_DIRECT` needs the device's logical block size, 512
/// or 4,096 bytes; 4,096 satisfies both); frames fill whole blocks.
const BLOCK: usize = 4096;
const SECTORS_PER_BLOCK: usize = BLOCK / SECTOR;

/// Largest body of one frame: 1 GiB. A larger group is refused alone
/// ([`StoreError::InvalidRequest`]), before anything is written.
pub(crate) const MAX_FRAME_BODY: usize = 1 << 30;

pub(crate) use crate::paths::journal_path;

/// One write of a group, as journaled and as applied to the tables.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// `log[position] = record` (the record names its stream and seq).
    Event { position: u64, record: &'a [u8] },
    /// `index[(name, key)] = value`.
    IndexPut {
        name: &'a str,
        key: &'a str,
        value: &'a [u8],
    },
    /// Remove `index[(name, key)]`.
    IndexDelete { name: &'a str, key: &'a str },
    /// `snapshots[(stream, seq)] = bytes`.
    Snapshot {
        stream: &'a str,
        seq: u64,
        bytes: &'a [u8],
    },
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Op<'_> {
    /// Append this op's encoding to a frame body.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Op::Event { position, record } => {
                out.push(1);
                out.extend_from_slice(&position.to_le_bytes());
                put_bytes(out, record);
            }
            Op::IndexPut { name, key, value } => {
                out.push(3);
                put_bytes(out, name.as_bytes());
                put_bytes(out, key.as_bytes());
                put_bytes(out, value);
            }
            Op::IndexDelete { name, key } => {
                out.push(4);
                put_bytes(out, name.as_bytes());
                put_bytes(out, key.as_bytes());
            }
            Op::Snapshot { stream, seq, bytes } => {
                out.push(5);
                put_bytes(out, stream.as_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                put_bytes(out, bytes);
            }
        }
    }
}

/// Reads the ops of a frame body in order.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.body.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
    fn op(&mut self) -> Option<Op<'a>> {
        let tag = self.take(1)?[0];
        Some(match tag {
            1 => Op::Event {
                position: self.u64()?,
                record: self.bytes()?,
            },
            3 => Op::IndexPut {
                name: self.str()?,
                key: self.str()?,
                value: self.bytes()?,
            },
            4 => Op::IndexDelete {
                name: self.str()?,
                key: self.str()?,
            },
            5 => Op::Snapshot {
                stream: self.str()?,
                seq: self.u64()?,
                bytes: self.bytes()?,
            },
            _ => return None,
        })
    }
}

/// The ops of a frame body; `Err` names the byte offset where the body
/// stops making sense (a CRC-valid frame that does not decode is a bug or
/// a foreign file, reported as corruption).
pub(crate) fn decode_ops(body: &[u8]) -> Result<Vec<Op<'_>>, usize> {
    let mut r = Reader { body, at: 0 };
    let mut ops = Vec::new();
    while r.at < body.len() {
        let at = r.at;
        ops.push(r.op().ok_or(at)?);
    }
    Ok(ops)
}

/// A frame read back from the journal.
#[derive(Debug)]
pub(crate) struct Frame {
    pub lsn: u64,
    pub body: Vec<u8>,
}

fn sector_crc(data: &[u8], salt: u64, lsn: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.update(&salt.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.finalize()
}

/// What one sector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sector {
    /// All zeros: never written.
    Zero,
    /// Its CRC holds: written whole by the frame `lsn` of cycle `salt`.
    Whole { salt: u64, lsn: u64 },
    /// Its CRC fails.
    Damaged,
}

fn classify(s: &[u8]) -> Sector {
    let (data, stamp) = s.split_at(DATA);
    let salt = u64::from_le_bytes(stamp[0..8].try_into().expect("8 bytes"));
    let lsn = u64::from_le_bytes(stamp[8..16].try_into().expect("8 bytes"));
    let sum = u32::from_le_bytes(stamp[16..20].try_into().expect("4 bytes"));
    if sector_crc(data, salt, lsn) == sum {
        Sector::Whole { salt, lsn }
    } else if s.iter().all(|&b| b == 0) {
        Sector::Zero
    } else {
        Sector::Damaged
    }
}

/// Sectors of a frame with a body of `len` bytes (whole blocks).
fn frame_sectors(len: usize) -> usize {
    (HEADER + len).div_ceil(DATA).div_ceil(SECTORS_PER_BLOCK) * SECTORS_PER_BLOCK
}

/// Why the journal cannot be trusted to hold every acknowledged frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JournalProblem {
    /// The file is gone.
    Missing,
    /// The file is shorter than a journal ever is.
    Truncated { len: u64 },
    /// A damaged sector where frame `lsn` is, or a later frame after it
    /// cannot be read.
    Damaged { lsn: u64, offset: u64, what: String },
}

impl std::fmt::Display for JournalProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => write!(f, "is missing"),
            Self::Truncated { len } => write!(
                f,
                "is truncated ({len} bytes; a journal is at least {GROW_BYTES})"
            ),
            Self::Damaged { lsn, offset, what } => {
                write!(f, "is damaged at byte {offset} (frame {lsn}): {what}")
            }
        }
    }
}

/// What recovery read from a journal.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Whole frames of this cycle after `applied_lsn`, in order.
    pub frames: Vec<Frame>,
    /// Why frames may be missing after `frames` (none: the journal ended
    /// cleanly or with a torn, never acknowledged frame).
    pub problem: Option<JournalProblem>,
}

/// Read the journal at `path` (see [`scan_bytes`]).
///
/// Errors: [`StoreError::Io`] when the file exists and cannot be read.
pub(crate) fn scan(path: &Path, salt: u64, applied_lsn: u64) -> Result<Scan, StoreError> {
    let data = match std::fs::read(path) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(path)(e)),
    };
    Ok(scan_bytes(data, salt, applied_lsn))
}

/// The frames of cycle `salt` after `applied_lsn` in a journal's bytes
/// (`None`: no file), in order, and whether acknowledged frames may be
/// missing after them (see the module docs for the rule).
pub(crate) fn scan_bytes(data: Option<Vec<u8>>, salt: u64, applied_lsn: u64) -> Scan {
    let Some(data) = data else {
        return Scan {
            frames: Vec::new(),
            problem: Some(JournalProblem::Missing),
        };
    };
    if (data.len() as u64) < GROW_BYTES {
        return Scan {
            frames: Vec::new(),
            problem: Some(JournalProblem::Truncated {
                len: data.len() as u64,
            }),
        };
    }
    let sectors: Vec<&[u8]> = data.chunks_exact(SECTOR).collect();
    let mut out = Scan::default();
    let mut at = 0usize;
    let mut expect = applied_lsn + 1;
    let damaged = |lsn: u64, sector: usize, what: &str| JournalProblem::Damaged {
        lsn,
        offset: (sector * SECTOR) as u64,
        what: what.to_string(),
    };
    // Whole frames of this cycle, in lsn order.
    while let Some(first) = sectors.get(at) {
        match classify(first) {
            Sector::Whole { salt: s, lsn } if s == salt && lsn == expect => {}
            Sector::Damaged => {
                out.problem = Some(damaged(
                    expect,
                    at,
                    "a sector where the next frame would start fails its checksum",
                ));
                return out;
            }
            // Zero, another cycle's or an older frame: the end (or a frame
            // whose first sector was not written: torn).
            _ => break,
        }
        let head = &first[..HEADER];
        let len = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
        if &head[..4] != MAGIC || len > MAX_FRAME_BODY as u64 {
            out.problem = Some(damaged(expect, at, "a whole sector starts no frame"));
            return out;
        }
        let len = len as usize;
        let n = frame_sectors(len);
        let mut body = Vec::with_capacity(len);
        let mut torn = false;
        for i in 0..n {
            let Some(sec) = sectors.get(at + i) else {
                torn = true;
                break;
            };
            match classify(sec) {
                Sector::Whole { salt: s, lsn } if s == salt && lsn == expect => {
                    let data = &sec[..DATA];
                    let data = if i == 0 { &data[HEADER..] } else { data };
                    let want = len - body.len();
                    body.extend_from_slice(&data[..want.min(data.len())]);
                }
                Sector::Damaged => {
                    out.problem = Some(damaged(expect, at + i, "a sector fails its checksum"));
                    return out;
                }
                _ => {
                    torn = true;
                    break;
                }
            }
        }
        if torn {
            break;
        }
        out.frames.push(Frame { lsn: expect, body });
        expect += 1;
        at += n;
    }
    // After the end: a whole sector of this cycle with a higher lsn means
    // a later frame was written, so the one at the end was acknowledged
    // and is unreadable.
    for (i, sec) in sectors.iter().enumerate().skip(at) {
        if let Sector::Whole { salt: s, lsn } = classify(sec)
            && s == salt
            && lsn > expect
        {
            out.problem = Some(damaged(
                expect,
                at,
                &format!(
                    "frame {expect} cannot be read but frame {lsn} follows at byte {}",
                    i * SECTOR
                ),
            ));
            break;
        }
    }
    out
}

/// The file under the journal: the seam where tests put a simulated disk
/// (a file that keeps unsynced writes apart and loses or tears them at a
/// simulated power loss), as redb's `StorageBackend` is for the database.
///
/// Offsets and lengths are bytes. Every method's error is an I/O error of
/// the file; after one, the journal's caller stops writing.
pub trait JournalFile: Send + 'static {
    /// The file's size, bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// The whole file (for recovery); `None` if it does not exist.
    fn read_all(&self) -> std::io::Result<Option<Vec<u8>>>;
    /// Write `buf` at `offset`, not necessarily durably (zero fill).
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Make every earlier write and the file's length durable.
    fn sync_all(&mut self) -> std::io::Result<()>;
    /// Write `buf` at `offset` and return once it is durable (a frame).
    /// `buf` is whole 4 KiB blocks at a 4 KiB offset, in memory aligned to
    /// 4 KiB.
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
}

/// The journal's real file: frames written with `O_DIRECT | O_DSYNC`
/// where the file system allows it — one `pwrite` of whole blocks that
/// returns once the bytes are on the device, without the page cache
/// (measured ~1.0× one buffered 200-byte write + fdatasync at offset 0,
/// `chronicle bench store`'s baseline, against ~0.9× for buffered
/// sequential writes + fdatasync; README, "The commit journal");
/// elsewhere (tmpfs, some network file systems) through the page cache and
/// fdatasynced.
struct FileJournal {
    path: PathBuf,
    /// Buffered handle: reads, zero fill, the size's fsync, and frames
    /// where direct writes are refused.
    file: File,
    /// `O_DIRECT | O_DSYNC` handle, once the first frame showed that the
    /// file system takes direct writes.
    direct: Option<File>,
    /// Direct writes not tried yet.
    try_direct: bool,
}

impl FileJournal {
    /// Open (or create) the journal file at `path`; a new file's directory
    /// entry is made durable before this returns. Frames go with direct
    /// writes if `direct` and the file system takes them.
    fn open(path: &Path, direct: bool) -> Result<Self, StoreError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        if !existed {
            // The new name must survive a crash before frames in it count.
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&dir))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            direct: None,
            try_direct: direct,
        })
    }
}

impl JournalFile for FileJournal {
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_all(&self) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
    fn write_durable(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if std::mem::take(&mut self.try_direct) {
            self.direct = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                .open(&self.path)
                .ok();
        }
        if let Some(direct) = &self.direct {
            match direct.write_all_at(buf, offset) {
                Ok(()) => return Ok(()),
                // The file system refuses direct writes (EINVAL): buffered
                // from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(journal = %self.path.display(), error = %e, "direct writes refused; using buffered writes and fdatasync");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(buf, offset)?;
        self.file.sync_data()
    }
}

/// The open journal of a read-write store (part of the writer's state:
/// written by whoever holds the writer's lock): frames on a
/// [`JournalFile`].
pub(crate) struct Journal {
    /// The journal's path (or a label), for errors.
    path: PathBuf,
    file: Box<dyn JournalFile>,
    /// This cycle's salt.
    salt: u64,
    /// Where the next frame goes (a multiple of [`BLOCK`]).
    write_at: u64,
    /// Bytes of the file already written (zero fill included).
    allocated: u64,
    next_lsn: u64,
    /// Body bytes of the frames since the last checkpoint.
    body_bytes: u64,
    /// Room for an aligned copy of the blocks of one frame.
    aligned: Vec<u8>,
}

impl Journal {
    /// Open (or create) the journal file at `path` for writing from offset
    /// 0 with cycle `salt`; the next frame gets `next_lsn`. Call only once
    /// the frames [`scan`] found are checkpointed into redb.
    pub(crate) fn open(path: &Path, salt: u64, next_lsn: u64) -> Result<Self, StoreError> {
        Self::open_with(path, salt, next_lsn, true)
    }

    /// [`Journal::open`], with direct writes only if `direct` (tests use
    /// `false` for the buffered path).
    fn open_with(path: &Path, salt: u64, next_lsn: u64, direct: bool) -> Result<Self, StoreError> {
        Self::on(
            Box::new(FileJournal::open(path, direct)?),
            path,
            salt,
            next_lsn,
        )
    }

    /// A journal on `file` (named `label` in errors), as [`Journal::open`].
    pub(crate) fn on(
        file: Box<dyn JournalFile>,
        label: &Path,
        salt: u64,
        next_lsn: u64,
    ) -> Result<Self, StoreError> {
        let allocated = file.size().map_err(io(label))?;
        let mut j = Self {
            path: label.to_path_buf(),
            file,
            salt,
            write_at: 0,
            allocated,
            next_lsn,
            body_bytes: 0,
            aligned: Vec::new(),
        };
        if j.allocated < GROW_BYTES {
            j.grow(GROW_BYTES)?;
        }
        Ok(j)
    }

    /// Bytes of the file written since the last checkpoint (frames fill
    /// whole blocks: a one-event group takes 4 KiB).
    pub(crate) fn written(&self) -> u64 {
        self.write_at
    }

    /// Bytes of group writes (frame bodies) since the last checkpoint:
    /// what a checkpoint has to make durable in redb.
    pub(crate) fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The lsn of the last frame written (0 before the first).
    pub(crate) fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Zero-fill the file up to at least `to` bytes and make its new size
    /// durable, so frames are later written over existing bytes.
    fn grow(&mut self, to: u64) -> Result<(), StoreError> {
        let to = to.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.allocated;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.file
                .write_at(&zeros[..n], at)
                .map_err(io(&self.path))?;
            at += n as u64;
        }
        self.file.sync_all().map_err(io(&self.path))?;
        self.allocated = to;
        Ok(())
    }

    /// Write one frame with `body`, durably; returns its lsn.
    ///
    /// Errors: [`StoreError::InvalidRequest`] for a body over
    /// [`MAX_FRAME_BODY`] (nothing written; the caller checks first);
    /// [`StoreError::Io`] — then the frame may or may not be on disk: the
    /// caller must stop writing (the store poisons itself) and let recovery
    /// decide.
    pub(crate) fn append(&mut self, body: &[u8]) -> Result<u64, StoreError> {
        if body.len() > MAX_FRAME_BODY {
            return Err(StoreError::InvalidRequest(format!(
                "one group commit of {} bytes exceeds the journal's frame limit of {MAX_FRAME_BODY} bytes",
                body.len()
            )));
        }
        let lsn = self.next_lsn;
        let n = frame_sectors(body.len());
        let bytes = n * SECTOR;
        let end = self.write_at + bytes as u64;
        if end > self.allocated {
            self.grow(end + GROW_BYTES)?;
        }
        let out = aligned_slice(&mut self.aligned, bytes);
        encode_frame(out, self.salt, lsn, body);
        self.file
            .write_durable(out, self.write_at)
            .map_err(io(&self.path))?;
        self.write_at = end;
        self.body_bytes += body.len() as u64;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// After a checkpoint that recorded `salt` as the next cycle's: the
    /// next frame goes to offset 0. Frames left behind carry the older
    /// salt and end any later recovery read.
    pub(crate) fn restart(&mut self, salt: u64) {
        self.write_at = 0;
        self.body_bytes = 0;
        self.salt = salt;
    }
}

/// Write the frame `lsn` of cycle `salt` with `body` into `out` (exactly
/// [`frame_sectors`]`(body.len())` sectors): data, then each sector's stamp.
fn encode_frame(out: &mut [u8], salt: u64, lsn: u64, body: &[u8]) {
    let mut rest = body;
    for (i, sec) in out.chunks_exact_mut(SECTOR).enumerate() {
        let (data, stamp) = sec.split_at_mut(DATA);
        let mut room: &mut [u8] = data;
        if i == 0 {
            room[..4].copy_from_slice(MAGIC);
            room[4..12].copy_from_slice(&(body.len() as u64).to_le_bytes());
            room = &mut room[HEADER..];
        }
        let k = rest.len().min(room.len());
        room[..k].copy_from_slice(&rest[..k]);
        room[k..].fill(0);
        rest = &rest[k..];
        stamp[0..8].copy_from_slice(&salt.to_le_bytes());
        stamp[8..16].copy_from_slice(&lsn.to_le_bytes());
        let sum = sector_crc(data, salt, lsn);
        stamp[16..20].copy_from_slice(&sum.to_le_bytes());
    }
}

/// A fresh salt for the next journal cycle (random; no clock read).
pub(crate) fn new_salt() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// `n` bytes of `room` starting at a multiple of [`BLOCK`] in memory (as
/// `O_DIRECT` needs), growing `room` as needed.
fn aligned_slice(room: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if room.len() < n + BLOCK {
        room.resize(n + BLOCK, 0);
    }
    let at = (BLOCK - room.as_ptr() as usize % BLOCK) % BLOCK;
    &mut room[at..at + n]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5a17;

    #[test]
    fn frames_of_every_size_read_back_across_blocks_and_restarts() {
        // Direct writes where the file system takes them, and buffered ones.
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            frames_read_back(dir.path(), direct);
        }
    }

    fn frames_read_back(dir: &Path, direct: bool) {
        let path = journal_path(&dir.join("db.redb"));
        let mut j = Journal::open_with(&path, SALT, 1, direct).unwrap();
        let bodies: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let n = (i as usize * 977) % 9_000;
                (0..n).map(|b| (b as u32 ^ i) as u8).collect()
            })
            .collect();
        for b in &bodies {
            j.append(b).unwrap();
            assert_eq!(j.written() % BLOCK as u64, 0, "frames fill whole blocks");
        }
        let scan = scan(&path, SALT, 0).unwrap();
        assert_eq!(scan.problem, None);
        assert_eq!(scan.frames.len(), bodies.len());
        for (f, b) in scan.frames.iter().zip(&bodies) {
            assert_eq!(&f.body, b);
        }
        // After a restart with a new salt the new frames overwrite the old
        // ones from offset 0; the older cycle's frames behind them end the
        // journal, and are no damage.
        j.restart(SALT + 1);
        for b in &bodies[..5] {
            j.append(b).unwrap();
        }
        let scan2 = super::scan(&path, SALT + 1, 300).unwrap();
        assert_eq!(scan2.problem, None);
        assert_eq!(scan2.frames.len(), 5);
        assert_eq!(scan2.frames[4].lsn, 305);
        assert_eq!(scan2.frames[4].body, bodies[4]);
    }

    #[test]
    fn ops_round_trip() {
        let ops = [
            Op::Event {
                position: 9,
                record: b"rec",
            },
            Op::IndexPut {
                name: "runs",
                key: "k",
                value: b"v",
            },
            Op::IndexDelete {
                name: "runs",
                key: "k",
            },
            Op::Snapshot {
                stream: "s",
                seq: 2,
                bytes: b"snap",
            },
        ];
        let mut body = Vec::new();
        for op in &ops {
            op.encode(&mut body);
        }
        assert_eq!(decode_ops(&body).unwrap(), ops);
        // A cut body is refused at the start of the op it cuts.
        let mut all_but_last = Vec::new();
        for op in &ops[..3] {
            op.encode(&mut all_but_last);
        }
        assert_eq!(
            decode_ops(&body[..body.len() - 1]).unwrap_err(),
            all_but_last.len()
        );
    }

    /// A journal with three frames of 1,000 bytes (one block each).
    fn three_frames(dir: &Path) -> (PathBuf, Vec<u8>) {
        let path = journal_path(&dir.join("db.redb"));
        let mut j = Journal::open_with(&path, SALT, 1, false).unwrap();
        for i in 0..3u8 {
            j.append(&[i; 1000]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        (path, bytes)
    }

    #[test]
    fn a_torn_last_frame_is_dropped_quietly() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut bytes) = three_frames(dir.path());
        // The third frame's second sector never reached the disk (an
        // interrupted write keeps each sector old or new): zero, as before.
        bytes[2 * BLOCK + SECTOR..2 * BLOCK + 2 * SECTOR].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path, SALT, 0).unwrap();
        assert_eq!(s.problem, None);
        assert_eq!(s.frames.len(), 2);
        // Its first sector missing instead: the same.
        let (path, mut bytes) = three_frames(dir.path());
        bytes[2 * BLOCK..2 * BLOCK + SECTOR].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path, SALT, 0).unwrap();
        assert_eq!((s.problem, s.frames.len()), (None, 2));
    }

    #[test]
    fn damage_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        // One flipped byte in the only... last frame: damage, not a tear.
        let (path, mut bytes) = three_frames(dir.path());
        bytes[2 * BLOCK + 100] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path, SALT, 0).unwrap();
        assert_eq!(s.frames.len(), 2);
        assert!(
            matches!(s.problem, Some(JournalProblem::Damaged { lsn: 3, .. })),
            "{:?}",
            s.problem
        );
        // A damaged middle frame with an intact later one: the later one's
        // stamp shows the middle one was acknowledged.
        let (path, mut bytes) = three_frames(dir.path());
        bytes[BLOCK..BLOCK + SECTOR].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path, SALT, 0).unwrap();
        assert_eq!(s.frames.len(), 1);
        let problem = s.problem.expect("refused").to_string();
        assert!(
            problem.contains("frame 2 cannot be read but frame 3 follows"),
            "{problem}"
        );
        // Missing and truncated files.
        std::fs::write(&path, &bytes[..BLOCK]).unwrap();
        assert!(matches!(
            scan(&path, SALT, 0).unwrap().problem,
            Some(JournalProblem::Truncated { len }) if len == BLOCK as u64
        ));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            scan(&path, SALT, 0).unwrap().problem,
            Some(JournalProblem::Missing)
        );
    }

    #[test]
    fn another_cycles_frames_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = three_frames(dir.path());
        // Another salt (an older cycle, or another database's journal).
        let s = scan(&path, SALT ^ 1, 0).unwrap();
        assert_eq!((s.problem, s.frames.len()), (None, 0));
        // Frames already applied are not pending.
        let s = scan(&path, SALT, 3).unwrap();
        assert_eq!((s.problem, s.frames.len()), (None, 0));
    }
}
