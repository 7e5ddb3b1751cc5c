//! Validation of a parsed definition: the graph, executors, templates,
//! durations, limits and sizes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::template::{Ref, refs_in};
use super::{Step, Workflow};

/// At most this many steps in one workflow.
pub const MAX_STEPS: usize = 10_000;
/// At most this many bytes in any one string of a definition (1 MiB).
pub const MAX_STRING_BYTES: usize = 1 << 20;

/// A validation failure: the step it belongs to, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The step, when the problem is in one.
    pub step: Option<String>,
    /// The message.
    pub message: String,
}

fn at(step: &Step, message: impl Into<String>) -> Invalid {
    Invalid {
        step: Some(step.id.to_string()),
        message: message.into(),
    }
}

fn top(message: impl Into<String>) -> Invalid {
    Invalid {
        step: None,
        message: message.into(),
    }
}

/// Control characters and the Unicode text-direction controls (which make
/// a terminal show text other than what it is, e.g. U+202E
/// right-to-left override).
pub fn is_invisible_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Check every rule of the format; the first failure is returned.
///
/// Rules: a non-empty name; 1..=[`MAX_STEPS`] steps; step ids unique and
/// made of letters, digits, `-`, `_`; `needs` name existing steps, not the
/// step itself, without a cycle (the steps of the cycle are named);
/// exactly one of `command`/`shell`/`http`/`function`/`skills` per step and
/// exactly one executor per agent; `skills` non-empty and `command` argv
/// non-empty; templates parse, and `steps.ID` references name upstream
/// steps; `secrets.NAME` references declared secrets; retry limits
/// positive (`max_attempts ≥ 1`, `multiplier ≥ 1`, `initial_backoff ≤
/// max_backoff`); timeouts and cool-downs above zero; agent concurrency
/// and circuit thresholds ≥ 1; every string at most [`MAX_STRING_BYTES`].
pub fn validate(wf: &Workflow) -> Result<(), Invalid> {
    if wf.name.trim().is_empty() {
        return Err(top("name is empty"));
    }
    if let Some(c) = wf.name.chars().find(|c| is_invisible_control(*c)) {
        return Err(top(format!(
            "name contains the control character U+{:04X}; names are printed in terminals and must not hold control or text-direction characters",
            c as u32
        )));
    }
    if wf.steps.is_empty() {
        return Err(top("the workflow has no steps"));
    }
    if wf.steps.len() > MAX_STEPS {
        return Err(top(format!(
            "{} steps; the limit is {MAX_STEPS}",
            wf.steps.len()
        )));
    }
    check_sizes(wf)?;
    for s in &wf.secrets {
        if !valid_name(s) {
            return Err(top(format!(
                "secret name {s:?} must be letters, digits, - or _"
            )));
        }
    }
    if let Some(k) = wf.defaults.quarantine_after_crashes
        && k == 0
    {
        return Err(top("defaults.quarantine_after_crashes must be at least 1"));
    }
    if let Some(t) = wf.defaults.timeout
        && t.ms == 0
    {
        return Err(top("defaults.timeout must be above zero"));
    }
    if let Some(r) = &wf.defaults.retry {
        check_retry(r).map_err(|m| top(format!("defaults.retry: {m}")))?;
    }
    for (name, agent) in &wf.agents {
        if !valid_name(name) {
            return Err(top(format!(
                "agent name {name:?} must be letters, digits, - or _"
            )));
        }
        let n = agent.exec().count();
        if n != 1 {
            return Err(top(format!(
                "agent {name} must have exactly one of command, shell, http, function (has {n})"
            )));
        }
        if agent.skills.is_empty() {
            return Err(top(format!("agent {name} has no skills")));
        }
        if agent.concurrency == 0 {
            return Err(top(format!("agent {name}: concurrency must be at least 1")));
        }
        if let Some(cb) = &agent.circuit_breaker {
            if cb.failure_threshold == 0 {
                return Err(top(format!(
                    "agent {name}: circuit_breaker.failure_threshold must be at least 1"
                )));
            }
            if cb.cool_down.ms == 0 {
                return Err(top(format!(
                    "agent {name}: circuit_breaker.cool_down must be above zero"
                )));
            }
        }
        if let Some(c) = &agent.command
            && c.is_empty()
        {
            return Err(top(format!("agent {name}: command is an empty argv list")));
        }
        if let Some(h) = &agent.health {
            let n = usize::from(h.command.is_some())
                + usize::from(h.shell.is_some())
                + usize::from(h.http.is_some());
            if n != 1 {
                return Err(top(format!(
                    "agent {name}: health must have exactly one of command, shell, http (has {n})"
                )));
            }
            if h.command.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(top(format!(
                    "agent {name}: health.command is an empty argv list"
                )));
            }
            if let Some(u) = &h.http
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(top(format!(
                    "agent {name}: health.http {u:?} must start with http:// or https://"
                )));
            }
            if h.interval.ms == 0 || h.timeout.ms == 0 {
                return Err(top(format!(
                    "agent {name}: health.interval and health.timeout must be above zero"
                )));
            }
        }
    }
    let mut ids = BTreeSet::new();
    for s in &wf.steps {
        if !valid_name(&s.id) {
            return Err(at(s, "step id must be 1-128 letters, digits, - or _"));
        }
        if !ids.insert(s.id.as_str()) {
            return Err(at(s, "duplicate step id"));
        }
    }
    for s in &wf.steps {
        check_step(wf, s, &ids)?;
    }
    let order = topo_order(wf)?;
    check_templates(wf, &order)?;
    Ok(())
}

