//! A damaged database file: every command either works or refuses with a
//! storage problem (exit 3), never panics or aborts, and a command that
//! found damage does not write to the file.

use crate::support::Env;

const WF: &str = "name: small\nsteps:\n  - id: a\n    command: ['true']\n  - id: b\n    needs: [a]\n    command: ['true']\n";

/// Exit codes a command may give on a damaged file: success, verify's
/// "problems found", and a storage problem. Never 101 (panic), 134
/// (abort) or a signal.
const ALLOWED: [i32; 3] = [0, 1, 3];

#[test]
fn single_byte_flips_on_every_page_never_abort_and_damage_is_refused() {
    let env = Env::new();
    let wf = env.write("wf.yaml", WF);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = env.run(&["run", wf.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
        runs.push(out.run_id());
    }
    let good = std::fs::read(env.db()).unwrap();
    let journal = env.path("chronicle.redb-journal");
    let good_journal = std::fs::read(&journal).unwrap();
    let pages = good.len() / 4096;
    assert!(pages >= 8, "a database of {} bytes", good.len());
    let mut refused = 0;
    for page in 0..pages {
        // A different offset within each page, so that headers, entries
        // and slack all get hit across the sweep.
        let at = page * 4096 + (page * 769 + 5) % 4096;
        let mut bad = good.clone();
        bad[at] ^= 0xff;
        std::fs::write(env.db(), &bad).unwrap();
        std::fs::write(&journal, &good_journal).unwrap();
        for args in [
            vec!["recover"],
            vec!["list"],
            vec!["verify"],
            vec!["status", &runs[0]],
            vec!["history", &runs[1], "--json"],
            vec!["recover"],
        ] {
            let out = env.run(&args);
            assert!(
                ALLOWED.contains(&out.code),
                "byte {at} flipped: `{}` exited {}: {}",
                args.join(" "),
                out.code,
                out.stderr
            );
            assert!(
                !out.stderr.contains("panicked"),
                "byte {at}: {}",
                out.stderr
            );
            if out.code == 3 {
                assert!(
                    out.stderr.contains("chronicle.redb"),
                    "byte {at}: the message names the file: {}",
                    out.stderr
                );
            }
            if args[0] == "recover" && out.code == 3 {
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "none of {pages} flipped pages was found damaged: the page check does not run"
    );
    eprintln!("{pages} pages flipped, {refused} recover(s) refused");
}

/// Replace the first `"type":` of the event payload that holds `marker`
/// with `"type";` — same length, no longer JSON. Returns false if not found.
fn break_an_event(db: &std::path::Path, marker: &[u8]) -> bool {
    let mut bytes = std::fs::read(db).unwrap();
    let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) else {
        return false;
    };
    // Back from the marker to the payload's `"type":`.
    let key = b"\"type\":";
    let Some(start) = bytes[..at].windows(key.len()).rposition(|w| w == key) else {
        return false;
    };
    bytes[start + key.len() - 1] = b';';
    std::fs::write(db, bytes).unwrap();
    true
}

#[test]
fn a_corrupted_event_is_a_storage_problem_in_every_command() {
    let env = Env::new();
    let wf = env.write("wf.yaml", WF);
    let out = env.run(&["run", wf.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    assert!(break_an_event(&env.db(), b"\"StepSucceeded\""));

    let history = env.run(&["history", &run]);
    assert_eq!(history.code, 3, "{history:?}");
    assert!(
        history.stdout.contains("damaged event"),
        "{}",
        history.stdout
    );
    assert!(
        history.stdout.contains("RunSucceeded"),
        "the rest is still shown: {}",
        history.stdout
    );
    assert!(
        history.stderr.contains("does not decode"),
        "{}",
        history.stderr
    );

    let json = env.run(&["history", &run, "--json"]);
    assert_eq!(json.code, 3, "{json:?}");
    assert!(!json.stderr.contains("panicked"), "{}", json.stderr);
    for line in json.stdout.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    for args in [
        vec!["status", &run],
        vec!["status", &run, "--json"],
        vec!["replay", &run, "--timeline"],
        vec!["replay", &run, "--json"],
        vec!["export", &run],
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, 3, "`{}`: {out:?}", args.join(" "));
        assert!(
            out.stderr.contains(&run) && out.stderr.contains("event"),
            "`{}` names the stream and the event: {}",
            args.join(" "),
            out.stderr
        );
    }
    let verify = env.run(&["verify"]);
    assert_eq!(verify.code, 1, "{verify:?}");
}
