//! Crash recovery with real processes: kill -9 the engine at seeded random
//! moments and check that runs finish, side effects happen at least once
//! and at most once per crash inside the step, no acknowledged event is
//! lost, every chain verifies, and no step process is orphaned.
//!
//! `CHRONICLE_SOAK_CYCLES` raises the number of kill cycles (soak).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Env, root};

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Lines the child printed for committed events: `TIME STREAM SEQ EVENT ...`.
fn acked(stderr: &str) -> Vec<(String, u64, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let _time = p.next()?;
            let stream = p.next()?;
            let seq = p.next()?.parse().ok()?;
            let event = p.next()?;
            (stream.len() == 36).then(|| (stream.to_string(), seq, event.to_string()))
        })
        .collect()
}

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd()
        .current_dir(env.dir.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn kill_and_collect(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn marker_processes(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z");
            !zombie
                && std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(marker))
                    .unwrap_or(false)
        })
        .count()
}

#[test]
fn kill_dash_9_during_run_then_recover_succeeds_and_verifies() {
    let env = Env::new();
    let out_dir = env.path("out");
    let input = format!("{{\"out\": \"{}\", \"pace\": 0.3}}", out_dir.display());
    let mut child = env
        .cmd()
        .current_dir(root())
        .args(["run", "examples/log-audit.yaml", "--input", &input])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill while the first steps run (each sleeps 0.3 s before it finishes).
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.contains("StepStarted") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let list = env.run(&["list", "--json"]).json();
    assert_eq!(
        list[0]["status"], "running",
        "the killed run is left running: {list}"
    );
    let resume = env.run_in_root(&["recover"]);
    assert_eq!(resume.code, 0, "{resume:?}");
    assert!(
        resume.stderr.contains("1 run(s) continued"),
        "{}",
        resume.stderr
    );
    let s = env
        .run(&["status", list[0]["run_id"].as_str().unwrap(), "--json"])
        .json();
    assert_eq!(s["status"], "succeeded");
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(out_dir.join("report.md").exists());
}

#[test]
fn many_runs_survive_repeated_sigkill() {
    let cycles: u64 = std::env::var("CHRONICLE_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("CHRONICLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("crash soak: seed {seed} (rerun with CHRONICLE_SEED={seed}), {cycles} cycles");
    let mut rng = Rng(seed);
    let env = Env::new();
    let marker = format!("chronicle-crash-{}", std::process::id());
    let mut y = String::from(
        "name: crashy\ndefaults:\n  quarantine_after_crashes: 1000\n  retry: { max_attempts: 3, initial_backoff: 10ms }\nsteps:\n",
    );
    for i in 0..10 {
        y.push_str(&format!(
            "  - id: s{i}\n    shell: 'echo \"$CHRONICLE_IDEMPOTENCY_KEY $CHRONICLE_ATTEMPT\" >> side-effects.txt; sleep 0.02 # {marker}'\n"
        ));
        if i > 0 {
            y.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    let wf = env.write("crashy.yaml", &y);
    let mut printed: Vec<(String, u64, String)> = Vec::new();
    // Create M = 8 runs, each killed right after it is created.
    for _ in 0..8 {
        let mut child = spawn(&env, &["run", wf.to_str().unwrap()]);
        let stderr = child.stderr.take().unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let started = line.contains("StepStarted");
            lines.push(line);
            if started {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        printed.extend(acked(&lines.join("\n")));
    }
    for cycle in 0..cycles {
        let child = spawn(&env, &["recover"]);
        std::thread::sleep(Duration::from_millis(40 + rng.below(400)));
        let err = kill_and_collect(child);
        assert!(
            !err.contains("panicked"),
            "seed {seed} cycle {cycle}: {err}"
        );
        printed.extend(acked(&err));
    }
    // Let it finish.
    let t = Instant::now();
    let last = env.run(&["recover"]);
    assert_eq!(last.code, 0, "seed {seed}: {last:?}");
    printed.extend(acked(&last.stderr));
    assert!(t.elapsed() < Duration::from_secs(120));

    let runs = env.run(&["list", "--json"]).json();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 8, "seed {seed}");
    let side = std::fs::read_to_string(env.path("side-effects.txt")).unwrap();
    let mut effects: BTreeMap<String, usize> = BTreeMap::new();
    for line in side.lines() {
        *effects
            .entry(line.split_whitespace().next().unwrap().to_string())
            .or_default() += 1;
    }
    let mut histories: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for r in runs {
        let id = r["run_id"].as_str().unwrap().to_string();
        assert_eq!(
            r["status"], "succeeded",
            "seed {seed}: run {id} is {}",
            r["status"]
        );
        let hist = env.run(&["history", &id, "--json"]);
        let events: Vec<serde_json::Value> = hist
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for i in 0..10 {
            let step = format!("s{i}");
            let key = format!("{id}:{step}");
            let crashes = events
                .iter()
                .filter(|e| {
                    e["payload"]["type"] == "StepAbandoned" && e["payload"]["step"] == step.as_str()
                })
                .count();
            let n = effects.get(&key).copied().unwrap_or(0);
            assert!(n >= 1, "seed {seed}: {key} never ran");
            assert!(
                n <= 1 + crashes,
                "seed {seed}: {key} ran {n} times with {crashes} crashes inside it"
            );
        }
        histories.insert(id, events);
    }
    // No acknowledged event was lost.
    let mut checked = BTreeSet::new();
    for (stream, seq, event) in &printed {
        let Some(h) = histories.get(stream) else {
            continue;
        };
        let got = h
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("seed {seed}: {stream}#{seq} {event} lost"));
        assert_eq!(
            got["payload"]["type"].as_str(),
            Some(event.as_str()),
            "seed {seed}: {stream}#{seq}"
        );
        checked.insert((stream.clone(), *seq));
    }
    assert!(
        checked.len() > 8 * 5,
        "too few acknowledged events observed: {}",
        checked.len()
    );
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 0, "seed {seed}: {verify:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        marker_processes(&marker),
        0,
        "seed {seed}: orphaned step processes remain"
    );
}
