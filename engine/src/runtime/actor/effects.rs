//! Performing a run's effects: the attempts its state asks for are
//! started (commands, HTTP calls, functions, agents; polls and child runs)
//! and the ones it no longer wants are killed; the next timer is set.

use super::*;

impl RunActor {
    /// Start and kill attempts as the state asks; returns the next timer
    /// and whether the run waits for capacity (ready or blocked steps).
    pub(super) fn perform_effects(&mut self) -> (Option<chrono::DateTime<chrono::Utc>>, bool) {
        let mut timer: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut wanted = std::collections::HashSet::new();
        for fx in effects(&self.state) {
            match fx {
                Effect::Run(sa) => {
                    wanted.insert((sa.step.clone(), sa.attempt));
                    if !self.live.contains_key(&(sa.step.clone(), sa.attempt)) {
                        self.spawn_attempt(*sa);
                    }
                }
                Effect::Kill { step, attempt } => {
                    if let Some(l) = self.live.get_mut(&(step, attempt))
                        && let Some(k) = l.kill.take()
                    {
                        let _ = k.send(());
                    }
                }
                Effect::Timer(t) => timer = Some(timer.map_or(t, |x| x.min(t))),
                Effect::Poll {
                    step,
                    attempt,
                    url,
                    every_ms,
                } => {
                    wanted.insert((step.clone(), attempt));
                    if !self.live.contains_key(&(step.clone(), attempt)) {
                        self.spawn_poll(step, attempt, url, every_ms);
                    }
                }
            }
        }
        for (key, l) in self.live.iter_mut() {
            if !wanted.contains(key)
                && let Some(k) = l.kill.take()
            {
                tracing::info!(step_id = %key.0, attempt = key.1, "killing an attempt the state no longer runs");
                let _ = k.send(());
            }
        }
        // Breakers that will half-open wake blocked runs.
        for (_, until) in self.engine.capacity.open_until() {
            timer = Some(timer.map_or(until, |x| x.min(until)));
        }
        let waiting = self.state.status == RunStatus::Running
            && self
                .state
                .steps
                .values()
                .any(|s| matches!(s.status, StepStatus::Ready | StepStatus::Blocked));
        (timer, waiting)
    }

