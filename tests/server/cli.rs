//! The command line beside a server: two terminals, the command suite
//! both ways, TLS, and databases a server must refuse.

use super::*;

#[test]
fn two_terminals_status_list_and_cancel_beside_a_running_run() {
    let env = Env::new();
    let marker = format!("two-{}", std::process::id());
    let _s = env.serve(&[]);
    let wf = env.write("slow.yaml", &slow(&marker, 30));
    let runner = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path(&format!("{marker}.started")));
    let list = env.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let run = list.json()[0]["run_id"].as_str().unwrap().to_string();
    let st = env.run(&["status", &run]);
    assert_eq!(st.code, 0, "{st:?}");
    assert!(st.stdout.contains("running"), "{st:?}");
    // recover is the server's job while it runs.
    let r = env.run(&["recover"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("holds"), "{r:?}");
    let c = env.run(&["cancel", &run]);
    assert_eq!(c.code, 0, "{c:?}");
    assert_eq!(c.stdout.trim(), format!("run {run} canceled"));
    let out = crate::support::Out::from(runner.wait_with_output().unwrap());
    assert_eq!(out.code, 1, "a canceled run exits 1: {out:?}");
    assert!(
        out.stdout.contains(&format!("run {run} canceled")),
        "{out:?}"
    );
    assert!(out.stderr.contains("RunCanceled"), "{out:?}");
}

