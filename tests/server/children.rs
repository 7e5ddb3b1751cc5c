//! Child workflows through a real server: kill -9 mid-child, cancel of
//! the parent, a failing child.

use super::*;

fn runs_of(s: &Server, workflow: &str) -> Vec<Value> {
    s.get(&format!("/v1/runs?workflow={workflow}"))
        .json::<Value>()
        .unwrap()["runs"]
        .as_array()
        .unwrap()
        .clone()
}

const PARENT: &str = "name: parent\nsteps:\n  - id: sub\n    workflow: child.yaml\n    with: { n: 7 }\n  - id: after\n    needs: [sub]\n    shell: echo \"{\\\"got\\\":$INPUT_GOT}\"\n    with: { got: \"${{ steps.sub.output.n }}\" }\n";

#[test]
fn kill_9_mid_child_then_serve_again_finishes_both_with_one_child() {
    let env = Env::new();
    let marker = format!("child-{}", std::process::id());
    env.write(
        "child.yaml",
        &format!(
            "name: child\ninput: {{ n: 0 }}\noutputs: {{ n: \"${{{{ input.n }}}}\" }}\nsteps:\n  - id: slow\n    shell: touch {marker}.started; exec sleep 2 # {marker}\n"
        ),
    );
    let s = env.serve(&[]);
    let parent = submit(&s, PARENT);
    wait_for(&env.path(&format!("{marker}.started")));
    let children = runs_of(&s, "child");
    assert_eq!(children.len(), 1);
    let child = children[0]["run_id"].as_str().unwrap().to_string();
    let st: Value = s.get(&format!("/v1/runs/{child}")).json().unwrap();
    assert_eq!(
        st["parent"],
        json!({"run_id": parent, "step": "sub"}),
        "{st}"
    );
    s.kill9();
    let t = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "orphan step process");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = env.serve(&[]);
    let done = wait_status(&s, &parent);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][1]["output"], json!({"got": 7}), "{done}");
    let children = runs_of(&s, "child");
    assert_eq!(children.len(), 1, "one child only: {children:?}");
    assert_eq!(children[0]["status"], "succeeded");
    assert_eq!(done["steps"][0]["child"], json!(child));
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn canceling_the_parent_cancels_the_child_and_a_failing_child_fails_the_step() {
    let env = Env::new();
    let marker = format!("childc-{}", std::process::id());
    env.write(
        "child.yaml",
        &format!(
            "name: child\nsteps:\n  - id: slow\n    shell: touch {marker}.started; exec sleep 60 # {marker}\n"
        ),
    );
    let s = env.serve(&[]);
    let parent = submit(&s, PARENT);
    wait_for(&env.path(&format!("{marker}.started")));
    let child = runs_of(&s, "child")[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.post(
        &format!("/v1/runs/{parent}/cancel"),
        &json!({"reason": "not now"}),
    );
    assert_eq!(r.json::<Value>().unwrap()["status"], "canceled");
    let c = wait_status(&s, &child);
    assert_eq!(c["status"], "canceled", "{c}");
    let t = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the child's step process outlived the cancel"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A child that fails fails the parent's step.
    env.write("child.yaml", "name: child\nsteps:\n  - id: bad\n    command: ['false']\n    retry: { max_attempts: 1 }\n");
    let parent = submit(&s, PARENT);
    let done = wait_status(&s, &parent);
    assert_eq!(done["status"], "failed", "{done}");
    let err = done["steps"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("failed") && err.contains("child run"), "{err}");
    // A child file that is not there: the definition is refused, nothing created.
    std::fs::remove_file(env.path("child.yaml")).unwrap();
    let r = s.post("/v1/runs", &json!({"workflow": PARENT}));
    let p = problem(r, 422, "invalid_workflow");
    assert!(p["detail"].as_str().unwrap().contains("child.yaml"), "{p}");
}

#[test]
fn a_registered_child_by_workflow_name() {
    let env = Env::new();
    let s = env.serve(&[]);
    let child = "name: sub\ninput: { n: 0 }\noutputs: { doubled: \"${{ steps.double.output.v }}\" }\nsteps:\n  - id: double\n    shell: |\n      echo \"{\\\"v\\\": $((INPUT_N * 2))}\"\n    with: { n: \"${{ input.n }}\" }\n";
    let r = s
        .http
        .put(format!("{}/v1/workflows/sub", s.url))
        .bearer_auth(&s.token)
        .body(child)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text());
    let parent = env.write(
        "p.yaml",
        "name: p\nsteps:\n  - id: call\n    workflow_name: sub\n    with: { n: 21 }\n",
    );
    // Through the server (the CLI sends the definition; the server pins
    // the registered child).
    let out = env.run(&["run", parent.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    let st = env.run(&["status", &run, "--json"]).json();
    assert_eq!(st["steps"][0]["output"], json!({"doubled": 42}), "{st}");
    // An unknown name is refused when the definition is submitted.
    let bad = env.write(
        "b.yaml",
        "name: b\nsteps:\n  - id: call\n    workflow_name: nothing\n",
    );
    let out = env.run(&["run", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("workflow_name nothing"), "{out:?}");
    // On the file alone (no server), the CLI reads the registry itself.
    assert!(s.term().success());
    let out = env.run(&["run", parent.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let st = env.run(&["status", &out.run_id(), "--json"]).json();
    assert_eq!(st["steps"][0]["output"], json!({"doubled": 42}), "{st}");
}
