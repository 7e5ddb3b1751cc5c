//! The agents' view (`chronicle agents`, `GET /v1/agents`).

use super::*;

/// The `agents --json` object: every agent the database knows — declared
/// by the newest run of each workflow, or with a stream of its own — with
/// its skills and concurrency (from the newest declaration), the
/// workflows that declare it, its circuit (folded from `agent:NAME`),
/// attempts running on it in this engine, its last health verdict
/// (`{healthy, detail, since}`, or null without a check), and its last
/// transitions (at most 10, newest last).
///
/// Errors: storage errors; a history or agent event that does not decode.
pub fn agents(engine: &Engine) -> Result<Value, Problem> {
    use std::collections::BTreeMap;
    let store = engine.store();
    struct Known {
        skills: Vec<String>,
        concurrency: u32,
        workflows: Vec<String>,
    }
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    // The newest run of each workflow (list_runs is newest first).
    let mut seen = std::collections::BTreeSet::new();
    for row in list_runs(engine, None, None)? {
        if !seen.insert(row.workflow.clone()) {
            continue;
        }
        let Some(first) = store
            .read_stream(&row.run_id.stream(), Seq(1))?
            .into_iter()
            .next()
        else {
            continue;
        };
        let state = fold_envelopes(
            RunState::default(),
            std::slice::from_ref(&first),
            Target::Head,
        )?;
        for (name, agent) in &state.wf().agents {
            let k = known.entry(name.clone()).or_insert_with(|| Known {
                skills: agent.skills.clone(),
                concurrency: agent.concurrency,
                workflows: Vec::new(),
            });
            k.workflows.push(row.workflow.clone());
        }
    }
    let mut streams: BTreeMap<String, Vec<RawEnvelope>> = BTreeMap::new();
    for head in store.streams_with_prefix("agent:")? {
        if let chronicle_store::StreamId::Named(n) = &head.stream
            && let Some(agent) = n.strip_prefix("agent:")
        {
            streams.insert(agent.to_string(), store.read_stream(&head.stream, Seq(1))?);
        }
    }
    let load: BTreeMap<String, u32> = engine.agent_loads().into_iter().collect();
    let mut names: Vec<String> = known.keys().cloned().collect();
    names.extend(streams.keys().filter(|n| !known.contains_key(*n)).cloned());
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut breaker = chronicle_engine::circuit::Breaker::default();
        let mut recent = Vec::new();
        let mut health = Value::Null;
        for env in streams.get(&name).into_iter().flatten() {
            let e: chronicle_engine::event::AgentEvent = env.decode()?;
            breaker.apply(&e);
            if let chronicle_engine::event::AgentEvent::HealthChecked { healthy, detail } = &e {
                health = json!({"healthy": healthy, "detail": detail, "since": env.recorded_at});
            }
            recent.push(json!({"seq": env.seq.0, "at": env.recorded_at, "event": e.name()}));
        }
        let keep = recent.len().saturating_sub(10);
        let recent: Vec<Value> = recent.into_iter().skip(keep).collect();
        let until = match breaker.state {
            chronicle_engine::circuit::CircuitState::Open { until } => Some(until),
            _ => None,
        };
        let k = known.get(&name);
        out.push(json!({
            "name": name,
            "skills": k.map(|k| k.skills.clone()).unwrap_or_default(),
            "concurrency": k.map(|k| k.concurrency),
            "workflows": k.map(|k| k.workflows.clone()).unwrap_or_default(),
            "circuit": {"state": breaker.state.as_str(), "failures": breaker.failures, "open_until": until},
            "load": load.get(&name).copied().unwrap_or(0),
            "health": health,
            "recent": recent,
        }));
    }
    Ok(json!({"agents": out}))
}

/// The text of `chronicle agents` from its JSON object.
pub fn render_agents(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:<9}  {:<9}  {:>4}  {:>8}  {:<28}  WORKFLOWS",
        "AGENT", "CIRCUIT", "HEALTH", "LOAD", "FAILURES", "SKILLS"
    );
    for a in v["agents"].as_array().into_iter().flatten() {
        let list = |k: &str| {
            a[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let health = match a["health"]["healthy"].as_bool() {
            Some(true) => "healthy",
            Some(false) => "failing",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<9}  {:<9}  {:>4}  {:>8}  {:<28}  {}",
            a["name"].as_str().unwrap_or("?"),
            a["circuit"]["state"].as_str().unwrap_or("?"),
            health,
            a["load"].as_u64().unwrap_or(0),
            a["circuit"]["failures"].as_u64().unwrap_or(0),
            list("skills"),
            list("workflows")
        );
    }
    out
}
