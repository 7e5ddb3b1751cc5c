//! The directory of live workers, with real worker processes: each worker
//! registers while it claims runs and removes itself when it stops; offers
//! name the workers in turn, and a run offered to a worker that cannot
//! claim it (paused) is claimed by another worker's poll, within seconds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{fresh_postgres, histories, offer_runs, wait_succeeded, worker};
use crate::support::Env;

/// The first column of `sql`'s rows on `url`, as text.
fn column(url: &str, sql: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    })
}

/// The workers registered on `url` and live now.
fn live_workers(url: &str) -> BTreeSet<String> {
    column(
        url,
        "SELECT owner FROM chronicle_workers WHERE expires_at > now()",
    )
    .into_iter()
    .collect()
}

/// Wait (at most 20 s) until `done` holds of the live workers of `url`.
fn wait_workers(url: &str, what: &str, done: impl Fn(&BTreeSet<String>) -> bool) {
    let t = Instant::now();
    loop {
        let live = live_workers(url);
        if done(&live) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: {live:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The worker pids that ran `runs` (from their steps' outputs).
fn ran_on(url: &str, runs: &[String]) -> BTreeSet<u64> {
    let h = histories(url);
    runs.iter()
        .flat_map(|r| h[r].iter())
        .filter_map(|(_, _, p)| p["output"]["worker"].as_u64())
        .collect()
}

#[test]
fn offers_reach_each_worker_and_a_paused_ones_runs_go_to_the_others() {
    let env = Env::new();
    let url = fresh_postgres();
    let wf = env.write(
        "ppid.yaml",
        "name: ppid\nsteps:\n  - id: a\n    command: [sh, -c, 'echo \"{\\\"worker\\\": $PPID}\"']\n",
    );
    // The schema, before anything reads the directory.
    drop(chronicle_store::Store::open(&url, chronicle_store::StoreOptions::default()).unwrap());
    let mut workers: Vec<_> = (0..3)
        .map(|i| worker(&env, &url, "2s", &format!("dir-w{i}.log")))
        .collect();
    let pids: Vec<u64> = workers.iter().map(|w| u64::from(w.id())).collect();
    wait_workers(&url, "three workers register", |l| l.len() == 3);
    // The offers name the workers in turn (each claims only when named,
    // or at its poll): each of the three runs some.
    let runs = offer_runs(&url, &wf, 12);
    wait_succeeded(&env, &url, &runs);
    let ran = ran_on(&url, &runs);
    assert_eq!(ran, pids.iter().copied().collect(), "runs ran on {ran:?}");

    // Paused, a worker stays registered until its registration expires
    // (a lease), and offers meanwhile name it: the other workers claim
    // those runs at their poll (at least once a second).
    let paused = Pid::from_raw(workers[0].id() as i32);
    kill(paused, Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let runs = offer_runs(&url, &wf, 9);
    wait_succeeded(&env, &url, &runs);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the runs took {:?}",
        t.elapsed()
    );
    let ran = ran_on(&url, &runs);
    assert!(
        !ran.contains(&pids[0]) && !ran.is_empty(),
        "runs ran on {ran:?}; paused: {}",
        pids[0]
    );
    kill(paused, Signal::SIGCONT).unwrap();

    // A worker that stops removes itself at once (not a lease later).
    wait_workers(&url, "the continued worker registers again", |l| {
        l.len() == 3
    });
    kill(Pid::from_raw(workers[1].id() as i32), Signal::SIGTERM).unwrap();
    let status = workers[1].wait().unwrap();
    assert!(status.success(), "{status:?}");
    let live = live_workers(&url);
    assert_eq!(
        live.len(),
        2,
        "the stopped worker is still registered: {live:?}"
    );
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// A worker named by an offer while it is full (its registration said it
/// had room: renewed before it filled up, say) wakes every worker: it
/// passes the offer on, naming no one, rather than leave the run to the
/// other workers' poll.
#[test]
fn a_full_worker_named_by_an_offer_passes_it_on_to_every_worker() {
    use chronicle_store::{LeaseOp, NewEvent, Seq, Store, StoreOptions, StreamId, WriteRequest};
    let env = Env::new();
    let url = fresh_postgres();
    drop(Store::open(&url, StoreOptions::default()).unwrap());
    let marker = format!("full-{}", uuid::Uuid::now_v7().simple());
    let wf = env.write(
        "long.yaml",
        &format!("name: long\nsteps:\n  - id: a\n    command: [sh, -c, 'sleep 30', {marker}]\n"),
    );
    let mut full = std::process::Command::new(crate::support::BIN)
        .current_dir(env.dir.path())
        .args(["--db", &url, "worker", "--lease", "60s", "--max-runs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(env.path("full.log")).unwrap())
        .spawn()
        .unwrap();
    offer_runs(&url, &wf, 1);
    super::wait_started(&marker);
    // Full, it registers so (spare 0) at once; then a stale registration
    // is played back: room for 4.
    let owner = {
        let t = Instant::now();
        loop {
            let rows = column(&url, "SELECT owner FROM chronicle_workers WHERE spare = 0");
            if let Some(o) = rows.into_iter().next() {
                break o;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the full worker did not say so: {:?}",
                column(&url, "SELECT owner || ' ' || spare FROM chronicle_workers")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let offerer = Store::open(&url, StoreOptions::default()).unwrap();
    let listener = Store::open(&url, StoreOptions::default()).unwrap();
    offerer.register_worker(&owner, 60_000, 4).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let passed = rt.block_on(async {
        let mut changes = listener.subscribe_changes();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let offer = || {
            let run = StreamId::Run(uuid::Uuid::now_v7());
            let probe = NewEvent::new(1, br#"{"type":"Probe"}"#.to_vec());
            let mut req = WriteRequest::append(run.clone(), Seq(0), vec![probe]);
            req.leases.push(LeaseOp::Offer { run: run.key() });
            req
        };
        // Until an offer names the full worker (the offerer reads the
        // directory in the background, within a second).
        let t = Instant::now();
        loop {
            offerer.write(offer()).await.unwrap();
            let named = loop {
                let c = tokio::time::timeout(Duration::from_secs(5), changes.recv())
                    .await
                    .expect("the offer is heard")
                    .unwrap();
                if c.offers && c.streams.as_ref().is_some_and(|s| !s.is_empty()) {
                    break c.offered_to.clone();
                }
            };
            if named.as_deref() == Some(owner.as_str()) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no offer named {owner}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The full worker passes it on: an offer naming no one, with no
        // events.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(c))
                    if c.offers && c.offered_to.is_none() && c.streams == Some(Vec::new()) =>
                {
                    break true;
                }
                Ok(_) => {}
                Err(_) => break false,
            }
        }
    });
    let _ = full.kill();
    let _ = full.wait();
    for pid in crate::support::marked_processes(&marker) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(passed, "the full worker did not pass the offer on");
}
