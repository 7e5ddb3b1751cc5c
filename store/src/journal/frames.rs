//! The journal's on-disk frames: sectors with their stamps, how a frame is
//! encoded, and how recovery reads frames back and tells a torn frame from
//! damage (the rule: the module docs of `journal`).

use std::path::Path;

use super::{DATA, GROW_BYTES, HEADER, MAGIC, MAX_FRAME_BODY, SECTOR, SECTORS_PER_BLOCK};
use crate::error::{StoreError, io};

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
pub(super) fn frame_sectors(len: usize) -> usize {
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

/// Write the frame `lsn` of cycle `salt` with `body` into `out` (exactly
/// [`frame_sectors`]`(body.len())` sectors): data, then each sector's stamp.
pub(super) fn encode_frame(out: &mut [u8], salt: u64, lsn: u64, body: &[u8]) {
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
