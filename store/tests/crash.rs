//! Crash consistency with real processes: a child appends in a loop and is
//! killed with SIGKILL at seeded random moments; after each kill the
//! parent reopens the file and checks that every acknowledged event is
//! present, no gap exists and every chain verifies.
//!
//! `CHRONICLE_CRASH_CYCLES` raises the number of cycles for a soak.
//!
//! The child is this test binary itself, run with `crash-child DB WRITERS`
//! (the test has its own `main`: `harness = false` in Cargo.toml).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chronicle_store::{NewEvent, Seq, Store, StoreOptions, StreamId};
use common::{Rng, open, seed};

fn sigkill_never_loses_an_acknowledged_event() {
    let cycles: usize = std::env::var("CHRONICLE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed = seed("crash test");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    // stream -> (seq -> hash) of every acknowledged event.
    let mut acked: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash-child", db.to_str().unwrap(), "4"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
        // SAFETY-free kill: std's kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: child exited by itself: {status:?}"
        );
        for line in reader.join().unwrap() {
            let mut parts = line.split(' ');
            let (s, q, h) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            acked
                .entry(s.to_string())
                .or_default()
                .insert(q.parse().unwrap(), h.to_string());
        }
        let store = open(&db);
        for (stream, events) in &acked {
            let id: StreamId = stream.parse().unwrap();
            let log = store.read_stream(&id, Seq(1)).unwrap();
            for (i, env) in log.iter().enumerate() {
                assert_eq!(
                    env.seq.0,
                    i as u64 + 1,
                    "seed {seed} cycle {cycle}: gap in {stream}"
                );
            }
            for (seq, hash) in events {
                let env = log.get(*seq as usize - 1).unwrap_or_else(|| {
                    panic!("seed {seed} cycle {cycle}: acknowledged {stream}#{seq} lost")
                });
                assert_eq!(
                    &env.hash_hex(),
                    hash,
                    "seed {seed} cycle {cycle}: {stream}#{seq} changed"
                );
            }
            let report = store.verify_stream(&id).unwrap();
            assert!(report.ok(), "seed {seed} cycle {cycle}: {report:?}");
        }
    }
    let total: usize = acked.values().map(BTreeMap::len).sum();
    assert!(total > 0, "the child never acknowledged anything");
    eprintln!("crash test: {cycles} cycles, {total} acknowledged events checked");
}

fn a_second_process_gets_a_clear_locked_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash-child", db.to_str().unwrap(), "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the child has the file open and has appended.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    let err = chronicle_store::Store::open(&db, Default::default()).unwrap_err();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(err, chronicle_store::StoreError::Locked { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
}

/// Append forever from WRITERS concurrent tasks (stream `crash:W`), and
/// print `STREAM SEQ HASH` for every acknowledged event, flushed, so the
/// parent knows exactly what was acknowledged before it kills us.
fn crash_child(db: &str, writers: usize) {
    use std::io::Write;
    let store = Store::open(db, StoreOptions::default()).expect("the child opens the store");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for w in 0..writers {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = StreamId::named(format!("crash:{w}")).unwrap();
                let mut seq = store
                    .head(&stream)
                    .unwrap()
                    .map(|h| h.last_seq)
                    .unwrap_or(Seq(0));
                let mut i = 0u64;
                loop {
                    let n = 1 + (i % 3) as usize;
                    let events = (0..n)
                        .map(|k| {
                            let text = format!("{:0>180}", i + k as u64);
                            NewEvent::new(
                                1,
                                format!(r#"{{"type":"Crash","n":"{text}"}}"#).into_bytes(),
                            )
                        })
                        .collect();
                    let Ok(done) = store.append(stream.clone(), seq, events).await else {
                        return;
                    };
                    for env in &done {
                        let _ = tx.send(format!("{} {} {}", env.stream, env.seq, env.hash_hex()));
                    }
                    seq = done.last().map(|e| e.seq).unwrap_or(seq);
                    i += n as u64;
                }
            });
        }
        drop(tx);
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("crash-child") {
        let writers = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
        crash_child(&args[1], writers);
        return;
    }
    // `cargo test` passes filters and flags: run the tests whose name
    // contains the first free argument (all without one).
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let tests: [(&str, fn()); 2] = [
        (
            "sigkill_never_loses_an_acknowledged_event",
            sigkill_never_loses_an_acknowledged_event,
        ),
        (
            "a_second_process_gets_a_clear_locked_error",
            a_second_process_gets_a_clear_locked_error,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        std::process::exit(101);
    }
}
