//! Rebuild from snapshots, time travel, verify, fork lineage and recovery
//! of damaged histories, on real redb files.

use chronicle_engine::ids::RunStream;
use std::sync::Arc;

use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::EngineBuilder;
use chronicle_replay::rebuild::{Target, full_fold, state_at};
use chronicle_store::{ManualClock, Seq, Store, StoreOptions};
use serde_json::json;

const WF: &str = "
name: chain
steps:
  - id: a
    function: ok
  - id: b
    needs: [a]
    function: ok
  - id: c
    needs: [b]
    function: ok
  - id: d
    needs: [c]
    function: ok
";

async fn one_run(path: &std::path::Path, snapshot_every: u64) -> chronicle_engine::ids::RunId {
    let engine = EngineBuilder::new()
        .db(path)
        .clock(Arc::new(ManualClock::epoch()))
        .snapshot_every(snapshot_every)
        .function("ok", |c| async move { Ok(json!({ "step": c.step })) })
        .build()
        .unwrap();
    let run = engine
        .start(parse_definition("chain.yaml", WF).unwrap(), json!({}), None)
        .await
        .unwrap();
    assert_eq!(engine.wait(run).await.unwrap().status.as_str(), "succeeded");
    engine.wait_all().await.unwrap();
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_give_the_same_state_as_a_full_fold_at_every_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let run = one_run(&path, 3).await;
    let store = Store::open_read_only(&path).unwrap();
    assert!(
        !store.snapshot_seqs(&run.stream()).unwrap().is_empty(),
        "snapshots were written"
    );
    let envs = store.read_stream(&run.stream(), Seq(1)).unwrap();
    for n in 1..=envs.len() as u64 {
        let from_snapshot = state_at(&store, run, Target::Seq(n)).unwrap();
        let full =
            chronicle_replay::rebuild::fold_envelopes(Default::default(), &envs, Target::Seq(n))
                .unwrap();
        assert_eq!(from_snapshot, full, "seq {n}");
    }
    assert_eq!(
        state_at(&store, run, Target::Head).unwrap(),
        full_fold(&store, run).unwrap()
    );
    // At a time: everything recorded up to the fourth event's time.
    let t = envs[3].recorded_at;
    let at_time = state_at(&store, run, Target::Time(t)).unwrap();
    assert_eq!(
        at_time.seq,
        envs.iter().filter(|e| e.recorded_at <= t).count() as u64
    );
    assert!(state_at(&store, run, Target::Seq(999)).is_err());
    let report = chronicle_replay::verify::verify(&store, Some(run)).unwrap();
    assert!(report[0].ok(), "{report:?}");
    assert!(report[0].snapshots_checked > 0);
}