fn check_retry(r: &super::RetryPolicy) -> Result<(), String> {
    if r.max_attempts == 0 {
        return Err("max_attempts must be at least 1".into());
    }
    if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
        return Err(format!(
            "multiplier must be a number ≥ 1, got {}",
            r.multiplier
        ));
    }
    if r.initial_backoff > r.max_backoff {
        return Err(format!(
            "initial_backoff {} is larger than max_backoff {}",
            r.initial_backoff, r.max_backoff
        ));
    }
    Ok(())
}

fn check_step(wf: &Workflow, s: &Step, ids: &BTreeSet<&str>) -> Result<(), Invalid> {
    let n = s.exec().count() + usize::from(s.skills.is_some()) + s.wait_count();
    if n == 0 {
        return Err(at(
            s,
            "no executor: set one of command, shell, http, function, workflow, workflow_name or skills (or a wait: sleep, sleep_until, signal, approval)",
        ));
    }
    if n > 1 {
        return Err(at(
            s,
            "more than one executor: set only one of command, shell, http, function, workflow, workflow_name, skills, sleep, sleep_until, signal or approval",
        ));
    }
    if let Some(c) = &s.completion {
        if s.http.is_none() {
            return Err(at(s, "completion applies to http steps"));
        }
        match c {
            super::Completion::Named(n) if n == "callback" => {}
            super::Completion::Named(other) => {
                return Err(at(
                    s,
                    format!(
                        "completion {other:?} is not known: use callback, or {{ poll: {{ url, every }} }}"
                    ),
                ));
            }
            super::Completion::Poll { poll } => {
                if !(poll.url.starts_with("http://")
                    || poll.url.starts_with("https://")
                    || poll.url.starts_with("${{"))
                {
                    return Err(at(
                        s,
                        format!(
                            "poll.url {:?} must start with http:// or https://",
                            poll.url
                        ),
                    ));
                }
                if poll.every.ms == 0 {
                    return Err(at(s, "poll.every must be more than 0"));
                }
            }
        }
    }
    if let Some(name) = &s.callback_secret {
        if !s
            .completion
            .as_ref()
            .is_some_and(super::Completion::is_callback)
        {
            return Err(at(s, "callback_secret needs completion: callback"));
        }
        if !wf.secrets.contains(name) {
            return Err(at(
                s,
                format!("callback_secret {name:?} is not one of the workflow's secrets"),
            ));
        }
    }
    if s.child.is_some() && s.workflow.is_none() && s.workflow_name.is_none() {
        return Err(at(
            s,
            "child is filled from workflow or workflow_name when the definition is loaded; set one of them",
        ));
    }
    if let Some(w) = &s.workflow
        && w.trim().is_empty()
    {
        return Err(at(s, "workflow must name a definition file"));
    }
    if let Some(t) = &s.sleep_until
        && chrono::DateTime::parse_from_rfc3339(t).is_err()
    {
        return Err(at(
            s,
            format!("sleep_until {t:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z"),
        ));
    }
    if let Some(name) = &s.signal
        && (name.is_empty() || name.chars().any(|c| c.is_control() || c == '/'))
    {
        return Err(at(
            s,
            "signal must be a non-empty name without control characters or '/'",
        ));
    }
    if let Some(a) = &s.approval {
        if a.min_approvals == 0 {
            return Err(at(s, "approval.min_approvals must be at least 1"));
        }
        if !a.approvers.is_empty() && a.min_approvals as usize > a.approvers.len() {
            return Err(at(
                s,
                format!(
                    "approval.min_approvals is {} but only {} approver(s) are listed",
                    a.min_approvals,
                    a.approvers.len()
                ),
            ));
        }
    }
    if s.wait_count() > 0 && (s.at_most_once || s.retry.is_some()) {
        return Err(at(
            s,
            "a waiting step (sleep, sleep_until, signal, approval) runs nothing: retry and at_most_once do not apply",
        ));
    }
    if let Some(c) = &s.command
        && (c.is_empty() || c[0].is_empty())
    {
        return Err(at(s, "command is an empty argv list"));
    }
    if let Some(h) = &s.http
        && !(h.url.starts_with("http://") || h.url.starts_with("https://"))
    {
        return Err(at(
            s,
            format!("http.url {:?} must start with http:// or https://", h.url),
        ));
    }
    if let Some(sk) = &s.skills
        && (sk.is_empty() || sk.iter().any(String::is_empty))
    {
        return Err(at(s, "skills must list at least one non-empty skill"));
    }
    for d in &s.needs {
        if d == &s.id {
            return Err(at(s, "needs itself"));
        }
        if !ids.contains(d.as_str()) {
            return Err(at(s, format!("needs unknown step {d}")));
        }
    }
    let mut seen = BTreeSet::new();
    for d in &s.needs {
        if !seen.insert(d) {
            return Err(at(s, format!("needs {d} twice")));
        }
    }
    if let Some(r) = &s.retry {
        check_retry(r).map_err(|m| at(s, format!("retry: {m}")))?;
    }
    if let Some(t) = s.timeout
        && t.ms == 0
    {
        return Err(at(s, "timeout must be above zero"));
    }
    if s.skills.is_some() && s.strategy.is_none() && wf.defaults.strategy.is_none() {
        // default strategy `first` applies; nothing to check
    }
    if s.skills.is_none() && s.strategy.is_some() {
        return Err(at(s, "strategy applies only to skills steps"));
    }
    Ok(())
}

