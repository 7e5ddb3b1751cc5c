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

use crate::support::{Env, root, wait_for};

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
    crate::support::marked_processes(marker).len()
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

#[test]
fn after_kill_dash_9_no_attempt_of_a_step_outlives_the_engine_into_its_retry() {
    let env = Env::new();
    let marker = format!("orphan-marker-{}", std::process::id());
    // Attempt 1 leaves a background child in its process group that would
    // write `late` after the engine is gone; attempt 2 finishes at once.
    // Every attempt logs when it starts (ns since the epoch).
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: o\nsteps:\n  - id: s\n    shell: |\n      echo \"start $CHRONICLE_ATTEMPT $(date +%s%N)\" >> attempts.log\n      if [ \"$CHRONICLE_ATTEMPT\" -ge 2 ]; then exit 0; fi\n      ( sleep 1.5; echo \"late $(date +%s%N)\" >> attempts.log ) &\n      touch started\n      wait # {marker}\n"
        ),
    );
    // Recovery's own kill, without the watchdog (tested below) first.
    let child = env
        .cmd()
        .env("CHRONICLE_WATCHDOG", "0")
        .args(["run", wf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"));
    kill_and_collect(child);
    let recover = env.run(&["recover"]);
    assert_eq!(recover.code, 0, "{recover:?}");
    assert!(
        recover.stderr.contains("killed process group"),
        "recovery kills what the crashed engine left: {}",
        recover.stderr
    );
    // Longer than attempt 1's background child would have taken.
    std::thread::sleep(Duration::from_millis(2_500));
    let log = std::fs::read_to_string(env.path("attempts.log")).unwrap();
    assert!(
        !log.contains("late"),
        "a process of attempt 1 ran on after attempt 2 started:\n{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("start")).count(),
        2,
        "{log}"
    );
    assert_eq!(marker_processes(&marker), 0, "a step process survived");
    // From the history: attempt 1 ended (abandoned) before attempt 2 started.
    let run = env.run(&["list", "--json"]).json()[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let history = env.run(&["history", &run, "--json"]);
    let events: Vec<serde_json::Value> = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |ty: &str, attempt: u64| {
        events
            .iter()
            .find(|e| e["payload"]["type"] == ty && e["payload"]["attempt"] == attempt)
            .unwrap_or_else(|| panic!("no {ty} of attempt {attempt}: {}", history.stdout))["seq"]
            .as_u64()
            .unwrap()
    };
    assert!(at("StepAbandoned", 1) < at("StepStarted", 2));
    assert_eq!(
        env.run(&["status", &run, "--json"]).json()["status"],
        "succeeded"
    );
}

#[test]
fn sigterm_and_sigint_stop_attempts_and_record_them_not_as_crashes() {
    for (signal, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let env = Env::new();
        let marker = format!("stop-marker-{}-{signal}", std::process::id());
        let wf = env.write(
            "wf.yaml",
            &format!(
                "name: t\nsteps:\n  - id: s\n    shell: |\n      if [ -f done ]; then exit 0; fi\n      touch started\n      sleep 30 # {marker}\n"
            ),
        );
        // Stopped three times in a row: on purpose, not a crash loop.
        for round in 0..3 {
            let _ = std::fs::remove_file(env.path("started"));
            let args = if round == 0 {
                vec!["run", wf.to_str().unwrap()]
            } else {
                vec!["recover"]
            };
            let child = spawn(&env, &args);
            wait_for(&env.path("started"));
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, signal).unwrap();
            let t = Instant::now();
            let out = child.wait_with_output().unwrap();
            assert!(t.elapsed() < Duration::from_secs(10), "{signal}: slow stop");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{signal}: {stderr}");
            assert!(stderr.contains(&format!("stopped by {signal}")), "{stderr}");
            assert_eq!(
                marker_processes(&marker),
                0,
                "{signal}: a step process survived the stop"
            );
        }
        let run = env.run(&["list", "--json"]).json()[0]["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        let status = env.run(&["status", &run, "--json"]).json();
        assert_eq!(status["status"], "running", "{status}");
        let history = env.run(&["history", &run]).stdout;
        assert_eq!(history.matches("StepAbandoned").count(), 3, "{history}");
        // Let it finish.
        env.write("done", "");
        let recover = env.run(&["recover"]);
        assert_eq!(recover.code, 0, "{recover:?}");
        assert_eq!(
            env.run(&["status", &run, "--json"]).json()["status"],
            "succeeded"
        );
    }
}

#[test]
fn with_the_parent_death_signal_a_step_leader_dies_with_the_engine() {
    let env = Env::new();
    let marker = env.write(&format!("pdeathsig-marker-{}", std::process::id()), "");
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: p\nsteps:\n  - id: s\n    command: ['tail', '-f', '/dev/null', '{}']\n",
            marker.display()
        ),
    );
    let marker = marker.to_string_lossy().into_owned();
    let child = env
        .cmd()
        .env("CHRONICLE_PARENT_DEATH_SIGNAL", "1")
        .args(["run", wf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while marker_processes(&marker) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_and_collect(child);
    // No recovery has run: the kernel alone killed the leader.
    let t = Instant::now();
    while marker_processes(&marker) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the step's leader outlived the engine"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn after_kill_dash_9_the_watchdog_kills_the_step_groups_before_any_recover() {
    let env = Env::new();
    let marker = format!("watchdog-marker-{}", std::process::id());
    // The leader waits on a background child; both would run for 30 s.
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: w\nsteps:\n  - id: s\n    shell: |\n      ( sleep 30; echo late >> late.log ) &\n      touch started\n      wait # {marker}\n"
        ),
    );
    let child = spawn(&env, &["run", wf.to_str().unwrap()]);
    wait_for(&env.path("started"));
    assert!(marker_processes(&marker) > 0, "the step runs");
    kill_and_collect(child);
    // No recovery runs: the watchdog alone ends the group.
    let t = Instant::now();
    while marker_processes(&marker) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the step's process group outlived the engine"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The background subshell is a fork of the step's shell: its command
    // line holds the marker too, so the loop above saw it go as well.
}
