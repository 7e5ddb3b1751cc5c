//! The flush thread: commits frozen memtables to redb while the writer
//! goes on (see [`crate::memtable`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use redb::Database;

use crate::error::{StoreError, from_redb};
use crate::index::StreamIndex;
use crate::memtable::Memtable;
use crate::tables::Tables;

/// A memtable that reaches this many times
/// [`StoreOptions::memtable_bytes`](crate::StoreOptions) while the flush
/// thread is still busy makes the writer wait for it.
pub(crate) const BACKLOG: usize = 16;

/// The flush thread: commits frozen memtables to redb (`Durability::None`),
/// one at a time, off the writer's path; then drops them from the readers'
/// view (see [`crate::memtable`]).
pub(crate) struct Flusher {
    tx: std::sync::mpsc::Sender<Arc<Memtable>>,
    done: std::sync::mpsc::Receiver<Result<(), String>>,
    /// A memtable was sent and its outcome not yet received.
    pub(crate) busy: bool,
    handle: std::thread::JoinHandle<()>,
}

impl Flusher {
    pub(crate) fn start(
        db: Arc<Database>,
        path: PathBuf,
        index: Arc<RwLock<StreamIndex>>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Memtable>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("chronicle-flush".into())
            .spawn(move || {
                while let Ok(mem) = rx.recv() {
                    let outcome = crate::guard::guard(&path, || {
                        let re = |e: redb::Error| from_redb(&path, e);
                        let mut txn = db.begin_write().map_err(|e| re(e.into()))?;
                        txn.set_durability(redb::Durability::None)
                            .map_err(|e| StoreError::Storage(e.to_string()))?;
                        txn.set_quick_repair(false);
                        Tables::open(&txn, &path)?.apply_memtable(&path, &mem)?;
                        txn.commit().map_err(|e| re(e.into()))
                    });
                    let msg = match outcome {
                        Ok(()) => {
                            // redb holds it now: readers may stop looking.
                            index.write().expect("stream index lock").memtable.frozen = None;
                            Ok(())
                        }
                        // The frozen memtable stays readable.
                        Err(e) => Err(e.to_string()),
                    };
                    if done_tx.send(msg).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx,
            done,
            busy: false,
            handle,
        })
    }

    /// Give the thread a frozen memtable; `false` if it has stopped.
    pub(crate) fn send(&mut self, mem: Arc<Memtable>) -> bool {
        self.busy = self.tx.send(mem).is_ok();
        self.busy
    }

    /// The outcome of the flush in progress: waits for it if `wait`,
    /// otherwise `None` while it runs. A stopped thread is an error.
    pub(crate) fn finished(&mut self, wait: bool) -> Option<Result<(), String>> {
        let r = if wait {
            self.done
                .recv()
                .map_err(|_| "the flush thread stopped".to_string())
        } else {
            match self.done.try_recv() {
                Ok(r) => Ok(r),
                Err(std::sync::mpsc::TryRecvError::Empty) => return None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    Err("the flush thread stopped".to_string())
                }
            }
        };
        self.busy = false;
        Some(r.and_then(|r| r))
    }

    /// Let the thread finish what it was given and end.
    pub(crate) fn stop(self) {
        drop(self.tx);
        if self.handle.join().is_err() {
            tracing::error!("the flush thread panicked");
        }
    }
}
