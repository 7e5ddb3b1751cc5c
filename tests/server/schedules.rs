//! Schedules through a real server and the CLI (the firing at nominal
//! times is pinned with an injected clock in engine/tests/schedules.rs).

use super::*;

#[test]
fn schedules_from_the_cli_through_the_server() {
    let env = Env::new();
    let wf = env.write("q.yaml", QUICK);
    let s = env.serve(&[]);
    let add = env.run(&[
        "schedule",
        "add",
        "hourly",
        wf.to_str().unwrap(),
        "--cron",
        "0 * * * *",
        "--timezone",
        "Europe/Paris",
        "--input",
        "{\"x\": 1}",
    ]);
    assert_eq!(add.code, 0, "{add:?}");
    assert!(add.stdout.contains("schedule hourly active"), "{add:?}");
    let list = env.run(&["schedule", "list", "--json"]).json();
    let one = &list["schedules"][0];
    assert_eq!(one["name"], "hourly");
    assert_eq!(one["timezone"], "Europe/Paris");
    assert!(one["next"].as_str().unwrap().ends_with(":00:00Z"), "{one}");
    // The same through the API.
    let v: Value = s.get("/v1/schedules/hourly").json().unwrap();
    assert_eq!(v["cron"], "0 * * * *");
    // Trigger: a run now, keyed by the schedule.
    let fired = env.run(&["schedule", "trigger", "hourly"]);
    assert_eq!(fired.code, 0, "{fired:?}");
    let run = fired.stdout.split_whitespace().last().unwrap().to_string();
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["input"]["x"], 1);
    assert_eq!(
        s.get("/v1/schedules/hourly").json::<Value>().unwrap()["fired"],
        1
    );
    // Pause, resume, delete.
    let p = env.run(&["schedule", "pause", "hourly"]);
    assert!(p.stdout.contains("hourly paused"), "{p:?}");
    let r = env.run(&["schedule", "resume", "hourly"]);
    assert!(r.stdout.contains("hourly active"), "{r:?}");
    // Bad input: a clear error, exit 2, nothing created.
    let bad = env.run(&[
        "schedule",
        "add",
        "x",
        wf.to_str().unwrap(),
        "--cron",
        "every hour",
    ]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("five fields"), "{bad:?}");
    let dup = env.run(&[
        "schedule",
        "add",
        "hourly",
        wf.to_str().unwrap(),
        "--cron",
        "* * * * *",
    ]);
    assert_eq!(dup.code, 2, "{dup:?}");
    assert!(dup.stderr.contains("exists"), "{dup:?}");
    let d = env.run(&["schedule", "delete", "hourly"]);
    assert!(d.stdout.contains("hourly deleted"), "{d:?}");
    let gone = env.run(&["schedule", "trigger", "hourly"]);
    assert_eq!(gone.code, 2, "{gone:?}");
    assert!(gone.stderr.contains("no schedule named hourly"), "{gone:?}");
    problem(s.get("/v1/schedules/hourly"), 404, "unknown_schedule");
    let list = env.run(&["schedule", "list", "--json"]).json();
    assert!(list["schedules"].as_array().unwrap().is_empty());
    // The schedule's stream is part of the verified log.
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["stream"] == "schedule:hourly"),
        "{v}"
    );
}
