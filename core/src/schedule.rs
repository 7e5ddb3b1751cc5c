//! Schedules: a schedule is the stream `schedule:NAME` of
//! [`ScheduleEvent`]s; its state is their fold ([`ScheduleState`]); which
//! nominal times are due at a given `now` is decided from the state alone
//! ([`due`]) — pure, so a restart decides the same. Each fire starts a run
//! with the idempotency key `schedule:NAME:NOMINAL_TIME`: a crash between
//! the run and its `ScheduleFired` never fires twice.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::RunId;
use crate::model::Workflow;

/// Prefix of a schedule's stream name.
pub const STREAM_PREFIX: &str = "schedule:";

/// What to do when a nominal time comes while the previous fire's run is
/// still running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Skip this time (recorded as `ScheduleSkipped`).
    #[default]
    Skip,
    /// Start another run.
    Allow,
}

/// An event of a schedule's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ScheduleEvent {
    /// The schedule exists.
    ScheduleCreated {
        /// Its name.
        name: String,
        /// The definition each fire runs (pinned).
        workflow: Arc<Workflow>,
        /// Five-field crontab expression.
        cron: String,
        /// IANA time zone the expression is read in (`UTC`, `Europe/Paris`).
        timezone: String,
        /// The input of each run.
        input: Value,
        /// What a fire does while the last run still runs.
        overlap: Overlap,
        /// How far back missed times are still fired after a restart, ms.
        catch_up_ms: u64,
        /// Nominal times after this one fire.
        start_after: DateTime<Utc>,
    },
    /// A nominal time fired: its run.
    ScheduleFired {
        /// The nominal time (or the moment of a manual trigger).
        nominal_time: DateTime<Utc>,
        /// The run started.
        run_id: RunId,
        /// Fired by `schedule trigger`, not by the clock.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        manual: bool,
    },
    /// A nominal time did not fire.
    ScheduleSkipped {
        /// The nominal time (the last one, for missed times collapsed).
        nominal_time: DateTime<Utc>,
        /// Why: the last run still runs, or missed past the catch-up.
        reason: String,
    },
    /// Paused: nothing fires until resumed.
    SchedulePaused {},
    /// Resumed: times after the resume fire (missed ones within catch-up).
    ScheduleResumed {},
    /// Deleted: nothing fires any more.
    ScheduleDeleted {},
}

/// A schedule folded from its events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Its name.
    pub name: String,
    /// The definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Arc<Workflow>>,
    /// The cron expression.
    pub cron: String,
    /// The time zone.
    pub timezone: String,
    /// The input.
    pub input: Value,
    /// The overlap policy.
    pub overlap: Overlap,
    /// The catch-up window, ms.
    pub catch_up_ms: u64,
    /// `active`, `paused` or `deleted`.
    pub status: String,
    /// The last nominal time handled (fired or skipped), or the start.
    pub cursor: Option<DateTime<Utc>>,
    /// The run of the last fire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunId>,
    /// Fires so far.
    pub fired: u64,
    /// Times skipped so far.
    pub skipped: u64,
}

impl ScheduleState {
    /// The state after `e`.
    pub fn evolve(mut self, e: &ScheduleEvent) -> Self {
        match e {
            ScheduleEvent::ScheduleCreated {
                name,
                workflow,
                cron,
                timezone,
                input,
                overlap,
                catch_up_ms,
                start_after,
            } => {
                self = ScheduleState {
                    name: name.clone(),
                    workflow: Some(workflow.clone()),
                    cron: cron.clone(),
                    timezone: timezone.clone(),
                    input: input.clone(),
                    overlap: *overlap,
                    catch_up_ms: *catch_up_ms,
                    status: "active".into(),
                    cursor: Some(*start_after),
                    ..Default::default()
                };
            }
            ScheduleEvent::ScheduleFired {
                nominal_time,
                run_id,
                manual,
            } => {
                if !manual {
                    self.cursor = Some(self.cursor.map_or(*nominal_time, |c| c.max(*nominal_time)));
                }
                self.last_run = Some(*run_id);
                self.fired += 1;
            }
            ScheduleEvent::ScheduleSkipped { nominal_time, .. } => {
                self.cursor = Some(self.cursor.map_or(*nominal_time, |c| c.max(*nominal_time)));
                self.skipped += 1;
            }
            ScheduleEvent::SchedulePaused {} => self.status = "paused".into(),
            ScheduleEvent::ScheduleResumed {} => self.status = "active".into(),
            ScheduleEvent::ScheduleDeleted {} => self.status = "deleted".into(),
        }
        self
    }

    /// The next nominal time after the cursor, if any.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        let (cron, tz) = parse(&self.cron, &self.timezone).ok()?;
        next_after(&cron, tz, self.cursor?)
    }
}

/// Parse a five-field crontab expression and an IANA time zone.
///
/// Errors: a message naming what is wrong (not five fields, a bad field,
/// an unknown zone).
pub fn parse(cron: &str, timezone: &str) -> Result<(croner::Cron, chrono_tz::Tz), String> {
    let fields = cron.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "cron {cron:?} must have five fields (minute hour day-of-month month day-of-week), has {fields}"
        ));
    }
    let c = croner::Cron::from_str(cron).map_err(|e| format!("cron {cron:?}: {e}"))?;
    let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| {
        format!("time zone {timezone:?} is not an IANA zone like UTC or Europe/Paris")
    })?;
    Ok((c, tz))
}

