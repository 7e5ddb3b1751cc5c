//! A crashed database whose commit journal is missing, emptied or damaged
//! is refused (exit 3, saying how to proceed) instead of opening without
//! the acknowledged events only the journal held; `recover --accept-loss`
//! opens it with what can be read and records the loss.

use std::process::Stdio;

use crate::support::Env;

/// Run a workflow whose second step waits, and SIGKILL the engine once
/// that step has started. Returns the marker of the step's processes.
fn crash_mid_run(env: &Env) -> String {
    let marker = format!("chronicle-journal-test-{}", std::process::id());
    let wf = env.write(
        "wf.yaml",
        &format!(
            "name: j\nsteps:\n  - id: a\n    command: ['true']\n  - id: b\n    needs: [a]\n    shell: 'touch started; sleep 30; : {marker}'\n"
        ),
    );
    let mut child = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_for(&env.path("started"));
    child.kill().unwrap();
    child.wait().unwrap();
    marker
}

fn restore(env: &Env, db: &[u8], journal: &[u8]) {
    std::fs::write(env.db(), db).unwrap();
    std::fs::write(env.path("chronicle.redb-journal"), journal).unwrap();
}

#[test]
fn a_lost_or_damaged_journal_after_a_crash_is_refused_not_dropped() {
    let env = Env::new();
    let marker = crash_mid_run(&env);
    let jpath = env.path("chronicle.redb-journal");
    let db = std::fs::read(env.db()).unwrap();
    let journal = std::fs::read(&jpath).unwrap();

    type Damage = fn(&std::path::Path);
    let cases: [(&str, Damage, &str); 3] = [
        (
            "deleted",
            |p| std::fs::remove_file(p).unwrap(),
            "is missing",
        ),
        (
            "emptied",
            |p| std::fs::write(p, b"").unwrap(),
            "is truncated",
        ),
        (
            "one byte flipped in a frame",
            |p| {
                let mut b = std::fs::read(p).unwrap();
                b[100] ^= 0x01;
                std::fs::write(p, b).unwrap();
            },
            "is damaged",
        ),
    ];
    for (name, damage, says) in cases {
        restore(&env, &db, &journal);
        damage(&jpath);
        for args in [vec!["recover"], vec!["list"], vec!["verify"]] {
            let out = env.run(&args);
            assert_eq!(out.code, 3, "journal {name}, `{}`: {out:?}", args.join(" "));
            assert!(out.stderr.contains(says), "journal {name}: {}", out.stderr);
            assert!(
                out.stderr.contains("--accept-loss"),
                "journal {name}: says how to proceed: {}",
                out.stderr
            );
        }
    }

    // With the journal as the crash left it, nothing is missing: the run
    // has its acknowledged StepStarted of b and recovery goes on.
    restore(&env, &db, &journal);
    let list = env.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let runs = list.json();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let run = runs[0]["run_id"].as_str().unwrap().to_string();
    let history = env.run(&["history", &run]);
    assert!(history.stdout.contains("StepStarted"), "{}", history.stdout);

    // Accepting the loss: the run the journal held is given up, the loss
    // is recorded, and the database opens normally from then on.
    restore(&env, &db, &journal);
    std::fs::remove_file(&jpath).unwrap();
    let accepted = env.run(&["recover", "--accept-loss"]);
    assert_eq!(accepted.code, 0, "{accepted:?}");
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains("journal  closed cleanly"),
        "{}",
        verify.stdout
    );
    let json = env.run(&["verify", "--json"]).json();
    assert_eq!(json["journal"]["open"], false, "{json}");
    assert_eq!(
        json["journal_losses"].as_array().unwrap().len(),
        1,
        "{json}"
    );
    assert!(
        verify.stdout.contains("journal loss accepted") && verify.stdout.contains("is missing"),
        "{}",
        verify.stdout
    );
    assert_eq!(env.run(&["list"]).code, 0);
    // The step the crash left (its record was in the journal given up).
    crate::support::kill_marked(&marker);
}
