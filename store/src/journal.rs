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
//! File `DB-journal`, frames from offset 0:
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `CJ01` |
//! | 4 | body length, u32 LE |
//! | 4 | CRC-32 (IEEE) of `db_id ‖ lsn ‖ body` |
//! | 8 | `db_id`, u64 LE (the database's `meta.db_id`) |
//! | 8 | `lsn`, u64 LE: frame number, 1, 2, … for the life of the database |
//! | n | body: the group's writes (events as `position ‖ record`, index puts and deletes, snapshots; see `Op` in the source) |
//!
//! After a checkpoint the next frame is written at offset 0 again, over
//! frames redb already holds. Recovery reads frames from offset 0 while
//! each is whole (CRC), belongs to this database and carries the next lsn
//! after `meta.journal_lsn`; the first frame that does not is where the
//! journal ends (a torn last frame, zero fill, or an older frame).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{StoreError, io};

/// Default journal bytes after which the writer checkpoints redb and
/// starts the journal again at offset 0 ([`crate::StoreOptions`]'s
/// `checkpoint_bytes`): 16 MiB bounds recovery reading and the file's size;
/// a checkpoint of this much costs ~10–100 ms here.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;

/// The journal grows (zero-filled, then fsynced with its size) by this
/// much at a time, so that frames are written over existing bytes.
const GROW_BYTES: u64 = 4 << 20;

const MAGIC: &[u8; 4] = b"CJ01";
const HEADER: usize = 4 + 4 + 4 + 8 + 8;

/// The journal path of the database at `db`: `DB-journal`.
pub fn journal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

/// Remove the database at `db` and its journal (missing files are fine):
/// a database is these two files.
pub fn remove_database(db: &Path) {
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_file(journal_path(db));
}

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

