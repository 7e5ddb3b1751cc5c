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

mod file;
mod frames;
#[cfg(test)]
mod tests;

pub use file::JournalFile;
pub(crate) use file::{Journal, new_salt};
pub(crate) use frames::{Frame, JournalProblem, scan, scan_bytes};

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
