//! The web UI in a real browser: Chromium driven by chromedriver (both
//! from the Debian packages; `.ci/run` installs them) against a real
//! `chronicle serve` on 127.0.0.1, with real step processes.
//!
//! Screenshots of the run list, a run page and a time-travel moment are
//! written to `target/ui-screenshots/`.

mod browser;

use std::time::{Duration, Instant};

use fantoccini::Locator;
use fantoccini::key::Key;
use serde_json::{Value, json};

use crate::support::{Env, root};
use browser::{Browser, GRAPH, ONE_BROWSER, rt};

/// `chronicle replay RUN --at N --json`: the run status and `{step: status}`.
fn replayed(env: &Env, run: &str, at: u64) -> (String, Value) {
    let out = env.run(&["replay", run, "--at", &at.to_string(), "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    let steps: serde_json::Map<String, Value> = v["steps"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), s["status"].clone()))
        .collect();
    (
        v["status"].as_str().unwrap().to_string(),
        Value::Object(steps),
    )
}

/// The run page has rendered its state, graph and first page of events.
const READY: &str = "return document.body.dataset.ready === 'run' && document.querySelector('#graph [data-step]') !== null";

#[test]
fn sign_in_then_a_run_turns_succeeded_live_and_time_travel_matches_replay() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let server = env.serve_from(&root(), &[]);
    let (url, login) = (server.url.clone(), server.login.clone());
    assert!(login.starts_with(&format!("{url}/login?token=")), "{login}");
    // The API refuses a request with neither token nor cookie.
    let anon = server.http.get(format!("{url}/v1/runs")).send().unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let out_dir = env.path("out");
    // pace 3: each step sleeps 3 s, time to open the page mid-run.
    let input = json!({"pace": 3, "out": out_dir}).to_string();
    rt().block_on(async {
        let b = Browser::start().await;
        // Without the cookie, every page redirects to the sign-in form.
        b.c.goto(&format!("{url}/runs/0123?at=2")).await.unwrap();
        assert!(b.path().await.starts_with("/login?next="), "{}", b.path().await);
        b.c.find(Locator::Id("login-form")).await.unwrap();
        b.c.goto(&format!("{url}/agents")).await.unwrap();
        assert!(b.path().await.starts_with("/login"), "{}", b.path().await);
        // A wrong token is refused with the form again.
        b.c.goto(&format!("{url}/login?token=nope&next=/")).await.unwrap();
        assert!(b.js("return document.body.innerText").await.as_str().unwrap().contains("not this server's"));
        // The printed link signs in (and goes to `next`).
        b.c.goto(&format!("{login}&next=/")).await.unwrap();
        assert_eq!(b.path().await, "/");
        b.wait("the run list", 10, "return document.querySelector('#runs-body') && document.querySelector('#counts button')").await;
        // The session cookie is HttpOnly: the page's scripts cannot read it.
        let cookies = b.js("return document.cookie").await;
        assert!(!cookies.as_str().unwrap().contains("chronicle_session"), "{cookies}");
        assert!(cookies.as_str().unwrap().contains("chronicle_csrf"), "{cookies}");
        b.js("window.__noReload = 1; return 1").await;

        // A run submitted elsewhere appears in the list live.
        let out = env.run_in_root(&["run", "examples/log-audit.yaml", "--input", &input, "--detach"]);
        assert_eq!(out.code, 0, "{out:?}");
        let run = out.stdout.split_whitespace().find(|w| w.len() == 36).unwrap_or_else(|| panic!("{out:?}")).to_string();
        b.wait("the new run in the list", 15, &format!("return document.querySelector('tr[data-run=\"{run}\"]') !== null")).await;
        assert_eq!(b.js("return window.__noReload").await, json!(1), "no reload");
        b.screenshot("runs.png").await;

        // Its page: every step turns succeeded, live, without a reload.
        b.c.find(Locator::Css(&format!("tr[data-run=\"{run}\"] a"))).await.unwrap().click().await.unwrap();
        b.wait("the run page", 15, READY).await;
        b.js("window.__noReload = 2; return 1").await;
        let first = b.js(GRAPH).await;
        let steps = first.as_object().unwrap().len();
        assert_eq!(steps, 13, "{first}");
        assert!(
            first.as_object().unwrap().values().any(|s| s != "succeeded"),
            "the page opened before the run ended: {first}"
        );
        b.wait("every step succeeded", 60, &format!("const g = {}; return Object.values(g).length === 13 && Object.values(g).every(s => s === 'succeeded') && document.querySelector('#run-status').dataset.status === 'succeeded'", GRAPH.trim_start_matches("return "))).await;
        assert_eq!(b.js("return window.__noReload").await, json!(2), "no reload");
        let head: u64 = b.js("return Number(document.querySelector('#head-seq').textContent)").await.as_u64().unwrap();
        assert!(head >= 29, "{head}");
        assert_eq!(b.js("return document.querySelectorAll('#events-body tr.ev').length").await, json!(head.min(100)), "every event listed live");
        assert!(b.js("return document.querySelectorAll('#gantt .g-bar').length").await.as_u64().unwrap() >= 13);
        // The attempts chart and the events link both ways: an attempt's
        // bar marks the events that began and ended it, and an event's
        // row marks its attempt's bar.
        let bar = b.c.find(Locator::Css("#gantt .g-bar")).await.unwrap();
        let started: u64 = bar.attr("data-seq").await.unwrap().unwrap().parse().unwrap();
        bar.click().await.unwrap();
        b.wait("the attempt's events marked", 10, &format!("return document.querySelector('#events-body tr.linked[data-seq=\"{started}\"]') !== null")).await;
        assert_eq!(b.js("return document.querySelectorAll('#events-body tr.linked').length").await, json!(2), "start and end");
        let other = b.js("const bars = [...document.querySelectorAll('#gantt .g-bar')]; return bars[bars.length - 1].dataset.seq").await;
        b.c.find(Locator::Css(&format!("#events-body tr.ev[data-seq=\"{}\"]", other.as_str().unwrap()))).await.unwrap().click().await.unwrap();
        b.wait("the event's attempt marked", 10, &format!("return document.querySelector('#gantt .g-bar.selected')?.dataset.seq === {other}")).await;
        b.c.set_window_size(1280, 1300).await.unwrap();
        b.c.goto(&format!("{url}/runs/{run}")).await.unwrap();
        b.wait("the run page again", 15, READY).await;
        b.screenshot("run.png").await;
        b.c.set_window_size(1280, 800).await.unwrap();

        // Time travel: the statuses shown at N are those of `replay --at N`.
        for n in [1, 3, head / 2, head - 1, head] {
            b.c.goto(&format!("{url}/runs/{run}?at={n}")).await.unwrap();
            b.wait("the run page at a seq", 15, READY).await;
            let (status, steps) = replayed(&env, &run, n);
            assert_eq!(b.js(GRAPH).await, steps, "statuses at seq {n}");
            assert_eq!(b.js("return document.querySelector('#run-status').dataset.status").await, json!(status), "run status at seq {n}");
            assert_eq!(b.js("return document.querySelector('#scrub').value").await, json!(n.to_string()));
        }
        // The keyboard moves the scrubber: the URL follows and the graph
        // changes to the fold at the new seq. Find a seq whose event
        // changed a step (a StepSucceeded), then step back from it.
        let k = (2..=head).find(|&k| replayed(&env, &run, k).1 != replayed(&env, &run, k - 1).1 && replayed(&env, &run, k).1.as_object().unwrap().values().any(|s| s == "succeeded")).unwrap();
        b.c.goto(&format!("{url}/runs/{run}?at={k}")).await.unwrap();
        b.wait("the run page at k", 15, READY).await;
        assert!(b.js("return document.querySelector('#graph .changed') !== null").await.as_bool().unwrap(), "the step the event changed is marked");
        let before = b.js(GRAPH).await;
        let scrub = b.c.find(Locator::Id("scrub")).await.unwrap();
        scrub.send_keys(&Key::Left.to_string()).await.unwrap();
        b.wait("the URL follows the scrubber", 10, &format!("return location.search === '?at={}'", k - 1)).await;
        let (_, want) = replayed(&env, &run, k - 1);
        assert_ne!(before, want);
        b.wait_graph("the graph shows seq k-1", &want).await;
        scrub.send_keys(&Key::Right.to_string()).await.unwrap();
        b.wait("back to k", 10, &format!("return location.search === '?at={k}'")).await;
        b.wait_graph("the graph shows seq k", &before).await;
        // Jump to a seq with the form.
        let jump = b.c.find(Locator::Id("jump-seq")).await.unwrap();
        jump.send_keys(&format!("2{}", Key::Enter)).await.unwrap();
        b.wait("jump to seq 2", 10, "return location.search === '?at=2'").await;
        // Jump to a time: the state at the last event recorded by then
        // (`replay --at-time`).
        let t5 = env.run(&["history", &run, "--json"]).stdout.lines().nth(4).map(|l| serde_json::from_str::<Value>(l).unwrap()["recorded_at"].as_str().unwrap().to_string()).unwrap();
        let at_time = env.run(&["replay", &run, "--at-time", &t5, "--json"]).json()["seq"].as_u64().unwrap();
        let when = b.c.find(Locator::Id("jump-time")).await.unwrap();
        when.send_keys(&format!("{t5}{}", Key::Enter)).await.unwrap();
        b.wait("jump to a time", 10, &format!("return location.search === '?at={at_time}'")).await;
        b.c.set_window_size(1280, 1300).await.unwrap();
        // Mid-run: some steps succeeded, others still running.
        b.c.goto(&format!("{url}/runs/{run}?at={}", head * 2 / 3)).await.unwrap();
        b.wait("the time-travel page", 15, READY).await;
        b.screenshot("time-travel.png").await;
        // A phone's width: nothing overflows the page sideways (the graph
        // and tables scroll in their own boxes).
        b.c.set_window_size(412, 900).await.unwrap();
        b.c.goto(&format!("{url}/runs/{run}")).await.unwrap();
        b.wait("the run page on a phone", 15, READY).await;
        let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth").await;
        assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow}px wider than a phone");
        b.screenshot("phone.png").await;
        b.c.set_window_size(1280, 800).await.unwrap();

        // The agents and verify pages answer from the same session.
        b.c.goto(&format!("{url}/verify")).await.unwrap();
        b.c.find(Locator::Id("verify-go")).await.unwrap().click().await.unwrap();
        b.wait("verify ran", 20, "const e = document.querySelector('#verify-ok'); return e && e.dataset.ok").await;
        assert_eq!(b.js("return document.querySelector('#verify-ok').dataset.ok").await, json!("true"));
        assert!(b.js(&format!("return document.querySelector('tr[data-stream=\"{run}\"]') !== null")).await.as_bool().unwrap());
        b.close().await;
    });
    drop(server);
}

