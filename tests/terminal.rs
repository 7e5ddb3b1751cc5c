//! The live progress on a terminal, seen through a real pseudo-terminal
//! (tmux, 80 columns): no line wider than 80, no line per event, nothing
//! left of the live lines at the end, the summary table and the workflow's
//! named outputs shown.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{BIN, Env, root};

fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .expect("tmux runs (the CI installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The screen's rows; with `join`, wrapped lines joined (a line wider
/// than the terminal shows as one long line). Live lines are padded to the
/// terminal's width, which tmux counts as wrapped: join only once they
/// are gone.
fn screen(socket: &str, join: bool) -> Vec<String> {
    let mut args = vec!["capture-pane", "-p", "-t", "t"];
    if join {
        args.push("-J");
    }
    tmux(socket, &args)
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect()
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

fn check_width(lines: &[String], when: &str) {
    for l in lines {
        assert!(
            l.chars().count() <= 80,
            "{when}: a line of {} columns:\n{l}",
            l.chars().count()
        );
    }
}

#[test]
fn progress_on_a_terminal_fits_80_columns_and_ends_clean() {
    let env = Env::new();
    let socket = format!("chronicle-test-{}", std::process::id());
    let out = env.path("out");
    let cmd = format!(
        "cd {root} && CHRONICLE_FLAKY=1 {bin} --db {db} run examples/log-audit.yaml --input '{{\"pace\": 0.6, \"out\": \"{out}\"}}'; echo EXIT=$?; sleep 60",
        root = root().display(),
        bin = BIN,
        db = env.db().display(),
        out = out.display()
    );
    tmux(
        &socket,
        &["new-session", "-d", "-s", "t", "-x", "80", "-y", "50", &cmd],
    );
    let t = Instant::now();
    let mut live_seen = false;
    let end = loop {
        assert!(t.elapsed() < Duration::from_secs(60), "the run never ended");
        let lines = screen(&socket, false);
        if lines.iter().any(|l| l.starts_with("EXIT=")) {
            break screen(&socket, true);
        }
        if lines.iter().any(|l| l.contains("running, attempt")) {
            live_seen = true;
            check_width(&lines, "while running");
            // Each step's line is whole on its row: it starts with the
            // spinner and the step's name (a wrapped line would not).
            for l in lines.iter().filter(|l| l.contains("attempt")) {
                let head: Vec<char> = l.chars().take(3).collect();
                let marker = SPINNER.iter().any(|s| l.starts_with(s)) || head[0] == ' ';
                assert!(
                    marker && head[1] == ' ' && head[2].is_ascii_alphanumeric(),
                    "a live line cut by the terminal's width:\n{}",
                    lines.join("\n")
                );
            }
            assert!(
                !lines
                    .iter()
                    .any(|l| l.contains("StepStarted") || l.contains("RunCreated")),
                "a line per event on a terminal:\n{}",
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    tmux(&socket, &["kill-server"]);
    let text = end.join("\n");
    assert!(live_seen, "no live step line was ever seen:\n{text}");
    check_width(&end, "at the end");
    assert!(end.iter().any(|l| l == "EXIT=0"), "{text}");
    assert!(
        end[0].starts_with("run ") && end[0].contains("started"),
        "the started line is first and whole:\n{text}"
    );
    // The live lines are gone: no spinner, no "running" left behind.
    for spinner in SPINNER {
        assert!(!text.contains(spinner), "a stale spinner line:\n{text}");
    }
    assert!(!text.contains("running, attempt"), "{text}");
    // The summary and the named outputs.
    assert!(
        text.contains("STEP") && text.contains("errors-hdfs"),
        "{text}"
    );
    let report = out.join("report.md");
    assert!(
        end.iter()
            .any(|l| l.trim_start().starts_with("report ")
                && l.ends_with(&report.display().to_string())),
        "where the report was written:\n{text}"
    );
    assert!(report.exists());
}