/// Kahn's algorithm; on a cycle, name the steps on it.
fn topo_order(wf: &Workflow) -> Result<Vec<String>, Invalid> {
    let mut indeg: BTreeMap<&str, usize> = wf
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.needs.len()))
        .collect();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &wf.steps {
        for d in &s.needs {
            dependents
                .entry(d.as_str())
                .or_default()
                .push(s.id.as_str());
        }
    }
    let mut ready: Vec<&str> = wf
        .steps
        .iter()
        .filter(|s| s.needs.is_empty())
        .map(|s| s.id.as_str())
        .collect();
    let mut order = Vec::new();
    while let Some(id) = ready.pop() {
        order.push(id.to_string());
        for &d in dependents.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            let e = indeg.get_mut(d).expect("every step has an in-degree");
            *e -= 1;
            if *e == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == wf.steps.len() {
        return Ok(order);
    }
    // Walk `needs` from a remaining step until a step repeats: that is a cycle.
    let left: BTreeSet<&str> = indeg
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, _)| *k)
        .collect();
    let start = *left.iter().next().expect("a cycle leaves steps");
    let mut path: Vec<&str> = vec![start];
    let mut cur = start;
    loop {
        let step = wf.step(cur).expect("ids are known");
        let next = step
            .needs
            .iter()
            .map(|d| d.as_str())
            .find(|d| left.contains(d))
            .expect("a step on a cycle needs one");
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<&str> = path[i..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return Err(Invalid {
                step: Some(cycle[0].to_string()),
                message: format!("dependency cycle: {}", cycle.join(" -> ")),
            });
        }
        path.push(next);
        cur = next;
    }
}

