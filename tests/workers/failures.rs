//! What befalls workers: SIGKILLed at random while 1,000 runs of real
//! command steps execute, killed twice on one step (the poison-run rule),
//! paused with SIGSTOP past their lease, cut off from the database (lost
//! connections that cost no attempt are in `connections`).

use std::time::{Duration, Instant};

use chronicle_store::Store;

use super::*;
use crate::support::{Env, marked_processes};

/// The kill test's workflow. A worker is SIGKILLed every second, so an
/// attempt taken over by a worker that is killed in turn is cut again:
/// under load, three cuts in a row of one step (the default
/// `quarantine_after_crashes`, which quarantines a poison run — as it
/// should) happened about once in ten local runs of 1,000 runs. This
/// workflow declares that it runs amid such kills.
pub(super) const THREE_STEPS: &str = r#"
name: three-steps
defaults:
  quarantine_after_crashes: 10
steps:
  - id: fetch
    command: [sh, -c, 'echo "{\"n\": 1}"']
  - id: transform
    needs: [fetch]
    command: [sh, -c, 'sleep 0.05; echo "{\"n\": 2}"']
  - id: store
    needs: [transform]
    command: [sh, -c, 'echo "{\"n\": 3}"']
"#;

/// Four workers execute 1,000 runs while a random one is SIGKILLed every
/// second and restarted: every run succeeds, `verify` passes, and no step
/// of any run had two attempts running at once.
#[test]
fn four_workers_killed_at_random_finish_every_run_once() {
    let env = Env::new();
    let url = fresh_postgres();
    let wf = env.write("three.yaml", THREE_STEPS);
    // Create the schema, then offer 1,000 runs from one process.
    let submitted = offer_runs(&url, &wf, 1000);
    let mut workers: Vec<Child> = (0..4)
        .map(|i| worker(&env, &url, "2s", &format!("w{i}.log")))
        .collect();
    let started = Instant::now();
    let mut kills = 0;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    let store = Store::open_read_only(&url).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let rows = run_rows(&store);
        if let Some(q) = rows.iter().find(|v| v["status"] == "quarantined") {
            panic!("a run was quarantined: {q}");
        }
        let done = rows.iter().filter(|v| v["status"] == "succeeded").count();
        if done == submitted.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {done} of 1000 runs succeeded in 10 minutes"
        );
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % 4) as usize;
        let _ = workers[i].kill(); // SIGKILL
        let _ = workers[i].wait();
        kills += 1;
        workers[i] = worker(&env, &url, "2s", &format!("w{i}-{kills}.log"));
    }
    let took = started.elapsed();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    eprintln!(
        "1000 runs with 4 workers and {kills} SIGKILLs: {:.1} s",
        took.as_secs_f64()
    );
    assert!(kills >= 3, "the workers were killed {kills} times only");
    let verify = chronicle(&env, &url, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let histories = histories(&url);
    assert_eq!(histories.len(), 1000);
    let mut abandoned = 0;
    for (run, events) in &histories {
        assert_no_overlap(run, events);
        abandoned += events
            .iter()
            .filter(|(_, _, p)| p["type"] == "StepAbandoned")
            .count();
        let last = &events.last().unwrap().2;
        assert_eq!(last["type"], "RunSucceeded", "run {run}: {last}");
    }
    eprintln!("attempts abandoned by the kills and taken over: {abandoned}");
    // Every attempt's process-group record went with its outcome or its
    // abandonment: none is left behind.
    let left = Store::open_read_only(&url)
        .unwrap()
        .index_scan("processes", "")
        .unwrap();
    let keys: Vec<&str> = left.iter().take(3).map(|(k, _)| k.as_str()).collect();
    assert!(
        left.is_empty(),
        "{} process records left: {keys:?}…",
        left.len()
    );
}

