//! Bad inputs: each gets a clear message (pinned by a snapshot), a
//! non-zero exit code, and leaves the database byte-for-byte unchanged.

use crate::support::{Env, digest};

fn check(env: &Env, run: &str, name: &str, args: &[&str], code: i32) {
    let before = digest(&env.db());
    let out = env.run(args);
    assert_eq!(out.code, code, "{name}: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
    assert!(
        !out.stderr.contains("RUST_BACKTRACE"),
        "{name}: {}",
        out.stderr
    );
    let dir = env.dir.path().to_string_lossy().to_string();
    let msg = out.stderr.replace(&dir, "[TMP]").replace(run, "[RUN]");
    insta::assert_snapshot!(name, msg);
    assert!(digest(&env.db()) == before, "{name}: the database changed");
}

#[test]
fn bad_inputs_are_refused_clearly_and_change_nothing() {
    let env = Env::new();
    let ok = env.write(
        "ok.yaml",
        "name: ok\nsteps:\n  - id: a\n    command: ['true']\n",
    );
    let out = env.run(&["run", ok.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    let bad = |name: &str, text: &str| env.write(name, text).to_string_lossy().into_owned();
    let malformed = bad("malformed.yaml", "name: x\nsteps: [\n  - id: a\n");
    let cycle = bad(
        "cycle.yaml",
        "name: c\nsteps:\n  - id: a\n    needs: [b]\n    command: ['true']\n  - id: b\n    needs: [a]\n    command: ['true']\n",
    );
    let unknown_dep = bad(
        "dep.yaml",
        "name: d\nsteps:\n  - id: a\n    needs: [ghost]\n    command: ['true']\n",
    );
    let no_exec = bad("noexec.yaml", "name: d\nsteps:\n  - id: a\n");
    let unknown_field = bad(
        "field.yaml",
        "name: d\nsteps:\n  - id: a\n    comand: ['true']\n",
    );
    let bad_json = bad("bad.json", "{\"name\": \"x\", \"steps\": [}");
    let bad_duration = bad(
        "dur.yaml",
        "name: d\nsteps:\n  - id: a\n    command: ['true']\n    timeout: forever\n",
    );
    let hist = bad("hist.jsonl", "not json\n");
    let empty_hist = bad("empty.jsonl", "");
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        ("run_malformed_yaml", vec!["run", &malformed], 2),
        ("run_cycle", vec!["run", &cycle], 2),
        ("run_unknown_dependency", vec!["run", &unknown_dep], 2),
        ("run_no_executor", vec!["run", &no_exec], 2),
        ("run_unknown_field", vec!["run", &unknown_field], 2),
        ("run_bad_json_workflow", vec!["run", &bad_json], 2),
        ("run_bad_duration", vec!["run", &bad_duration], 2),
        ("run_missing_file", vec!["run", "nope.yaml"], 2),
        (
            "run_input_not_json",
            vec!["run", ok.to_str().unwrap(), "--input", "{oops"],
            2,
        ),
        (
            "run_input_not_object",
            vec!["run", ok.to_str().unwrap(), "--input", "[1,2]"],
            2,
        ),
        ("validate_cycle", vec!["validate", &cycle], 2),
        (
            "status_unknown_run",
            vec!["status", "00000000-0000-7000-8000-000000000000"],
            2,
        ),
        ("status_unknown_prefix", vec!["status", "zzzz"], 2),
        ("history_unknown_run", vec!["history", "0123abcd"], 2),
        (
            "replay_seq_out_of_range",
            vec!["replay", &run, "--at", "999"],
            2,
        ),
        (
            "replay_bad_time",
            vec!["replay", &run, "--at-time", "yesterday"],
            2,
        ),
        ("replay_needs_run_or_file", vec!["replay"], 2),
        (
            "replay_bad_history_file",
            vec!["replay", "--file", &hist],
            2,
        ),
        ("import_empty_file", vec!["import", &empty_hist], 2),
        (
            "fork_bad_set_output",
            vec!["fork", &run, "--at", "1", "--set-output", "a"],
            2,
        ),
        (
            "fork_unknown_step",
            vec!["fork", &run, "--at", "1", "--set-output", "ghost=1"],
            2,
        ),
        ("list_bad_status", vec!["list", "--status", "sleeping"], 2),
        ("bad_flag", vec!["run", "--frobnicate"], 2),
        ("unknown_command", vec!["explode"], 2),
        ("release_not_quarantined", vec!["release", &run], 2),
    ];
    assert!(cases.len() >= 20);
    for (name, args, code) in cases {
        check(&env, &run, name, &args, code);
    }
}

#[test]
fn storage_problems_exit_3_with_a_clear_message() {
    let env = Env::new();
    // A corrupt database file.
    let corrupt = env.write("corrupt.redb", &"garbage ".repeat(1000));
    let before = digest(&corrupt);
    let out = env.run(&["--db", corrupt.to_str().unwrap(), "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    let msg = out
        .stderr
        .replace(&env.dir.path().to_string_lossy().to_string(), "[TMP]");
    insta::assert_snapshot!("storage_corrupt_database", msg);
    assert_eq!(digest(&corrupt), before);
    // A missing database for a read command.
    let missing = env.run(&["--db", env.path("none.redb").to_str().unwrap(), "list"]);
    assert_eq!(missing.code, 3);
    assert!(
        !env.path("none.redb").exists(),
        "a read command must not create a database"
    );
    // A database locked by another process (a run that sleeps).
    let slow = env.write(
        "slow.yaml",
        "name: slow\nsteps:\n  - id: a\n    command: [sleep, '5']\n",
    );
    let mut child = env
        .cmd()
        .args(["run", slow.to_str().unwrap()])
        .stderr(std::fs::File::create(env.path("slow.stderr")).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut locked = None;
    let mut seen = Vec::new();
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let out = env.run(&["list"]);
        // Exit 3 also means "no database yet" while the child creates it.
        if out.code == 3 && out.stderr.contains("in use") {
            locked = Some(out);
            break;
        }
        seen.push(out);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let Some(locked) = locked else {
        panic!(
            "the second process never saw the lock; it saw {seen:#?}\nthe run's stderr: {}",
            std::fs::read_to_string(env.path("slow.stderr")).unwrap_or_default()
        );
    };
    let msg = locked
        .stderr
        .replace(&env.dir.path().to_string_lossy().to_string(), "[TMP]");
    insta::assert_snapshot!("storage_locked_database", msg);
}

/// A PostgreSQL URL that cannot be used — a server that is not there, one
/// that accepts connections and never answers (it used to hang the command
/// forever), a malformed URL, an unknown host — exits 3 with the database
/// named (its
/// password redacted) and what to check; never a panic (the store's
/// runtime, started before the failure, used to be dropped inside the
/// CLI's and panicked with exit 101).
#[test]
fn unusable_postgres_urls_exit_3_with_a_clear_message() {
    let env = Env::new();
    // A server that accepts connections and never answers (wedged, or a
    // proxy whose backend is gone): the command gives up after the URL's
    // connect_timeout instead of hanging.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "postgres://someone:s3cret@{}/chronicle?connect_timeout=1",
        silent.local_addr().unwrap()
    );
    let held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(2) {
            held.push(c);
        }
        std::thread::sleep(std::time::Duration::from_secs(5));
        held.len()
    });
    let t = std::time::Instant::now();
    let out = env.run(&["--db", &silent_url, "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("did not answer within 1 s") && out.stderr.contains("someone:***@"),
        "{out:?}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let out = env.run(&["--db", &silent_url, "recover"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(
        held.join().unwrap(),
        2,
        "both commands reached the silent server"
    );
    for (url, says) in [
        (
            "postgres://someone:s3cret@127.0.0.1:1/chronicle",
            "Connection refused",
        ),
        (
            "postgres://someone:s3cret@127.0.0.1:1/chronicle?sslmode=bogus",
            "malformed database URL",
        ),
        (
            "postgresql://someone:s3cret@host.invalid/chronicle",
            "check that the server is running",
        ),
    ] {
        for args in [&["list"][..], &["recover"][..]] {
            let out = env.run(&[&["--db", url][..], args].concat());
            assert_eq!(out.code, 3, "{url} {args:?}: {out:?}");
            assert!(out.stderr.contains(says), "{url}: {out:?}");
            assert!(!out.stderr.contains("panicked"), "{url}: {out:?}");
            assert!(
                out.stderr.contains("someone:***@") && !out.stderr.contains("s3cret"),
                "the password is not redacted: {out:?}"
            );
        }
    }
}