/// The steps `id` depends on, directly or transitively.
pub(crate) fn upstream(wf: &Workflow, id: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<&str> = wf
        .step(id)
        .map(|s| s.needs.iter().map(|d| d.as_str()).collect())
        .unwrap_or_default();
    while let Some(d) = todo.pop() {
        if out.insert(d.to_string())
            && let Some(s) = wf.step(d)
        {
            todo.extend(s.needs.iter().map(|d| d.as_str()));
        }
    }
    out
}

fn check_templates(wf: &Workflow, _order: &[String]) -> Result<(), Invalid> {
    let declared: BTreeSet<&str> = wf.secrets.iter().map(|d| d.as_str()).collect();
    for s in &wf.steps {
        let mut values: Vec<&Value> = s.with.values().collect();
        let body;
        if let Some(h) = &s.http {
            if let Some(b) = &h.body {
                values.push(b);
            }
            body = Value::Array(
                std::iter::once(Value::String(h.url.clone()))
                    .chain(h.headers.values().cloned().map(Value::String))
                    .collect(),
            );
            values.push(&body);
        }
        let up = upstream(wf, &s.id);
        for v in values {
            for r in refs_in(v).map_err(|m| at(s, m))? {
                match r {
                    Ref::Step(id, _) if wf.step(&id).is_none() => {
                        return Err(at(s, format!("template references unknown step {id}")));
                    }
                    Ref::Step(id, _) if !up.contains(&id) => {
                        return Err(at(
                            s,
                            format!(
                                "template references step {id}, which is not upstream (add it to needs)"
                            ),
                        ));
                    }
                    Ref::Secret(name) if !declared.contains(name.as_str()) => {
                        return Err(at(
                            s,
                            format!(
                                "template references undeclared secret {name} (list it under secrets)"
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    for (name, v) in &wf.outputs {
        if !valid_name(name) {
            return Err(top(format!(
                "output name {name:?} must be letters, digits, - or _"
            )));
        }
        for r in refs_in(v).map_err(|m| top(format!("outputs.{name}: {m}")))? {
            match r {
                Ref::Step(id, _) if wf.step(&id).is_none() => {
                    return Err(top(format!(
                        "outputs.{name}: template references unknown step {id}"
                    )));
                }
                Ref::Secret(s) => {
                    return Err(top(format!(
                        "outputs.{name}: references secret {s}; outputs are shown and must not hold secrets"
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn check_sizes(wf: &Workflow) -> Result<(), Invalid> {
    let v = serde_json::to_value(wf).map_err(|e| top(e.to_string()))?;
    fn walk(v: &Value) -> Option<usize> {
        match v {
            Value::String(s) if s.len() > MAX_STRING_BYTES => Some(s.len()),
            Value::Array(a) => a.iter().find_map(walk),
            Value::Object(m) => m.iter().find_map(|(k, x)| {
                if k.len() > MAX_STRING_BYTES {
                    Some(k.len())
                } else {
                    walk(x)
                }
            }),
            _ => None,
        }
    }
    match walk(&v) {
        Some(n) => Err(top(format!(
            "a string of {n} bytes; the limit is {MAX_STRING_BYTES} (1 MiB)"
        ))),
        None => Ok(()),
    }
}