/// The first nominal time strictly after `after`.
pub fn next_after(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::Timelike;
    // Nominal times are whole minutes: drop the sub-second part croner
    // carries over from `after`.
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .and_then(|t| t.with_timezone(&Utc).with_nanosecond(0))
}

/// What to do with a nominal time.
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    /// Start a run for it.
    Fire(DateTime<Utc>),
    /// Record it as skipped, with why.
    Skip(DateTime<Utc>, String),
}

/// Most nominal times decided in one call (the rest come next time).
pub const MAX_DUE: usize = 100;

/// The nominal times of `s` due at `now`, in order: after its cursor and
/// not after `now`. Times older than the catch-up window are collapsed
/// into one skip; with `overlap: skip`, a time while the last run still
/// runs (`last_running`), or after another time fired in this call, is
/// skipped. Nothing for a paused or deleted schedule.
pub fn due(s: &ScheduleState, now: DateTime<Utc>, last_running: bool) -> Vec<Due> {
    let mut out = Vec::new();
    if s.status != "active" {
        return out;
    }
    let (Ok((cron, tz)), Some(mut t)) = (parse(&s.cron, &s.timezone), s.cursor) else {
        return out;
    };
    let horizon = TimeDelta::try_milliseconds(s.catch_up_ms.min(i64::MAX as u64) as i64)
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let mut missed: Option<(DateTime<Utc>, u64)> = None;
    let mut running = last_running;
    while out.len() < MAX_DUE {
        let Some(n) = next_after(&cron, tz, t) else {
            break;
        };
        if n > now {
            break;
        }
        t = n;
        if n < horizon {
            missed = Some((n, missed.map_or(1, |(_, k)| k + 1)));
            continue;
        }
        if let Some((at, k)) = missed.take() {
            out.push(Due::Skip(
                at,
                format!("missed {k} nominal time(s) older than the catch-up window"),
            ));
        }
        if running && s.overlap == Overlap::Skip {
            out.push(Due::Skip(
                n,
                "the last run is still running (overlap: skip)".into(),
            ));
        } else {
            out.push(Due::Fire(n));
            running = true;
        }
    }
    if let Some((at, k)) = missed {
        out.push(Due::Skip(
            at,
            format!("missed {k} nominal time(s) older than the catch-up window"),
        ));
    }
    out
}

/// On resume at `now`: the skip that moves the cursor past the nominal
/// times that came while `s` was paused (they do not fire), if any came.
pub fn skipped_while_paused(s: &ScheduleState, now: DateTime<Utc>) -> Option<ScheduleEvent> {
    s.next()
        .filter(|n| *n <= now)
        .map(|_| ScheduleEvent::ScheduleSkipped {
            nominal_time: now,
            reason: "paused at that time".into(),
        })
}

/// The idempotency key of a nominal time's run.
pub fn run_key(name: &str, nominal: DateTime<Utc>) -> String {
    format!("schedule:{name}:{}", nominal.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hourly(overlap: Overlap, catch_up_ms: u64) -> ScheduleState {
        ScheduleState {
            name: "h".into(),
            cron: "0 * * * *".into(),
            timezone: "UTC".into(),
            status: "active".into(),
            overlap,
            catch_up_ms,
            cursor: Some(at("2026-11-30T10:30:00Z")),
            ..Default::default()
        }
    }

    #[test]
    fn each_nominal_time_is_due_once_in_order() {
        let s = hourly(Overlap::Allow, 3_600_000 * 24);
        assert!(due(&s, at("2026-11-30T10:59:59Z"), false).is_empty());
        let d = due(&s, at("2026-11-30T12:00:00Z"), false);
        assert_eq!(
            d,
            [
                Due::Fire(at("2026-11-30T11:00:00Z")),
                Due::Fire(at("2026-11-30T12:00:00Z"))
            ]
        );
        let s = s.evolve(&ScheduleEvent::ScheduleFired {
            nominal_time: at("2026-11-30T12:00:00Z"),
            run_id: RunId(uuid::Uuid::nil()),
            manual: false,
        });
        assert!(due(&s, at("2026-11-30T12:30:00Z"), false).is_empty());
    }

    #[test]
    fn overlap_skip_and_catch_up() {
        let s = hourly(Overlap::Skip, 3_600_000);
        let d = due(&s, at("2026-11-30T16:00:00Z"), false);
        // 11..14 are older than an hour: one collapsed skip; 15 fires, 16
        // is skipped as the 15 o'clock run is still running.
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(
            matches!(&d[0], Due::Skip(t, r) if *t == at("2026-11-30T14:00:00Z") && r.contains("missed 4"))
        );
        assert_eq!(d[1], Due::Fire(at("2026-11-30T15:00:00Z")));
        assert!(matches!(&d[2], Due::Skip(t, _) if *t == at("2026-11-30T16:00:00Z")));
    }

    #[test]
    fn time_zones_and_bad_expressions() {
        let mut s = hourly(Overlap::Allow, u64::MAX / 4);
        s.cron = "0 9 * * *".into();
        s.timezone = "Europe/Paris".into();
        let d = due(&s, at("2026-12-01T09:00:00Z"), false);
        assert_eq!(
            d,
            [Due::Fire(at("2026-12-01T08:00:00Z"))],
            "09:00 in Paris is 08:00 UTC in winter"
        );
        assert!(parse("* * * *", "UTC").unwrap_err().contains("five fields"));
        assert!(
            parse("0 * * * * *", "UTC")
                .unwrap_err()
                .contains("five fields")
        );
        assert!(parse("61 * * * *", "UTC").is_err());
        assert!(
            parse("0 * * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("IANA")
        );
    }
}