    /// Poll for a `completion: { poll }` step's attempt until its URL
    /// answers a terminal state; the result comes back as the attempt's.
    fn spawn_poll(&mut self, step: crate::ids::StepId, attempt: u32, url: String, every_ms: u64) {
        let (kill_tx, kill_rx) = oneshot::channel();
        self.live.insert(
            (step.clone(), attempt),
            Live {
                kill: Some(kill_tx),
            },
        );
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result =
                crate::runtime::exec::http::poll_until_terminal(&url, every_ms, kill_rx).await;
            let _ = tx.send(Msg::Done {
                step,
                attempt,
                agent: None,
                result,
            });
        });
    }

    /// Start a `workflow:` step's attempt: its child run.
    fn spawn_child(&mut self, sa: StartAttempt) {
        let run_id = self.run_id();
        let (kill_tx, kill_rx) = oneshot::channel();
        self.live.insert(
            (sa.step.clone(), sa.attempt),
            Live {
                kill: Some(kill_tx),
            },
        );
        let engine = crate::runtime::engine::Engine {
            inner: self.engine.clone(),
        };
        let tx = self.tx.clone();
        let trace = self.state.trace_id.clone();
        tokio::spawn(async move {
            let result =
                crate::runtime::child::run_child(engine, run_id, &sa, trace, &tx, kill_rx).await;
            let _ = tx.send(Msg::Done {
                step: sa.step,
                attempt: sa.attempt,
                agent: sa.agent,
                result,
            });
        });
    }

    fn spawn_attempt(&mut self, sa: StartAttempt) {
        if sa.exec.workflow.is_some() || sa.exec.workflow_name.is_some() {
            return self.spawn_child(sa);
        }
        let run_id = self.run_id();
        let secrets = self.secrets.map();
        let mut exec = sa.exec.clone();
        if let Some(h) = exec.http.as_mut() {
            let outputs = self.state.outputs();
            let run_text = run_id.to_string();
            let scope = Scope {
                run_id: &run_text,
                input: &self.state.input,
                outputs: &outputs,
            };
            let resolve_s = |s: &str| -> String {
                match resolve(&Value::String(s.to_string()), &scope)
                    .map(|v| substitute_secrets(&v, &secrets))
                {
                    Ok(Value::String(t)) => t,
                    Ok(other) => other.to_string(),
                    Err(_) => s.to_string(),
                }
            };
            h.url = resolve_s(&h.url);
            for v in h.headers.values_mut() {
                *v = resolve_s(v);
            }
            if let Some(b) = &h.body {
                h.body = Some(
                    resolve(b, &scope)
                        .map(|v| substitute_secrets(&v, &secrets))
                        .unwrap_or_else(|_| b.clone()),
                );
            }
        }
        let workdir = match &sa.workdir {
            Some(w) => self.engine.workdir.join(w),
            None => self.engine.workdir.clone(),
        };
        let mut req = AttemptRequest {
            hidden_env: self.state.wf().secrets.clone(),
            run_id,
            step: sa.step.clone(),
            attempt: sa.attempt,
            idempotency_key: sa.idempotency_key.clone(),
            traceparent: None,
            input: substitute_secrets(&sa.input, &secrets),
            exec,
            deadline: sa.deadline,
            workdir,
            env: sa
                .env
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        substitute_secrets(&Value::String(v.clone()), &secrets)
                            .as_str()
                            .unwrap_or(v)
                            .to_string(),
                    )
                })
                .collect(),
        };
        // A `completion: callback` step: draw the one-time token, tell the
        // service where to call back, and record the token's hash (durably,
        // before the request leaves) — see `callback_issue` below.
        let callback = if sa
            .exec
            .completion
            .as_ref()
            .is_some_and(crate::model::Completion::is_callback)
        {
            match self.engine.callback_base.get() {
                Some(base) => {
                    let token = format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    );
                    let url = format!("{base}/v1/callbacks/{token}");
                    if let Some(h) = req.exec.http.as_mut() {
                        h.headers
                            .insert("Chronicle-Callback-Url".into(), url.clone());
                        let mut body = h.body.clone().unwrap_or_else(|| req.input.clone());
                        if let Some(o) = body.as_object_mut() {
                            o.insert("callback_url".into(), Value::String(url));
                            h.body = Some(body);
                        }
                    }
                    Some(Ok(crate::runtime::waits::token_sha256(&token)))
                }
                None => Some(Err(())),
            }
        } else {
            None
        };
        let (kill_tx, kill_rx) = oneshot::channel();
        self.live.insert(
            (sa.step.clone(), sa.attempt),
            Live {
                kill: Some(kill_tx),
            },
        );
        let dispatcher = self.engine.dispatcher(self.secrets.clone());
        let tx = self.tx.clone();
        let span = tracing::info_span!(
            "attempt",
            run_id = %run_id,
            step_id = %sa.step,
            attempt = sa.attempt,
            agent = sa.agent.as_deref().unwrap_or(""),
            outcome = tracing::field::Empty,
        );
        req.traceparent = Some(crate::runtime::trace::traceparent(
            &span,
            run_id,
            self.state.trace_id.as_deref(),
            sa.step.as_str(),
            sa.attempt,
        ));
        tokio::spawn(
            async move {
                tracing::debug!("attempt started");
                let result = match callback {
                    None => dispatcher.run(req, kill_rx).await,
                    Some(Err(())) => failed(
                        "a completion: callback step needs `chronicle serve`: its callback URL is served there",
                    ),
                    Some(Ok(sha)) => {
                        let (reply, issued) = oneshot::channel();
                        let _ = tx.send(Msg::Control(
                            Command::CallbackIssued {
                                step: sa.step.clone(),
                                attempt: sa.attempt,
                                token_sha256: sha,
                            },
                            reply,
                        ));
                        match issued.await {
                            Ok(Ok(())) => dispatcher.run(req, kill_rx).await,
                            _ => failed("the callback token could not be recorded"),
                        }
                    }
                };
                let outcome = match &result {
                    AttemptResult::Succeeded { .. } => "succeeded",
                    AttemptResult::Failed { kind, .. } => kind.as_str(),
                };
                tracing::Span::current().record("outcome", outcome);
                tracing::debug!(
                    ok = matches!(result, AttemptResult::Succeeded { .. }),
                    "attempt ended"
                );
                let _ = tx.send(Msg::Done {
                    step: sa.step,
                    attempt: sa.attempt,
                    agent: sa.agent,
                    result,
                });
            }
            .instrument(span),
        );
    }
}

/// An attempt that failed before anything was sent (permanent).
fn failed(message: &str) -> AttemptResult {
    AttemptResult::Failed {
        kind: crate::model::ErrorKind::Permanent,
        message: message.to_string(),
        exit_code: None,
        http_status: None,
        duration_ms: 0,
        stderr: None,
    }
}