/// Rewrite one record's payload in place through redb (its own checksums
/// stay valid), as an attacker or a bug would.
fn tamper(path: &std::path::Path, run: chronicle_engine::ids::RunId, seq: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        use redb::ReadableTable;
        let def = redb::TableDefinition::<u64, &[u8]>::new("log");
        let mut t = txn.open_table(def).unwrap();
        let key = run.to_string();
        let (position, mut rec) = t
            .iter()
            .unwrap()
            .map(Result::unwrap)
            .find_map(|(k, v)| {
                let view = chronicle_store::view_record(k.value(), v.value()).unwrap();
                (view.stream == key && view.seq == seq).then(|| (k.value(), v.value().to_vec()))
            })
            .unwrap();
        let i = rec.len() - 4;
        rec[i] = if rec[i] == b'a' { b'b' } else { b'a' };
        t.insert(position, rec.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_payload_byte_is_named_by_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let run = one_run(&path, 0).await;
    tamper(&path, run, 5);
    let store = Store::open_read_only(&path).unwrap();
    let report = chronicle_replay::verify::verify(&store, None).unwrap();
    let r = report.iter().find(|r| r.stream == run.to_string()).unwrap();
    assert!(!r.ok());
    assert_eq!(r.first_bad_seq, Some(5), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_quarantines_a_broken_history_and_continues_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    // Two runs left in flight (the engine is dropped while they wait on a
    // function that never returns).
    let (broken, healthy) = {
        let engine = EngineBuilder::new()
            .db(&path)
            .function("ok", |_| async {
                std::future::pending::<()>().await;
                Ok(json!(null))
            })
            .build()
            .unwrap();
        let a = engine
            .start(parse_definition("chain.yaml", WF).unwrap(), json!({}), None)
            .await
            .unwrap();
        let b = engine
            .start(parse_definition("chain.yaml", WF).unwrap(), json!({}), None)
            .await
            .unwrap();
        engine.shutdown().await;
        (a, b)
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tamper(&path, broken, 2);
    let engine = EngineBuilder::new()
        .db(&path)
        .function("ok", |_| async { Ok(json!(1)) })
        .build()
        .unwrap();
    let report = engine.recover().await.unwrap();
    assert_eq!(report.resumed, vec![healthy]);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].0, broken);
    assert!(
        report.quarantined[0].1.contains("seq 2"),
        "{:?}",
        report.quarantined
    );
    assert_eq!(report.attempts_abandoned, 1);
    assert_eq!(
        engine.wait(healthy).await.unwrap().status.as_str(),
        "succeeded"
    );
    let row = engine
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.run_id == broken)
        .unwrap();
    assert_eq!(row.status.as_str(), "quarantined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_lineage_is_visible_both_ways_and_the_source_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let run = one_run(&path, 0).await;
    let engine = EngineBuilder::new()
        .db(&path)
        .function("ok", |c| async move {
            Ok(json!({ "step": c.step, "again": true }))
        })
        .build()
        .unwrap();
    let before = engine.store().head(&run.stream()).unwrap().unwrap();
    // After b succeeded: a and b are carried, c and d run again.
    let envs = engine.store().read_stream(&run.stream(), Seq(1)).unwrap();
    let at = envs
        .iter()
        .find(|e| {
            e.payload
                .starts_with(br#"{"type":"StepSucceeded","step":"b""#)
        })
        .unwrap()
        .seq
        .0;
    let child = chronicle_replay::fork::fork(&engine, run, at, None, Default::default())
        .await
        .unwrap();
    let s = engine.wait(child).await.unwrap();
    assert_eq!(s.status.as_str(), "succeeded");
    assert!(s.steps["a"].carried && s.steps["b"].carried);
    assert_eq!(
        s.steps["c"].output,
        Some(json!({"step": "c", "again": true}))
    );
    assert_eq!(s.lineage.as_ref().unwrap().forked_from, run);
    assert_eq!(
        chronicle_replay::fork::forks_of(engine.store(), run).unwrap(),
        vec![(child, at)]
    );
    assert_eq!(
        engine.store().head(&run.stream()).unwrap().unwrap(),
        before,
        "the source is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_round_trips_and_replays_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.redb");
    let run = one_run(&path, 0).await;
    let store = Store::open_read_only(&path).unwrap();
    let mut buf = Vec::new();
    chronicle_replay::export::export(&store, run, &mut buf).unwrap();
    let envs = chronicle_replay::export::read_history("h.jsonl", &buf[..]).unwrap();
    let offline =
        chronicle_replay::rebuild::fold_envelopes(Default::default(), &envs, Target::Head).unwrap();
    assert_eq!(offline, full_fold(&store, run).unwrap());
    let other = Store::open(dir.path().join("other.redb"), StoreOptions::default()).unwrap();
    assert_eq!(
        chronicle_replay::export::import(&other, &envs)
            .await
            .unwrap(),
        run
    );
    assert_eq!(
        other.head(&run.stream()).unwrap().unwrap().hash,
        store.head(&run.stream()).unwrap().unwrap().hash
    );
    assert!(chronicle_replay::verify::verify(&other, Some(run)).unwrap()[0].ok());
    let tl = chronicle_replay::timeline::timeline(&envs).unwrap();
    assert_eq!(tl.len(), envs.len());
    assert!(
        tl.last()
            .unwrap()
            .changes
            .iter()
            .any(|c| c == "run running -> succeeded")
    );
}
