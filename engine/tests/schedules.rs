//! Schedules with an injected clock: each nominal time fires once, across
//! a restart of the engine and a crash between a fire's run and its
//! `ScheduleFired`.

use std::sync::Arc;

use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{Engine, EngineBuilder, EngineError, NewSchedule};
use chronicle_engine::schedule::{Overlap, ScheduleEvent, run_key};
use chronicle_store::ManualClock;
use chrono::TimeDelta;
use serde_json::json;

fn engine(db: &std::path::Path, clock: &Arc<ManualClock>) -> Engine {
    EngineBuilder::new()
        .db(db)
        .clock(clock.clone())
        .function("noop", |_c| async { Ok(json!("done")) })
        .build()
        .unwrap()
}

fn spec(overlap: Overlap) -> NewSchedule {
    NewSchedule {
        name: "every-minute".into(),
        workflow: parse_definition("m.yaml", "name: m\nsteps:\n  - id: a\n    function: noop\n")
            .unwrap(),
        cron: "* * * * *".into(),
        timezone: "UTC".into(),
        input: json!({"from": "schedule"}),
        overlap,
        catch_up_ms: 3_600_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nominal_time_fires_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.redb");
    // 2026-01-01T00:00:00Z, 1 ms per reading.
    let clock = Arc::new(ManualClock::epoch());
    let e = engine(&db, &clock);
    let s = e.schedule_create(spec(Overlap::Allow)).await.unwrap();
    assert_eq!(s.status, "active");
    assert!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .is_empty(),
        "nothing due yet"
    );
    clock.advance(TimeDelta::seconds(60));
    let first = e
        .fire_due_schedules(chronicle_store::Clock::peek(&*clock))
        .await
        .unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1.to_rfc3339(), "2026-01-01T00:01:00+00:00");
    assert!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
    let run = first[0].2;
    assert_eq!(e.wait(run).await.unwrap().status.as_str(), "succeeded");
    assert_eq!(e.state(run).unwrap().input["from"], "schedule");
    // A restart: a new engine on the same file decides from the log.
    e.shutdown().await;
    drop(e);
    let e = engine(&db, &clock);
    assert!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .is_empty(),
        "not again after a restart"
    );
    // Down for two minutes: both missed times fire (within catch-up), in order.
    clock.advance(TimeDelta::seconds(120));
    let two = e
        .fire_due_schedules(chronicle_store::Clock::peek(&*clock))
        .await
        .unwrap();
    let times: Vec<String> = two.iter().map(|f| f.1.to_rfc3339()).collect();
    assert_eq!(
        times,
        ["2026-01-01T00:02:00+00:00", "2026-01-01T00:03:00+00:00"]
    );
    // A crash after the run of 00:04 started and before its ScheduleFired:
    // the fire finds the same run by its key.
    clock.advance(TimeDelta::seconds(60));
    let nominal = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:04:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let wf = spec(Overlap::Allow).workflow;
    let (early, _) = e
        .submit(
            wf,
            json!({"from": "schedule"}),
            Some(run_key("every-minute", nominal)),
        )
        .await
        .unwrap();
    let again = e
        .fire_due_schedules(chronicle_store::Clock::peek(&*clock))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].2, early, "no second run for a nominal time");
    let s = e.schedule("every-minute").unwrap();
    assert_eq!(s.fired, 4);
    assert_eq!(e.list().unwrap().len(), 4, "four runs in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_trigger_delete_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::epoch());
    let e = engine(&dir.path().join("s.redb"), &clock);
    e.schedule_create(spec(Overlap::Skip)).await.unwrap();
    let paused = e
        .schedule_set("every-minute", ScheduleEvent::SchedulePaused {})
        .await
        .unwrap();
    assert_eq!(paused.status, "paused");
    clock.advance(TimeDelta::seconds(300));
    assert!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .is_empty(),
        "paused"
    );
    e.schedule_set("every-minute", ScheduleEvent::ScheduleResumed {})
        .await
        .unwrap();
    assert!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .is_empty(),
        "times missed while paused do not fire"
    );
    clock.advance(TimeDelta::seconds(60));
    assert_eq!(
        e.fire_due_schedules(chronicle_store::Clock::peek(&*clock))
            .await
            .unwrap()
            .len(),
        1
    );
    let manual = e.schedule_trigger("every-minute").await.unwrap();
    assert_eq!(e.wait(manual).await.unwrap().status.as_str(), "succeeded");
    e.schedule_set("every-minute", ScheduleEvent::ScheduleDeleted {})
        .await
        .unwrap();
    assert!(matches!(
        e.schedule("every-minute"),
        Err(EngineError::UnknownSchedule(_))
    ));
    assert!(e.schedules().unwrap().is_empty());
    let mut bad = spec(Overlap::Skip);
    bad.cron = "every minute".into();
    assert!(
        matches!(e.schedule_create(bad).await, Err(EngineError::Schedule(m)) if m.contains("five fields"))
    );
    let mut bad = spec(Overlap::Skip);
    bad.timezone = "Nowhere/Land".into();
    assert!(
        matches!(e.schedule_create(bad).await, Err(EngineError::Schedule(m)) if m.contains("IANA"))
    );
    let mut bad = spec(Overlap::Skip);
    bad.name = "a/b".into();
    assert!(e.schedule_create(bad).await.is_err());
}