/// The poison-run rule holds across workers: a step whose attempts keep
/// being cut by their worker's death (each holder SIGKILLed while the step
/// runs) is abandoned by each taker-over, and the second cut in a row
/// (`quarantine_after_crashes: 2`) quarantines the run instead of running
/// it again.
#[test]
fn a_step_cut_by_dying_workers_quarantines_its_run() {
    let env = Env::new();
    let url = fresh_postgres();
    let marker = format!("poison-{}", uuid::Uuid::now_v7().simple());
    let wf = env.write(
        "poison.yaml",
        &format!(
            "name: poison
defaults:
  quarantine_after_crashes: 2
steps:
  - id: poison
    command: [sh, -c, 'sleep 30', {marker}]
"
        ),
    );
    let submitted = chronicle(&env, &url, &["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(submitted.code, 0, "{submitted:?}");
    let run = submitted.stdout.trim().to_string();
    for cut in 0..2 {
        let mut w = worker(&env, &url, "1s", &format!("cut{cut}.log"));
        wait_started(&marker);
        w.kill().unwrap(); // SIGKILL: its watchdog kills the step
        w.wait().unwrap();
        let t = Instant::now();
        while !marked_processes(&marker).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the step outlived its worker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut last = worker(&env, &url, "1s", "last.log");
    let t = Instant::now();
    let status = loop {
        let s = chronicle(&env, &url, &["status", &run, "--json"]).json();
        if s["status"] == "quarantined" {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the run was not quarantined: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = last.kill();
    let _ = last.wait();
    assert!(
        status["quarantine"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("abandoned 2 times in a row")),
        "{status}"
    );
    let kinds: Vec<String> = histories(&url)
        .remove(&run)
        .unwrap()
        .iter()
        .filter(|(_, _, p)| p["step"] == "poison")
        .map(|(_, _, p)| format!("{}#{}", p["type"].as_str().unwrap(), p["attempt"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "StepStarted#1",
            "StepAbandoned#1",
            "StepStarted#2",
            "StepAbandoned#2"
        ],
        "no third attempt"
    );
    assert!(marked_processes(&marker).is_empty());
}

/// A worker paused with SIGSTOP past its lease loses the run: another
/// worker takes it over (kills the paused worker's step, records it
/// abandoned, runs it again); continued, the paused worker writes nothing.
#[test]
fn a_worker_paused_past_its_lease_writes_nothing_after() {
    let env = Env::new();
    let url = fresh_postgres();
    let marker = format!("paused-{}", uuid::Uuid::now_v7().simple());
    let wf = env.write(
        "slow.yaml",
        &format!(
            "name: slow\nsteps:\n  - id: slow\n    command: [sh, -c, 'sleep 3; echo {{}}', {marker}]\n"
        ),
    );
    let submitted = chronicle(&env, &url, &["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(submitted.code, 0, "{submitted:?}");
    let run = submitted.stdout.trim().to_string();
    let mut a = worker(&env, &url, "1s", "a.log");
    wait_started(&marker);
    let pid = nix::unistd::Pid::from_raw(a.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut b = worker(&env, &url, "1s", "b.log");
    let t = Instant::now();
    loop {
        let s = chronicle(&env, &url, &["status", &run, "--json"]);
        if s.code == 0 && s.json()["status"] == "succeeded" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the run did not finish on the second worker: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = histories(&url).remove(&run).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let after = histories(&url).remove(&run).unwrap();
    assert_eq!(
        before.len(),
        after.len(),
        "the continued worker wrote to the run it had lost: {:?}",
        &after[before.len()..]
    );
    let kinds: Vec<String> = after
        .iter()
        .filter(|(_, _, p)| p["step"] == "slow")
        .map(|(_, _, p)| format!("{}#{}", p["type"].as_str().unwrap(), p["attempt"]))
        .collect();
    assert_eq!(
        kinds,
        vec![
            "StepStarted#1",
            "StepAbandoned#1",
            "StepStarted#2",
            "StepSucceeded#2"
        ]
    );
    assert_no_overlap(&run, &after);
    assert!(
        marked_processes(&marker).is_empty(),
        "a step process outlived the test"
    );
    for w in [&mut a, &mut b] {
        let _ = w.kill();
        let _ = w.wait();
    }
    // The continued worker noticed: its lease was refused (a write fenced,
    // or the heartbeat), or the run it folded had ended under the new
    // holder — never a write.
    let log = std::fs::read_to_string(env.path("a.log")).unwrap();
    assert!(
        log.contains("lease") || log.contains("has ended"),
        "the paused worker did not notice it lost the run: {log}"
    );
}

/// A worker that cannot reach the database for longer than its lease
/// stops the attempts it started (another worker may have taken the run
/// over); when the database is back, the run is claimed again, the cut
/// attempt recorded abandoned, and the run succeeds.
#[test]
fn a_worker_cut_off_from_the_database_stops_its_attempts() {
    let env = Env::new();
    let url = fresh_postgres();
    let name = url.rsplit('/').next().unwrap().to_string();
    let admin = postgres_server();
    let marker = format!("cutoff-{}", uuid::Uuid::now_v7().simple());
    let wf = env.write(
        "slow.yaml",
        &format!(
            "name: slow\nsteps:\n  - id: slow\n    command: [sh, -c, 'sleep 60; echo {{}}', {marker}]\n    retry: {{ max_attempts: 1 }}\n  - id: quick\n    needs: [slow]\n    command: [sh, -c, 'echo {{}}']\n"
        ),
    );
    let run = chronicle(&env, &url, &["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = run.stdout.trim().to_string();
    let mut w = worker(&env, &url, "1s", "w.log");
    wait_started(&marker);
    // Cut the database off: no new connections, the open ones ended.
    let sql = |q: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(q).await.unwrap();
        });
    };
    sql(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let t = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the cut-off worker's step still runs {:?} after its 1 s lease",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("the step was stopped {:?} after the cut", t.elapsed());
    sql(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"));
    let t = Instant::now();
    loop {
        let s = chronicle(&env, &url, &["status", &run, "--json"]);
        if s.code == 0 && s.json()["steps"][0]["attempts"].as_u64() >= Some(2) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "never claimed again: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = w.kill();
    let _ = w.wait();
    crate::support::kill_marked(&marker);
    let h = histories(&url).remove(&run).unwrap();
    let kinds: Vec<String> = h
        .iter()
        .filter(|(_, _, p)| p["step"] == "slow")
        .map(|(_, _, p)| format!("{}#{}", p["type"].as_str().unwrap(), p["attempt"]))
        .collect();
    assert_eq!(
        &kinds[..3],
        ["StepStarted#1", "StepAbandoned#1", "StepStarted#2"]
    );
    assert_no_overlap(&run, &h);
}