/// The command suite on a file and through a server prints the same and
/// exits the same.
#[test]
fn commands_print_and_exit_alike_with_and_without_a_server() {
    let env = Env::new();
    let wf = env.write("quick.yaml", QUICK);
    let fails = env.write(
        "fails.yaml",
        "name: fails\nsteps:\n  - id: a\n    command: ['false']\n",
    );
    let ok = env.run(&["run", wf.to_str().unwrap(), "--input", "{\"x\": 2}"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let run = ok.run_id();
    let bad = env.run(&["run", fails.to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    let failed = bad.run_id();
    let fork = env.run(&["fork", &run, "--at", "4", "--set-output", "a={\"n\": 9}"]);
    assert_eq!(fork.code, 0, "{fork:?}");
    let short = &run[..13];
    let wf_s = wf.to_str().unwrap();
    let fails_s = fails.to_str().unwrap();
    let suite: Vec<Vec<&str>> = vec![
        vec!["upgrade-check", wf_s],
        vec!["upgrade-check", fails_s, "--json"],
        vec!["upgrade-check", fails_s, "--runs", &run],
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "--status", "failed"],
        vec!["list", "--status", "nope"],
        vec!["status", short],
        vec!["status", &run, "--json"],
        vec!["status", &failed],
        vec!["status", "ffff"],
        vec!["history", &run],
        vec!["history", &run, "--json"],
        vec!["history", "00000000-0000-0000-0000-000000000000"],
        vec!["replay", &run, "--at", "3"],
        vec!["replay", &run, "--at", "3", "--json"],
        vec!["replay", &run, "--timeline"],
        vec!["replay", &run, "--timeline", "--json"],
        vec!["replay", &run, "--at", "99"],
        vec!["replay", &run, "--at-time", "nonsense"],
        vec!["verify", &run],
        vec!["verify", &run, "--json"],
        vec!["export", &run],
        vec!["agents"],
        vec!["agents", "--json"],
        vec!["diff", &run, &run],
        vec!["diff", &run, &failed, "--json"],
        vec!["cancel", &run],
        vec!["pause", &failed],
        vec!["resume", &run],
        vec!["release", &run],
        vec!["fork", &run, "--at", "99"],
    ];
    // verify reports the commit journal, which a server holds open: the
    // one line (and JSON member) that differs on purpose.
    let run_cmd = |args: &[&str]| {
        let mut o = env.run(args);
        if args[0] == "verify" {
            if args.contains(&"--json") {
                let mut v = o.json();
                v.as_object_mut().unwrap().remove("journal");
                o.stdout = v.to_string();
            } else {
                o.stdout = o
                    .stdout
                    .lines()
                    .filter(|l| !l.contains("  journal  "))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
        o
    };
    let direct: Vec<_> = suite.iter().map(|args| run_cmd(args)).collect();
    let _s = env.serve(&[]);
    for (args, d) in suite.iter().zip(&direct) {
        let r = run_cmd(args);
        assert_eq!(
            (r.code, &r.stdout),
            (d.code, &d.stdout),
            "{args:?}\nserver: {r:?}\nfile: {d:?}"
        );
        if d.code != 0 {
            assert_eq!(r.stderr, d.stderr, "{args:?}");
        }
    }
    // Commands that execute: the same summary and exit code.
    let through = env.run(&["run", wf.to_str().unwrap(), "--input", "{\"x\": 2}"]);
    assert_eq!(through.code, 0, "{through:?}");
    let strip = |s: &str| {
        s.replace(&through.run_id(), "RUN")
            .replace(&ok.run_id(), "RUN")
    };
    let summary = |s: &str| {
        s.lines()
            .filter(|l| !l.contains(':'))
            .map(strip)
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&through.stderr), summary(&ok.stderr));
    assert_eq!(strip(&through.stdout), strip(&ok.stdout));
    let fails2 = env.run(&["run", fails.to_str().unwrap()]);
    assert_eq!(fails2.code, 1, "{fails2:?}");
    let detached = env.run(&["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(detached.code, 0);
    let id = detached.stdout.trim();
    assert_eq!(id.len(), 36, "{detached:?}");
    let follow = env.run(&["history", id, "--follow"]);
    assert_eq!(follow.code, 0);
    assert!(follow.stdout.contains("RunSucceeded"), "{follow:?}");
}

#[test]
fn tls_serves_https_and_the_cli_trusts_the_servers_certificate() {
    let env = Env::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = env.write("cert.pem", &cert.pem());
    let key_path = env.write("key.pem", &key.serialize_pem());
    let mut c = env.cmd();
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    let discovery: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("chronicle.redb-server.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(discovery["url"], url.as_str());
    assert!(
        discovery["tls_cert"]
            .as_str()
            .unwrap()
            .ends_with("cert.pem")
    );
    // The CLI goes through the server over TLS, trusting its certificate.
    let wf = env.write("quick.yaml", QUICK);
    let t = Instant::now();
    let run = loop {
        let r = env.run(&["run", wf.to_str().unwrap()]);
        if r.code == 0 || t.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run.code, 0, "{run:?}");
    let list = env.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    // Plain HTTP to the TLS port gets no answer; a client that does not
    // trust the certificate is refused.
    let plain = reqwest::blocking::Client::new()
        .get(url.replace("https://", "http://") + "/healthz")
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let untrusted = reqwest::blocking::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap()
        .get(format!("{url}/healthz"))
        .send();
    assert!(untrusted.is_err());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn serve_refuses_a_damaged_or_held_database_and_changes_nothing() {
    let env = Env::new();
    std::fs::write(env.db(), b"not a redb file at all, just bytes").unwrap();
    let before = crate::support::digest(&env.db());
    let out = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("chronicle.redb"), "{out:?}");
    assert_eq!(
        crate::support::digest(&env.db()),
        before,
        "the file is untouched"
    );
    assert!(!env.path("chronicle.redb-server.json").exists());
    assert!(!env.path("chronicle.redb-token").exists());
    // A database another process holds: exit 3, nothing written.
    let env = Env::new();
    let marker = format!("held-{}", std::process::id());
    let wf = env.write("slow.yaml", &slow(&marker, 30));
    let mut runner = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path(&format!("{marker}.started")));
    let out = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("in use by another process"), "{out:?}");
    assert!(!env.path("chronicle.redb-server.json").exists());
    let _ = runner.kill();
    let _ = runner.wait();
    crate::support::kill_marked(&marker);
}
