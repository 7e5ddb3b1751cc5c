//! Schedules in the engine: each is the stream `schedule:NAME`
//! (appended with optimistic concurrency, one writer at a time in this
//! engine); [`Engine::fire_due_schedules`] starts the runs of the nominal
//! times [`crate::schedule::due`] finds due. `chronicle serve` calls it
//! every second.

use chrono::{DateTime, Utc};
use serde_json::Value;

use chronicle_store::{NewEvent, Seq, StreamId};

use super::engine::{Engine, EngineError};
use crate::event::SCHEMA_VERSION;
use crate::ids::RunId;
use crate::model::Workflow;
use crate::schedule::{
    Due, Overlap, STREAM_PREFIX, ScheduleEvent, ScheduleState, due, parse, run_key,
};

/// A schedule to create.
#[derive(Clone, Debug)]
pub struct NewSchedule {
    /// Its name (letters, digits, `-`, `_`, `.`; at most 100).
    pub name: String,
    /// The definition each fire runs.
    pub workflow: Workflow,
    /// Five-field crontab expression.
    pub cron: String,
    /// IANA time zone (default `UTC`).
    pub timezone: String,
    /// Each run's input.
    pub input: Value,
    /// Overlap policy (default skip).
    pub overlap: Overlap,
    /// Catch-up window after downtime, ms (default one hour).
    pub catch_up_ms: u64,
}

fn stream(name: &str) -> Result<StreamId, EngineError> {
    Ok(StreamId::named(format!("{STREAM_PREFIX}{name}"))?)
}

fn check_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Schedule(format!(
            "schedule name {name:?} must be 1 to 100 of letters, digits, '-', '_', '.'"
        )))
    }
}

