//! Agent health checks: an agent may declare `health` (a command, a
//! script or a URL, every `interval`). The engine runs one check loop per
//! agent while it lives, started when the first run that declares the
//! agent is executed. A verdict is recorded on the agent's stream when it
//! changes (`HealthChecked`, and at the first check); a failing check
//! opens the agent's circuit for its cool-down (`CircuitOpened`), so its
//! steps wait or go to other agents; the circuit then half-opens and one
//! probe attempt decides, as after failed attempts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::event::AgentEvent;
use crate::model::{HealthCheck, Workflow};

use super::shared::Inner;

/// Start the check loop of every agent of `wf` that declares a health
/// check and has none running in this engine.
pub(crate) fn ensure_loops(inner: &Arc<Inner>, wf: &Workflow) {
    if inner.store.is_read_only() {
        return;
    }
    for (name, agent) in &wf.agents {
        let Some(check) = &agent.health else { continue };
        let fresh = inner
            .health_loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        if !fresh {
            continue;
        }
        let cool_down = agent
            .circuit_breaker
            .as_ref()
            .map(|c| c.cool_down.ms)
            .unwrap_or(30_000);
        tokio::spawn(check_loop(
            Arc::downgrade(inner),
            name.clone(),
            check.clone(),
            chrono::TimeDelta::milliseconds(cool_down as i64),
        ));
    }
}

async fn check_loop(
    engine: Weak<Inner>,
    agent: String,
    check: HealthCheck,
    cool_down: chrono::TimeDelta,
) {
    let mut last: Option<bool> = None;
    loop {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let (healthy, detail) = probe(&inner, &check).await;
        let now = inner.clock.peek();
        let mut events = Vec::new();
        if last != Some(healthy) {
            events.push(AgentEvent::HealthChecked {
                healthy,
                detail: detail.clone(),
            });
        }
        if !healthy {
            events.extend(
                inner
                    .capacity
                    .with_breaker(&agent, |b| b.on_health_failed(now, cool_down)),
            );
        }
        if let Err(e) = inner.append_agent(&agent, events).await {
            tracing::warn!(agent = %agent, error = %e, "cannot record a health check");
        }
        last = Some(healthy);
        drop(inner);
        tokio::time::sleep(Duration::from_millis(check.interval.ms)).await;
    }
}

/// Run `check` once: `(healthy, what it found)`.
async fn probe(inner: &Inner, check: &HealthCheck) -> (bool, String) {
    let timeout = Duration::from_millis(check.timeout.ms);
    if let Some(url) = &check.http {
        let client = match inner.http.get() {
            Ok(c) => c,
            Err(e) => return (false, format!("no HTTP client: {e}")),
        };
        return match tokio::time::timeout(timeout, client.get(url).send()).await {
            Err(_) => (
                false,
                format!("GET {url} took longer than {} ms", check.timeout.ms),
            ),
            Ok(Err(e)) => (false, format!("GET {url} failed: {e}")),
            Ok(Ok(r)) if r.status().is_success() => (true, format!("GET {url}: {}", r.status())),
            Ok(Ok(r)) => (false, format!("GET {url}: {}", r.status())),
        };
    }
    let mut cmd = match (&check.command, &check.shell) {
        (Some(argv), _) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        (None, Some(script)) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
        (None, None) => return (false, "no check declared".into()),
    };
    cmd.current_dir(&inner.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.status()).await {
        Err(_) => (
            false,
            format!("the check took longer than {} ms", check.timeout.ms),
        ),
        Ok(Err(e)) => (false, format!("the check cannot start: {e}")),
        Ok(Ok(s)) if s.success() => (true, "exit 0".into()),
        Ok(Ok(s)) => (false, format!("exited with {s}")),
    }
}
