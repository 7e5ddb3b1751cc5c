//! The writer's upkeep on a file: the flush thread that commits full
//! memtables to redb while the writer goes on, and the checkpoints that
//! make redb durable and start the journal again (when it has grown
//! [`CHECKPOINT_BYTES`](crate::journal::CHECKPOINT_BYTES), and at close).
//! A failure on the way poisons the writer: later requests fail, and the
//! next open recovers from the journal.

use super::*;

impl WriterState {
    /// Start the flush thread (stores with a journal).
    pub fn start_flusher(&mut self) {
        if self.journal.is_some() {
            match Flusher::start(self.db.clone(), self.path.clone(), self.index.clone()) {
                Ok(f) => self.flusher = Some(f),
                Err(e) => {
                    self.poisoned = Some(format!("cannot start the flush thread: {e}"));
                }
            }
        }
    }

    /// The journal has grown enough for a checkpoint.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| {
            j.body_bytes() >= self.checkpoint_bytes
                || j.written()
                    >= self
                        .checkpoint_bytes
                        .saturating_mul(crate::journal::CHECKPOINT_FILE_FACTOR)
        })
    }

    /// The memtable has grown enough for the flush thread.
    pub(super) fn flush_due(&self) -> bool {
        self.flusher.is_some() && self.memtable_bytes() >= self.memtable_limit
    }

    /// A checkpoint or a flush hand-off is due.
    pub(crate) fn maintenance_due(&self) -> bool {
        self.poisoned.is_none() && (self.checkpoint_due() || self.flush_due())
    }

    /// After a group (writer thread): a checkpoint when the journal is
    /// due one, else hand a full memtable to the flush thread.
    pub(crate) fn maintain(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        if self.checkpoint_due() {
            self.checkpoint_or_poison();
        } else if self.flush_due() {
            self.start_flush();
        }
    }

    /// Closing: make redb durable and save the stream index, so the next
    /// open needs neither the journal nor a scan of the log.
    /// A store that wrote no frame since it opened (or since its last
    /// clean state) has nothing to checkpoint, and closes without a write.
    pub(crate) fn close(&mut self) {
        let nothing_written = self.journal.is_some() && !self.journal_marked;
        if self.poisoned.is_none()
            && !nothing_written
            && let Err(e) = self.checkpoint(false)
        {
            tracing::error!(error = %e, "checkpoint at close failed; the next open recovers from the journal and the log");
        }
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
    }

    pub(super) fn memtable_bytes(&self) -> usize {
        self.index
            .read()
            .expect("stream index lock")
            .memtable
            .active
            .bytes
    }

    pub(super) fn poison_flush(&mut self, e: &str) {
        // The groups are durable in the journal and readable from the
        // memtable; redb lacks them. Stop writing; the next open applies
        // the journal.
        tracing::error!(error = %e, "memtable flush failed");
        self.poisoned = Some(format!(
            "a flush of the memtable to {} failed earlier ({e}); reopen the database",
            self.path.display()
        ));
    }

    /// Hand the active memtable to the flush thread, unless it is still
    /// flushing the one before: then keep filling this one, and wait only
    /// once it holds [`BACKLOG`] times the limit (backpressure).
    pub(super) fn start_flush(&mut self) {
        let bytes = self.memtable_bytes();
        if bytes == 0 {
            return;
        }
        let over = bytes >= BACKLOG * self.memtable_limit.max(1);
        let Some(f) = self.flusher.as_mut() else {
            return;
        };
        let previous = if f.busy {
            f.finished(over)
        } else {
            Some(Ok(()))
        };
        match previous {
            // Still flushing the one before: keep filling this one.
            None => return,
            Some(Err(e)) => return self.poison_flush(&e),
            Some(Ok(())) => {}
        }
        let frozen = {
            let mut index = self.index.write().expect("stream index lock");
            let m = &mut index.memtable;
            let frozen = Arc::new(std::mem::take(&mut m.active));
            m.frozen = Some(frozen.clone());
            frozen
        };
        if !self.flusher.as_mut().is_some_and(|f| f.send(frozen)) {
            // The frozen memtable stays readable; the journal has it all.
            self.poison_flush("the flush thread stopped");
        }
    }

    /// Wait for the flush thread's current flush, if any.
    pub(super) fn wait_flush(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.flusher.as_mut() else {
            return Ok(());
        };
        if !f.busy {
            return Ok(());
        }
        match f.finished(true) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) => {
                self.poison_flush(&e);
                Err(StoreError::Storage(e))
            }
        }
    }

    pub(super) fn checkpoint_or_poison(&mut self) {
        if let Err(e) = self.checkpoint(true) {
            // The groups are durable in the journal; redb is not. Stop
            // writing and let the next open apply the journal.
            tracing::error!(error = %e, "checkpoint failed");
            self.poisoned = Some(format!(
                "a checkpoint of {} failed earlier ({e}); reopen the database",
                self.path.display()
            ));
        }
    }

    /// A checkpoint: once the flush thread is idle, one `Immediate` redb
    /// commit with the active memtable — which makes every earlier
    /// non-durable commit durable too — the stream index segments of what
    /// changed, and the last journal frame and log position it covers;
    /// then the memtable is emptied (readers see every write throughout:
    /// redb holds them first) and the journal starts again at offset 0.
    ///
    /// The same commit draws the next journal cycle's salt and records
    /// `meta.journal_open` = `open` (false only when the store closes), so
    /// that the next open knows whether the journal may hold frames.
    ///
    /// Errors: storage errors (the memtable keeps its writes; the caller
    /// poisons the writer, and the next open applies the journal).
    pub(super) fn checkpoint(&mut self, open: bool) -> Result<(), StoreError> {
        let began = std::time::Instant::now();
        let r = self.checkpoint_now(open);
        if r.is_ok() {
            crate::metrics::checkpointed(began.elapsed());
        }
        r
    }

    pub(super) fn checkpoint_now(&mut self, open: bool) -> Result<(), StoreError> {
        self.wait_flush()?;
        let lsn = self.journal.as_ref().map(Journal::last_lsn);
        let salt = crate::journal::new_salt();
        let p = self.path.clone();
        let db = self.db.clone();
        let quick_repair = self.quick_repair;
        let index = self.index.clone();
        crate::guard::guard(&p.clone(), move || {
            let re = |e: redb::Error| from_redb(&p, e);
            let mut txn = db.begin_write().map_err(|e| re(e.into()))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            txn.set_quick_repair(quick_repair);
            {
                // Only this thread changes the memtable (and no flush runs):
                // a read lock is enough to copy it into the transaction.
                let index = index.read().expect("stream index lock");
                let mut t = Tables::open(&txn, &p)?;
                t.apply_memtable(&p, &index.memtable.active)?;
            }
            {
                let mut segments = txn.open_table(STREAM_INDEX).map_err(|e| re(e.into()))?;
                let mut meta = txn.open_table(META).map_err(|e| re(e.into()))?;
                let mut index = index.write().expect("stream index lock");
                index.write_segments(&mut segments, &p)?;
                meta.insert("indexed_through", index.through.to_le_bytes().as_slice())
                    .map_err(|e| re(e.into()))?;
                if let Some(lsn) = lsn {
                    for (k, v) in [
                        ("journal_lsn", lsn),
                        ("journal_salt", salt),
                        ("journal_open", u64::from(open)),
                    ] {
                        meta.insert(k, v.to_le_bytes().as_slice())
                            .map_err(|e| re(e.into()))?;
                    }
                }
            }
            txn.commit().map_err(|e| re(e.into()))?;
            index
                .write()
                .expect("stream index lock")
                .memtable
                .active
                .clear();
            Ok(())
        })?;
        if let Some(journal) = self.journal.as_mut() {
            journal.restart(salt);
            self.journal_marked = open;
        }
        Ok(())
    }
}
