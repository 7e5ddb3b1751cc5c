//! The journal's file ([`JournalFile`], the seam) and the open journal that
//! writes frames to it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frames::{encode_frame, frame_sectors};
use super::{BLOCK, GROW_BYTES, MAX_FRAME_BODY, SECTOR};
use crate::error::{StoreError, io};

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
    pub(super) fn open_with(
        path: &Path,
        salt: u64,
        next_lsn: u64,
        direct: bool,
    ) -> Result<Self, StoreError> {
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
