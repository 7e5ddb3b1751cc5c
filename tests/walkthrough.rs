//! The README's walkthrough, run as a script: its commands work as
//! written, and step 5 audits the run that crashed.

use std::process::Command;

use crate::support::{BIN, Env, root};

/// The first `sh` block after the walkthrough's heading.
fn walkthrough() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let at = readme
        .find("## Walkthrough")
        .expect("the README has a walkthrough");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let end = start + rest[start..].find("```").expect("the block ends");
    rest[start..end].to_string()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "out" {
                copy_dir(&e.path(), &target);
            }
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let env = Env::new();
    copy_dir(&root().join("examples"), &env.path("examples"));
    // The binary under test stands in for the release build.
    let script: String = walkthrough()
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.starts_with("export PATH"))
        .map(|l| format!("{l}\n"))
        .collect();
    let script = format!("set -eu\n{script}\necho \"AUDITED $RUN\"\n");
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env_remove("CHRONICLE_DB")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stdout}\n{stderr}"
    );
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("AUDITED "))
        .expect("the script ran to the end")
        .to_string();
    // Step 5 showed the crashed run: its history has the abandoned attempts.
    let audited: Vec<&str> = stdout.lines().filter(|l| l.contains(&run)).collect();
    assert!(
        audited.iter().any(|l| l.contains("StepAbandoned")),
        "step 5 did not show the crashed run's abandoned attempts:\n{stdout}"
    );
    assert!(
        stdout.contains("stream(s) verified, 0 with problems"),
        "{stdout}"
    );
}
