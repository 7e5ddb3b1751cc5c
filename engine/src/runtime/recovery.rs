//! Recovery after a crash: every non-terminal run is verified, folded and
//! continued; attempts that never finished are abandoned and retried (or
//! failed, for `at_most_once` steps); damaged histories are quarantined.
use crate::ids::RunStream;
use std::sync::Arc;

use chronicle_store::{ChainCheck, StoreError, WriteRequest};
use uuid::Uuid;

use super::index::RunSummary;
use crate::decide::Command;
use crate::event::RunEvent;
use crate::ids::RunId;
use crate::state::{RunState, RunStatus};

use super::engine::{Engine, EngineError};
use super::shared::fold_envelope;

/// What recovery did on start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Runs continued.
    pub resumed: Vec<RunId>,
    /// Process groups of earlier attempts (`RUN/STEP/ATTEMPT`, pgid) that
    /// a previous engine process left running, killed before any retry.
    pub processes_killed: Vec<(String, u32)>,
    /// Attempts marked `StepAbandoned`.
    pub attempts_abandoned: usize,
    /// Runs left quarantined (a step abandoned by crashes too many times
    /// in a row, a history that does not fold, or quarantined before this
    /// recovery): not continued; they wait for `release`.
    pub quarantined: Vec<(RunId, String)>,
}

/// A run [`Engine::not_recovered`] names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotRecovered {
    /// Quarantined (with the reason): it waits for `release`.
    Quarantined(RunId, String),
    /// Another process holds its lease.
    Held {
        /// The run.
        run: RunId,
        /// The lease's holder (`HOST/PID/RANDOM`).
        owner: String,
        /// Milliseconds until the lease expires (unless renewed).
        expires_in_ms: u64,
    },
}

/// Most leases claimed by one call of `recover_runs` (workers claim again
/// every second, so runs spread over the workers polling).
const CLAIM_BATCH: usize = 64;

enum Recovered {
    Resumed(usize),
    Quarantined(usize, String),
    /// A claimed run that had ended (its lease outlived it): the lease is
    /// removed.
    Ended,
}

impl Engine {
    /// Recover every non-terminal run left by a previous process (or only
    /// `only`): fold it, abandon attempts that never finished, and continue.
    /// A run whose history does not fold is quarantined in the index with
    /// the reason; it never stops the others.
    pub async fn recover_runs(
        &self,
        only: Option<&[RunId]>,
    ) -> Result<RecoveryReport, EngineError> {
        // On a shared database: the runs this engine claims now. Those
        // claimed at epoch 1 were never executed (offered by their
        // creator): nothing of theirs can be running anywhere.
        let claimed = match &self.inner.leases {
            Some(_) => match self.claim(only).await? {
                Some(claimed) => Some(claimed),
                None => return Ok(RecoveryReport::default()),
            },
            None => None,
        };
        let mut recovered = std::collections::HashSet::new();
        let result = self
            .recover_claimed(only, claimed.clone(), &mut recovered)
            .await;
        if let Some(claimed) = claimed {
            self.give_back_unrecovered(&claimed, &recovered);
        }
        result
    }

    /// A claimed run whose recovery did not complete — it failed on a
    /// storage error (a lost connection mid-commit, say), or never began —
    /// and that got no actor is not executed here: its lease is given back
    /// (forgotten, then released), so that any worker claims it again at
    /// once or, should the release fail too, once the lease expires. Kept,
    /// it would be renewed by the heartbeat and executed by no one. A run
    /// whose recovery completed (`recovered`) keeps its lease: resumed, its
    /// actor holds it; ended, the lease is gone; quarantined because its
    /// history does not verify, it is held, unexecuted, until a person
    /// restores the log (given back, every worker would claim it and
    /// quarantine it again, every second).
    fn give_back_unrecovered(
        &self,
        claimed: &[(RunId, u64)],
        recovered: &std::collections::HashSet<RunId>,
    ) {
        let Some(leases) = &self.inner.leases else {
            return;
        };
        for (run, epoch) in claimed.iter().filter(|(r, _)| !recovered.contains(r)) {
            let has_actor = self
                .inner
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(run)
                .is_some_and(|h| !h.tx.is_closed());
            let recovering = self
                .inner
                .recovering
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(run);
            if !has_actor && !recovering && leases.epoch(*run) == Some(*epoch) {
                tracing::warn!(%run, "a claimed run was not recovered: its lease is given back");
                self.inner.drop_lease(*run, false);
            }
        }
    }