fn crc(db_id: u64, lsn: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&db_id.to_le_bytes());
    h.update(&lsn.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// The frames of the journal at `path` that follow `applied_lsn`, in
/// order. A missing file has none.
pub(crate) fn pending(path: &Path, db_id: u64, applied_lsn: u64) -> Result<Vec<Frame>, StoreError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut frames = Vec::new();
    let mut at = 0usize;
    let mut expect = applied_lsn + 1;
    while let Some(h) = data.get(at..at + HEADER) {
        if &h[0..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let id = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
        let lsn = u64::from_le_bytes(h[20..28].try_into().expect("8 bytes"));
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc(id, lsn, body) != sum {
            break;
        }
        if id != db_id {
            // Whole, but written for another database (a journal copied or
            // left beside the wrong file): not ours to apply.
            tracing::warn!(
                journal = %path.display(),
                "the journal's frames belong to another database; ignoring them"
            );
            break;
        }
        if lsn != expect {
            break;
        }
        frames.push(Frame {
            lsn,
            body: body.to_vec(),
        });
        expect += 1;
        at += HEADER + len;
    }
    Ok(frames)
}

/// Direct writes go in whole blocks of this many bytes, at offsets that are
/// multiples of it (`O_DIRECT` needs the device's logical block size, 512
/// or 4,096 bytes; 4,096 satisfies both).
const BLOCK: usize = 4096;

/// The open journal of a read-write store (part of the writer's state:
/// written by whoever holds the writer's lock).
///
/// Frames are written with `O_DIRECT | O_DSYNC` where the file system
/// allows it: one `pwrite` that returns once the bytes are on the device,
/// without the page cache — measured ~1.0× one buffered 200-byte write +
/// fdatasync at offset 0 (`chronicle bench store`'s baseline), against
/// ~0.9× for buffered sequential writes + fdatasync (README, "The commit
/// journal"). Direct writes cover whole blocks, so the block holding the
/// end of the previous frame is written again with the same leading bytes
/// (as a database's write-ahead log rewrites its partial last page); a
/// device that writes a block's sectors partly writes each of them either
/// before or after, and the leading sectors hold the same bytes in both.
/// Elsewhere (tmpfs, some network file systems) frames are written
/// through the page cache and fdatasynced.
pub(crate) struct Journal {
    path: PathBuf,
    /// Buffered handle: zero fill and the size's fsync.
    file: File,
    /// `O_DIRECT | O_DSYNC` handle, if the file system takes direct writes.
    direct: Option<File>,
    db_id: u64,
    /// Where the next frame goes.
    write_at: u64,
    /// Bytes of the file already written (zero fill included).
    allocated: u64,
    next_lsn: u64,
    /// The frame being written.
    buf: Vec<u8>,
    /// The bytes of the block holding `write_at`, before `write_at`.
    tail: Vec<u8>,
    /// Room for an aligned copy of the blocks of one direct write.
    aligned: Vec<u8>,
}

impl Journal {
    /// Open (or create) the journal at `path` for writing from offset 0;
    /// the next frame gets `next_lsn`. Call only once [`pending`] frames
    /// are checkpointed into redb.
    pub(crate) fn open(path: &Path, db_id: u64, next_lsn: u64) -> Result<Self, StoreError> {
        Self::open_with(path, db_id, next_lsn, true)
    }

    /// [`Journal::open`], with direct writes only if `direct` (tests use
    /// `false` for the buffered path).
    fn open_with(path: &Path, db_id: u64, next_lsn: u64, direct: bool) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        let allocated = file.metadata().map_err(io(path))?.len();
        let mut j = Self {
            path: path.to_path_buf(),
            file,
            direct: None,
            db_id,
            write_at: 0,
            allocated,
            next_lsn,
            buf: Vec::new(),
            tail: Vec::new(),
            aligned: Vec::new(),
        };
        if j.allocated < GROW_BYTES {
            j.grow(GROW_BYTES)?;
        }
        if direct {
            j.direct = j.open_direct();
        }
        Ok(j)
    }

    /// The `O_DIRECT | O_DSYNC` handle, if opening it and one aligned write
    /// of a zero block at offset 0 (where the next frame goes anyway)
    /// succeed.
    fn open_direct(&mut self) -> Option<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(&self.path)
            .ok()?;
        let zero = aligned_slice(&mut self.aligned, BLOCK);
        zero.fill(0);
        match f.write_all_at(zero, 0) {
            Ok(()) => Some(f),
            Err(e) => {
                tracing::debug!(journal = %self.path.display(), error = %e, "direct writes refused; using buffered writes and fdatasync");
                None
            }
        }
    }

    /// Bytes written since the last checkpoint.
    pub(crate) fn written(&self) -> u64 {
        self.write_at
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
                .write_all_at(&zeros[..n], at)
                .map_err(io(&self.path))?;
            at += n as u64;
        }
        self.file.sync_all().map_err(io(&self.path))?;
        self.allocated = to;
        Ok(())
    }

    /// Write one frame with `body`, durably; returns its lsn. On error the
    /// frame may or may not be on disk: the caller must stop writing (the
    /// store poisons itself) and let recovery decide.
    pub(crate) fn append(&mut self, body: &[u8]) -> Result<u64, StoreError> {
        let lsn = self.next_lsn;
        let len = u32::try_from(body.len()).map_err(|_| {
            StoreError::InvalidRequest(format!(
                "one group commit of {} bytes exceeds the journal's 4 GiB frame limit",
                body.len()
            ))
        })?;
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf
            .extend_from_slice(&crc(self.db_id, lsn, body).to_le_bytes());
        self.buf.extend_from_slice(&self.db_id.to_le_bytes());
        self.buf.extend_from_slice(&lsn.to_le_bytes());
        self.buf.extend_from_slice(body);
        let end = self.write_at + self.buf.len() as u64;
        // Room for the frame and the rest of its last block.
        let end_block = end.div_ceil(BLOCK as u64) * BLOCK as u64;
        if end_block > self.allocated {
            self.grow(end_block + GROW_BYTES)?;
        }
        match &self.direct {
            Some(direct) => {
                let start = self.write_at - self.tail.len() as u64;
                let n = (end_block - start) as usize;
                let out = aligned_slice(&mut self.aligned, n);
                out[..self.tail.len()].copy_from_slice(&self.tail);
                out[self.tail.len()..self.tail.len() + self.buf.len()].copy_from_slice(&self.buf);
                out[self.tail.len() + self.buf.len()..].fill(0);
                direct.write_all_at(out, start).map_err(io(&self.path))?;
                let keep = (end % BLOCK as u64) as usize;
                let last_block = n - n.min(BLOCK);
                self.tail.clear();
                if keep != 0 {
                    self.tail
                        .extend_from_slice(&out[last_block..last_block + keep]);
                }
            }
            None => {
                self.file
                    .write_all_at(&self.buf, self.write_at)
                    .map_err(io(&self.path))?;
                self.file.sync_data().map_err(io(&self.path))?;
            }
        }
        self.write_at = end;
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Whether frames are written with `O_DIRECT | O_DSYNC`.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// After a checkpoint: the next frame goes to offset 0. Frames left
    /// behind it carry older lsns and end any later recovery read.
    pub(crate) fn restart(&mut self) {
        self.write_at = 0;
        self.tail.clear();
    }
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
        let mut j = Journal::open_with(&path, 3, 1, direct).unwrap();
        eprintln!("direct writes asked {direct}, used {}", j.is_direct());
        let bodies: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let n = (i as usize * 977) % 9_000;
                (0..n).map(|b| (b as u32 ^ i) as u8).collect()
            })
            .collect();
        for b in &bodies {
            j.append(b).unwrap();
        }
        let frames = pending(&path, 3, 0).unwrap();
        assert_eq!(frames.len(), bodies.len());
        for (f, b) in frames.iter().zip(&bodies) {
            assert_eq!(&f.body, b);
        }
        // After a restart the new frames overwrite the old ones from offset
        // 0, and the first older frame behind them ends the journal.
        j.restart();
        for b in &bodies[..5] {
            j.append(b).unwrap();
        }
        let frames = pending(&path, 3, 300).unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[4].lsn, 305);
        assert_eq!(frames[4].body, bodies[4]);
    }

    #[test]
    fn ops_round_trip_and_torn_frames_end_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir.path().join("db.redb"));
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

        let mut j = Journal::open(&path, 7, 5).unwrap();
        assert_eq!(j.append(&body).unwrap(), 5);
        assert_eq!(j.append(b"").unwrap(), 6);
        let end = j.written();
        drop(j);
        // Another database's frames, and frames already applied (a journal
        // always starts again at offset 0 after a checkpoint), are not pending.
        assert!(pending(&path, 8, 4).unwrap().is_empty());
        assert!(pending(&path, 7, 5).unwrap().is_empty());
        let frames = pending(&path, 7, 4).unwrap();
        assert_eq!(frames.iter().map(|f| f.lsn).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(frames[0].body, body);
        // A torn last frame ends the journal before it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], end - 1).unwrap();
        assert_eq!(pending(&path, 7, 4).unwrap().len(), 1);
        f.write_all_at(&[0xff], HEADER as u64 + 3).unwrap();
        assert!(pending(&path, 7, 4).unwrap().is_empty());
        // After a restart, frames are written from offset 0 again and the
        // older frames behind them are not read.
        let mut j = Journal::open(&path, 7, 7).unwrap();
        j.append(b"").unwrap();
        j.restart();
        assert_eq!(j.append(b"").unwrap(), 8);
        assert_eq!(
            pending(&path, 7, 7)
                .unwrap()
                .iter()
                .map(|f| f.lsn)
                .collect::<Vec<_>>(),
            [8]
        );
    }
}