#[test]
fn fork_and_cancel_from_the_page_are_recorded() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let quick = env.write(
        "quick.yaml",
        "name: quick\nsteps:\n  - id: a\n    shell: echo '{\"n\":1}'\n  - id: b\n    needs: [a]\n    shell: echo '{\"m\":2}'\n",
    );
    let marker = format!("ui-cancel-{}", std::process::id());
    let slow = env.write(
        "slow.yaml",
        &format!("name: slow\nsteps:\n  - id: wait\n    shell: exec sleep 60 # {marker}\n"),
    );
    let server = env.serve(&[]);
    let url = server.url.clone();
    let login = server.login.clone();
    let out = env.run(&["run", quick.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let source = out.run_id();
    let slow_run = {
        let out = env.run(&["run", slow.to_str().unwrap(), "--detach"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
            .split_whitespace()
            .find(|w| w.len() == 36)
            .unwrap()
            .to_string()
    };
    let (forked, at) = rt().block_on(async {
        let b = Browser::start().await;
        b.c.goto(&format!("{login}&next=/runs/{source}?at=3")).await.unwrap();
        b.wait("the source at seq 3", 15, READY).await;
        b.c.find(Locator::Id("act-fork")).await.unwrap().click().await.unwrap();
        b.wait("the fork dialog", 5, "return document.querySelector('#confirm').open").await;
        assert_eq!(b.js("return document.querySelector('#fork-at').value").await, json!("3"));
        b.c.find(Locator::Id("confirm-yes")).await.unwrap().click().await.unwrap();
        let forked = b.wait("the fork's page", 15, &format!("return location.pathname.startsWith('/runs/') && !location.pathname.includes('{source}') && location.pathname.slice(6)")).await;
        b.wait("the fork's page ready", 15, READY).await;
        assert!(b.js("return document.querySelector('#forked-from').getAttribute('href')").await.as_str().unwrap().contains(&source));

        // Cancel, with the confirmation.
        b.c.goto(&format!("{url}/runs/{slow_run}")).await.unwrap();
        b.wait("the slow run running", 15, "return document.querySelector('#graph [data-step=\"wait\"]')?.dataset.status === 'running'").await;
        b.c.find(Locator::Id("act-cancel")).await.unwrap().click().await.unwrap();
        b.wait("the cancel dialog", 5, "return document.querySelector('#confirm').open").await;
        // Backing out changes nothing.
        b.c.find(Locator::Id("confirm-no")).await.unwrap().click().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(b.js("return document.querySelector('#run-status').dataset.status").await, json!("running"));
        b.c.find(Locator::Id("act-cancel")).await.unwrap().click().await.unwrap();
        b.wait("the cancel dialog again", 5, "return document.querySelector('#confirm').open").await;
        b.c.find(Locator::Id("confirm-yes")).await.unwrap().click().await.unwrap();
        b.wait("the run canceled on the page", 30, "return document.querySelector('#run-status').dataset.status === 'canceled'").await;
        b.close().await;
        (forked.as_str().unwrap().to_string(), 3)
    });
    let status = env.run(&["status", &forked, "--json"]).json();
    assert_eq!(status["forked_from"]["run_id"], json!(source), "{status}");
    assert_eq!(status["forked_from"]["at_seq"], json!(at), "{status}");
    let canceled = env.run(&["status", &slow_run, "--json"]).json();
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    let history = env.run(&["history", &slow_run, "--json"]).stdout;
    assert!(
        history.contains("\"RunCancelRequested\"") && history.contains("canceled from the web UI"),
        "{history}"
    );
    assert!(history.contains("\"RunCanceled\""), "{history}");
    assert!(
        crate::support::marked_processes(&marker).is_empty(),
        "the step's process is gone"
    );
    drop(server);
}

/// A session cookie signs API reads in; a state change signed in by the
/// cookie also needs the CSRF token; a forged cookie is refused.
#[test]
fn the_session_cookie_needs_the_csrf_token_for_changes() {
    let env = Env::new();
    let quick = env.write(
        "q.yaml",
        "name: q\nsteps:\n  - id: a\n    command: ['true']\n",
    );
    let server = env.serve(&[]);
    let run = env.run(&["run", quick.to_str().unwrap()]).run_id();
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed = no_redirect
        .get(format!("{}&next=//evil.example/x", server.login))
        .send()
        .unwrap();
    assert_eq!(signed.status().as_u16(), 303);
    assert_eq!(
        signed.headers()["location"],
        "/",
        "next must be a local path"
    );
    let cookies: Vec<String> = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = cookies
        .iter()
        .find(|c| c.starts_with("chronicle_session="))
        .unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let value = |c: &str| c.split(';').next().unwrap().to_string();
    let session = value(session);
    let csrf = value(
        cookies
            .iter()
            .find(|c| c.starts_with("chronicle_csrf="))
            .unwrap(),
    );
    let csrf_token = csrf.split_once('=').unwrap().1.to_string();
    let both = format!("{session}; {csrf}");
    let get = no_redirect
        .get(format!("{}/v1/runs/{run}", server.url))
        .header("cookie", &both)
        .send()
        .unwrap();
    assert_eq!(get.status().as_u16(), 200);
    let page = no_redirect
        .get(format!("{}/runs/{run}", server.url))
        .header("cookie", &both)
        .send()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.text().unwrap().contains("/ui/app.js"));
    let before = env.run(&["history", &run, "--json"]).stdout;
    let fork = |csrf: Option<&str>, cookie: &str| {
        let mut r = no_redirect
            .post(format!("{}/v1/runs/{run}/fork", server.url))
            .header("cookie", cookie)
            .json(&json!({"at": 1}));
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(fork(None, &both), 403, "no CSRF token");
    assert_eq!(fork(Some("0000"), &both), 403, "a wrong CSRF token");
    let (exp, mac) = session.split_once('=').unwrap().1.split_once('.').unwrap();
    let forged = format!(
        "chronicle_session={}.{mac}; {csrf}",
        exp.parse::<i64>().unwrap() + 1000
    );
    assert_eq!(fork(Some(&csrf_token), &forged), 401, "a forged session");
    assert_eq!(
        env.run(&["history", &run, "--json"]).stdout,
        before,
        "nothing written"
    );
    assert_eq!(
        env.run(&["list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(fork(Some(&csrf_token), &both), 202, "cookie and CSRF token");
    let forged_page = no_redirect
        .get(format!("{}/", server.url))
        .header("cookie", &forged)
        .send()
        .unwrap();
    assert_eq!(
        forged_page.status().as_u16(),
        303,
        "a forged session gets the sign-in form"
    );
    // Assets are served from the binary.
    let js = no_redirect
        .get(format!("{}/ui/app.js", server.url))
        .send()
        .unwrap();
    assert_eq!(js.status().as_u16(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
}

/// A history of 20,000+ events: the run page becomes interactive (the
/// time to it is printed, not asserted), shows a page of events, and
/// the scrubber spans the whole history.
#[test]
fn a_run_with_20000_events_opens_and_travels() {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    // 100 steps of 100 attempts (99 transient failures, then success):
    // two events per attempt, written by the engine in this process.
    let mut yaml = String::from(
        "name: big\ndefaults:\n  retry: { max_attempts: 100, initial_backoff: 1ms, max_backoff: 1ms }\nsteps:\n",
    );
    for i in 0..100 {
        yaml.push_str(&format!("  - id: s{i:03}\n    function: flaky\n"));
    }
    let run = rt().block_on(async {
        let engine = chronicle_engine::runtime::EngineBuilder::new()
            .db(env.db())
            .function("flaky", |call| async move {
                if call.attempt < 100 {
                    Err(chronicle_engine::runtime::FunctionError::transient(
                        "not yet",
                    ))
                } else {
                    Ok(json!({"attempt": call.attempt}))
                }
            })
            .build()
            .unwrap();
        let wf = chronicle_engine::model::parse_definition("big.yaml", &yaml).unwrap();
        let run = engine.start(wf, json!({}), None).await.unwrap();
        let state = engine.wait(run).await.unwrap();
        assert_eq!(state.status.as_str(), "succeeded");
        assert!(state.seq.0 >= 20_000, "{}", state.seq.0);
        engine.shutdown().await;
        drop(engine);
        run.to_string()
    });
    let server = env.serve(&[]);
    let login = server.login.clone();
    let url = server.url.clone();
    rt().block_on(async {
        let b = Browser::start().await;
        b.c.goto(&format!("{login}&next=/")).await.unwrap();
        let t = Instant::now();
        b.c.goto(&format!("{url}/runs/{run}")).await.unwrap();
        b.wait("the big run's page", 60, READY).await;
        let interactive = t.elapsed();
        eprintln!(
            "20,000-event run page interactive after {} ms",
            interactive.as_millis()
        );
        let head = b
            .js("return Number(document.querySelector('#scrub').max)")
            .await
            .as_u64()
            .unwrap();
        assert!(head >= 20_000, "{head}");
        assert_eq!(
            b.js("return document.querySelectorAll('#events-body tr.ev').length")
                .await,
            json!(100),
            "one page of events"
        );
        // Time travel to the middle: still interactive.
        let t = Instant::now();
        b.c.goto(&format!("{url}/runs/{run}?at=10000"))
            .await
            .unwrap();
        b.wait("the big run at 10000", 60, READY).await;
        eprintln!(
            "20,000-event run at seq 10000 interactive after {} ms",
            t.elapsed().as_millis()
        );
        let shown = b.js(GRAPH).await;
        let (_, want) = replayed(&env, &run, 10_000);
        assert_eq!(shown, want);
        b.close().await;
    });
    drop(server);
}