impl Engine {
    /// Every schedule not deleted, by name.
    ///
    /// Errors: storage; an event that does not decode.
    pub fn schedules(&self) -> Result<Vec<ScheduleState>, EngineError> {
        let mut out = Vec::new();
        for head in self.inner.store.streams_with_prefix(STREAM_PREFIX)? {
            let (s, _) = self.fold_schedule(&head.stream)?;
            if s.status != "deleted" {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// One schedule.
    ///
    /// Errors: [`EngineError::UnknownSchedule`]; storage.
    pub fn schedule(&self, name: &str) -> Result<ScheduleState, EngineError> {
        check_name(name)?;
        let (s, head) = self.fold_schedule(&stream(name)?)?;
        if head == Seq(0) || s.status == "deleted" {
            return Err(EngineError::UnknownSchedule(name.to_string()));
        }
        Ok(s)
    }

    /// A schedule's fold and head seq: the events after the last fold of
    /// it in this engine are read and folded on (the server folds every
    /// schedule each second; a schedule's stream only grows).
    fn fold_schedule(&self, stream: &StreamId) -> Result<(ScheduleState, Seq), EngineError> {
        let key = stream.to_string();
        let cached = self
            .inner
            .schedule_folds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let (mut s, mut head) = cached.unwrap_or_default();
        for env in self.inner.store.read_stream(stream, Seq(head.0 + 1))? {
            let e: ScheduleEvent = env.decode()?;
            s = s.evolve(&e);
            head = env.seq;
        }
        self.inner
            .schedule_folds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (s.clone(), head));
        Ok((s, head))
    }

    async fn append_schedule(
        &self,
        name: &str,
        expected: Seq,
        events: Vec<ScheduleEvent>,
    ) -> Result<(), EngineError> {
        let now = self.inner.clock.now();
        let evs = events
            .iter()
            .map(|e| NewEvent {
                recorded_at: Some(now),
                ..NewEvent::json(SCHEMA_VERSION, e).expect("schedule events serialize")
            })
            .collect();
        self.inner
            .store
            .append(stream(name)?, expected, evs)
            .await?;
        Ok(())
    }

    /// Create a schedule; its first nominal time is the first after now.
    ///
    /// Errors: [`EngineError::Schedule`] for a bad name, cron expression
    /// or time zone, or a name in use; storage.
    pub async fn schedule_create(&self, spec: NewSchedule) -> Result<ScheduleState, EngineError> {
        check_name(&spec.name)?;
        parse(&spec.cron, &spec.timezone).map_err(EngineError::Schedule)?;
        let _one = self.inner.schedule_lock.lock().await;
        let (old, head) = self.fold_schedule(&stream(&spec.name)?)?;
        if head != Seq(0) && old.status != "deleted" {
            return Err(EngineError::Schedule(format!(
                "a schedule named {} exists; delete it first",
                spec.name
            )));
        }
        self.append_schedule(
            &spec.name,
            head,
            vec![ScheduleEvent::ScheduleCreated {
                name: spec.name.clone(),
                workflow: std::sync::Arc::new(spec.workflow),
                cron: spec.cron,
                timezone: spec.timezone,
                input: spec.input,
                overlap: spec.overlap,
                catch_up_ms: spec.catch_up_ms,
                start_after: self.inner.clock.peek(),
            }],
        )
        .await?;
        self.schedule(&spec.name)
    }

    /// Pause, resume or delete a schedule (`e` is one of those events).
    /// A repeated pause or resume changes nothing.
    ///
    /// Errors: [`EngineError::UnknownSchedule`]; storage.
    pub async fn schedule_set(
        &self,
        name: &str,
        e: ScheduleEvent,
    ) -> Result<ScheduleState, EngineError> {
        let _one = self.inner.schedule_lock.lock().await;
        let s = self.schedule(name)?;
        let (_, head) = self.fold_schedule(&stream(name)?)?;
        let same = matches!(
            (&e, s.status.as_str()),
            (ScheduleEvent::SchedulePaused {}, "paused")
                | (ScheduleEvent::ScheduleResumed {}, "active")
        );
        if !same {
            let mut events = vec![e.clone()];
            if matches!(e, ScheduleEvent::ScheduleResumed {}) {
                events.extend(crate::schedule::skipped_while_paused(
                    &s,
                    self.inner.clock.peek(),
                ));
            }
            self.append_schedule(name, head, events).await?;
        }
        let (after, _) = self.fold_schedule(&stream(name)?)?;
        Ok(after)
    }

    /// Fire a schedule now, whatever its cron says (`manual` in the
    /// history); returns the run.
    ///
    /// Errors: [`EngineError::UnknownSchedule`]; the run's submission
    /// errors; storage.
    pub async fn schedule_trigger(&self, name: &str) -> Result<RunId, EngineError> {
        let _one = self.inner.schedule_lock.lock().await;
        let s = self.schedule(name)?;
        let now = self.inner.clock.peek();
        let key = format!("schedule:{name}:manual:{}", now.to_rfc3339());
        let run = self.fire(&s, key).await?;
        let (_, head) = self.fold_schedule(&stream(name)?)?;
        self.append_schedule(
            name,
            head,
            vec![ScheduleEvent::ScheduleFired {
                nominal_time: now,
                run_id: run,
                manual: true,
            }],
        )
        .await?;
        Ok(run)
    }

    async fn fire(&self, s: &ScheduleState, key: String) -> Result<RunId, EngineError> {
        let wf = s
            .workflow
            .as_ref()
            .map(|w| (**w).clone())
            .ok_or_else(|| EngineError::UnknownSchedule(s.name.clone()))?;
        Ok(self.submit(wf, s.input.clone(), Some(key)).await?.0)
    }

    /// Start the runs of every schedule's nominal times due at `now`
    /// (each keyed `schedule:NAME:NOMINAL_TIME`, so a crash between the
    /// run and its `ScheduleFired` never fires twice) and record skips.
    /// Returns `(schedule, nominal time, run)` per fire.
    ///
    /// Errors: storage. A schedule whose run cannot start (a missing
    /// secret, say) is logged and tried again next time.
    pub async fn fire_due_schedules(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>, RunId)>, EngineError> {
        let _one = self.inner.schedule_lock.lock().await;
        let mut fired = Vec::new();
        for head in self.inner.store.streams_with_prefix(STREAM_PREFIX)? {
            let (s, seq) = self.fold_schedule(&head.stream)?;
            let last_running = match s.last_run {
                Some(r) => self
                    .live_state(r)
                    .map(|st| !st.status.is_terminal())
                    .or_else(|| self.state(r).ok().map(|st| !st.status.is_terminal()))
                    .unwrap_or(false),
                None => false,
            };
            let mut events = Vec::new();
            for d in due(&s, now, last_running) {
                match d {
                    Due::Fire(n) => match self.fire(&s, run_key(&s.name, n)).await {
                        Ok(run) => {
                            events.push(ScheduleEvent::ScheduleFired {
                                nominal_time: n,
                                run_id: run,
                                manual: false,
                            });
                            fired.push((s.name.clone(), n, run));
                        }
                        Err(e) => {
                            tracing::error!(schedule = %s.name, nominal = %n, error = %e, "cannot start the scheduled run");
                            break;
                        }
                    },
                    Due::Skip(n, reason) => events.push(ScheduleEvent::ScheduleSkipped {
                        nominal_time: n,
                        reason,
                    }),
                }
            }
            if !events.is_empty() {
                self.append_schedule(&s.name, seq, events).await?;
            }
        }
        Ok(fired)
    }
}