    /// [`Self::recover_runs`] once the leases are claimed (`claimed`, on a
    /// shared database): every run is recovered even when another's
    /// recovery fails; the first error is returned after all have ended.
    /// The runs whose recovery completed go into `recovered`.
    async fn recover_claimed(
        &self,
        only: Option<&[RunId]>,
        claimed: Option<Vec<(RunId, u64)>>,
        recovered: &mut std::collections::HashSet<RunId>,
    ) -> Result<RecoveryReport, EngineError> {
        let processes_killed = match &claimed {
            Some(claimed) => {
                let taken_over: Vec<RunId> = claimed
                    .iter()
                    .filter(|(_, epoch)| *epoch > 1)
                    .map(|(run, _)| *run)
                    .collect();
                match taken_over.is_empty() {
                    true => Vec::new(),
                    false => {
                        super::processes::kill_leftovers(&self.inner.store, Some(&taken_over))
                            .await?
                    }
                }
            }
            None => super::processes::kill_leftovers(&self.inner.store, None).await?,
        };
        let mut report = RecoveryReport {
            // Before any attempt is retried: nothing of an earlier attempt
            // may still run when its step starts again.
            processes_killed,
            ..RecoveryReport::default()
        };
        let targets: Vec<(RunId, Option<RunSummary>)> = match claimed {
            Some(claimed) => claimed.into_iter().map(|(run, _)| (run, None)).collect(),
            None => self
                .list()?
                .into_iter()
                .filter(|row| {
                    !row.status.is_terminal() && only.is_none_or(|o| o.contains(&row.run_id))
                })
                .map(|row| (row.run_id, Some(row)))
                .collect(),
        };
        let rows: Vec<(RunId, Option<RunSummary>)> = targets
            .into_iter()
            .filter(|(run, _)| {
                !self
                    .inner
                    .runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(run)
            })
            .collect();
        // Runs recover concurrently so that their appends share group commits.
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(512));
        for row in rows {
            let engine = self.clone();
            let permit = limit
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            tasks.spawn(async move {
                let r = engine.recover_one(row.0, row.1).await;
                drop(permit);
                r
            });
        }
        let mut failed = None;
        while let Some(joined) = tasks.join_next().await {
            let (run, outcome) =
                match joined.map_err(|e| EngineError::Stopped(RunId(Uuid::nil()), e.to_string())) {
                    Ok(Ok(done)) => {
                        recovered.insert(done.0);
                        done
                    }
                    Ok(Err(e)) | Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                };
            match outcome {
                Recovered::Resumed(n) => {
                    report.attempts_abandoned += n;
                    report.resumed.push(run);
                }
                Recovered::Quarantined(n, why) => {
                    report.attempts_abandoned += n;
                    report.quarantined.push((run, why));
                }
                Recovered::Ended => {}
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        report.resumed.sort();
        report.quarantined.sort();
        Ok(report)
    }

    /// Recover one run: verify its chain, fold it, decide `Recover`. A run
    /// whose chain breaks or whose history does not fold is quarantined in
    /// the run index with the reason (the log cannot be extended safely).
    async fn recover_one(
        &self,
        run: RunId,
        row: Option<RunSummary>,
    ) -> Result<(RunId, Recovered), EngineError> {
        // One read (one round trip on PostgreSQL): the chain is checked and
        // the history folded from the same envelopes.
        let folded = match self.inner.store.read_stream_and_head(&run.stream()) {
            Ok((envs, head)) => {
                let mut check = ChainCheck::default();
                envs.iter().for_each(|e| check.push(e));
                let head = head.map(|h| (h.last_seq, h.hash));
                match check.finish(head) {
                    (_, Some((seq, why))) => Err(format!("hash chain broken at seq {seq}: {why}")),
                    (_, None) => {
                        let mut state = RunState::default();
                        let mut failed = None;
                        for env in &envs {
                            match fold_envelope(std::mem::take(&mut state), env) {
                                Ok(s) => state = s,
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                        match failed {
                            None => Ok(state),
                            Some(
                                e @ (EngineError::Transition(_)
                                | EngineError::Store(StoreError::Decode { .. })),
                            ) => Err(format!("history does not fold: {e}")),
                            Some(e) => return Err(e),
                        }
                    }
                }
            }
            Err(e @ StoreError::Corruption { .. }) => {
                Err(format!("history does not fold: {}", EngineError::Store(e)))
            }
            Err(e) => return Err(e.into()),
        };
        match folded {
            Ok(state) if state.status.is_terminal() => {
                // Claimed on a shared database after it ended: its lease goes.
                if let Some(leases) = &self.inner.leases {
                    let req = WriteRequest {
                        leases: leases.ops(run, false, true),
                        ..Default::default()
                    };
                    self.inner.store.write(req).await?;
                }
                Ok((run, Recovered::Ended))
            }
            Ok(state) => {
                let (abandoned, quarantined) = self.recover_run(state).await?;
                let outcome = match quarantined {
                    Some(why) => Recovered::Quarantined(abandoned, why),
                    None => Recovered::Resumed(abandoned),
                };
                Ok((run, outcome))
            }
            Err(reason) => {
                let row = match row {
                    Some(row) => Some(row),
                    None => self
                        .inner
                        .store
                        .index_get(super::index::RUNS, &run.to_string())?
                        .and_then(|v| serde_json::from_slice::<RunSummary>(&v).ok()),
                };
                if let Some(mut bad) = row {
                    bad.status = RunStatus::Quarantined;
                    bad.reason = Some(reason.clone());
                    self.inner
                        .store
                        .write(WriteRequest {
                            index: vec![bad.put()],
                            ..Default::default()
                        })
                        .await?;
                }
                Ok((run, Recovered::Quarantined(0, reason)))
            }
        }
    }

    /// On a shared database: claim free and expired leases (of `only`, when
    /// given), up to this engine's room: `(run, epoch)` of each. `None`
    /// when this engine does not execute runs or has no room.
    async fn claim(
        &self,
        only: Option<&[RunId]>,
    ) -> Result<Option<Vec<(RunId, u64)>>, EngineError> {
        let Some(leases) = &self.inner.leases else {
            return Ok(None);
        };
        let room = leases
            .max_held
            .saturating_sub(leases.count())
            .min(CLAIM_BATCH);
        if !leases.executes || room == 0 {
            return Ok(None);
        }
        let only = only.map(|o| o.iter().map(|r| r.stream().key()).collect());
        let mut claimed = Vec::new();
        for (key, epoch) in
            self.inner
                .store
                .claim_leases(&leases.owner, room, leases.ttl_ms, only)?
        {
            let Ok(run) = key.parse::<RunId>() else {
                continue;
            };
            leases.insert(run, epoch);
            claimed.push((run, epoch));
        }
        if !claimed.is_empty() {
            // Renewed from now on: recovery may take a while (killing what
            // the last holder left running).
            self.inner.ensure_heartbeat();
        }
        Ok(Some(claimed))
    }

    /// On a shared database, the unended runs (of `only`, when given) this
    /// engine does not execute after [`Self::recover_runs`]: quarantined
    /// ones (with their reason; `release` frees them) and those whose lease
    /// another process holds (they are continued by whoever claims them
    /// once the lease expires: a worker, or `recover` again). Empty on
    /// redb. Reads the run index and one lease per run: meant for the
    /// `recover` command, not for a worker's claim loop.
    ///
    /// Errors: storage errors.
    pub fn not_recovered(&self, only: Option<&[RunId]>) -> Result<Vec<NotRecovered>, EngineError> {
        if self.inner.leases.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for row in self.list()? {
            if row.status.is_terminal()
                || only.is_some_and(|o| !o.contains(&row.run_id))
                || self
                    .inner
                    .runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&row.run_id)
            {
                continue;
            }
            if row.status == RunStatus::Quarantined {
                out.push(NotRecovered::Quarantined(
                    row.run_id,
                    row.reason.clone().unwrap_or_default(),
                ));
                continue;
            }
            if let Some(l) = self.inner.store.lease(&row.run_id.stream().key())?
                && l.live
            {
                out.push(NotRecovered::Held {
                    run: row.run_id,
                    owner: l.owner.unwrap_or_else(|| "(offered)".into()),
                    expires_in_ms: l.expires_in_ms.max(0) as u64,
                });
            }
        }
        Ok(out)
    }

    /// [`Self::recover_runs`] for every run.
    pub async fn recover(&self) -> Result<RecoveryReport, EngineError> {
        self.recover_runs(None).await
    }

    pub(crate) async fn recover_run(
        &self,
        state: RunState,
    ) -> Result<(usize, Option<String>), EngineError> {
        let run = state.run_id.expect("a created run has an id");
        {
            // One recovery per run at a time, and none of a run this
            // engine already executes.
            let runs = self.inner.runs.lock().unwrap_or_else(|e| e.into_inner());
            let mut busy = self
                .inner
                .recovering
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if runs.get(&run).is_some_and(|h| !h.tx.is_closed()) || !busy.insert(run) {
                return Ok((0, None));
            }
        }
        let r = self.begin(state, vec![Command::Recover], vec![]).await;
        self.inner
            .recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        let (events, now) = r?;
        let abandoned = events
            .iter()
            .filter(|e| matches!(e, RunEvent::StepAbandoned { .. }))
            .count();
        // Quarantined now — by this recovery or before it — is not resumed:
        // it waits for a person's release.
        let q = (now.status == RunStatus::Quarantined)
            .then(|| now.quarantine.map(|q| q.reason).unwrap_or_default());
        Ok((abandoned, q))
    }
}
