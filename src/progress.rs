//! Live progress: on a terminal, one line per step with its status,
//! attempt and elapsed time (indicatif); otherwise one plain line per
//! committed event.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use chronicle_engine::event::{AgentEvent, RunEvent};
use chronicle_replay::render::fit;
use chronicle_store::RawEnvelope;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{broadcast, oneshot};

/// A running progress printer.
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The live lines, on a terminal (not with `--quiet`).
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Print what `feed` delivers until [`Progress::finish`].
    pub fn start(feed: broadcast::Receiver<Arc<[RawEnvelope]>>, quiet: bool) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let tty = std::io::stderr().is_terminal();
        let multi =
            (tty && !quiet).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        let task = tokio::spawn(print_loop(feed, stop_rx, multi.clone(), quiet));
        Self {
            stop: Some(stop),
            task: Some(task),
            multi,
        }
    }

    /// Print a line above the live lines (plainly when there are none).
    pub fn line(&self, text: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Print what is still queued and stop; the live lines are cleared (the
    /// summary that follows is what stays on screen).
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

/// A live line's message, cut so the line fits 80 columns.
fn fit46(s: String) -> String {
    fit(&s, 46)
}

fn short(run: &str) -> &str {
    run.get(..8).unwrap_or(run)
}

/// One plain line for an event.
pub fn describe(env: &RawEnvelope) -> String {
    let stream = env.stream.to_string();
    let head = format!(
        "{} {} {:>4}",
        env.recorded_at.format("%H:%M:%S%.3f"),
        stream,
        env.seq
    );
    if let Ok(ev) = env.decode::<RunEvent>() {
        let detail = match &ev {
            RunEvent::RunCreated { workflow, .. } => format!("workflow {}", workflow.name),
            RunEvent::RunForked { lineage, .. } => {
                format!("from {} at seq {}", lineage.forked_from, lineage.at_seq)
            }
            RunEvent::StepAssigned { step, agent, .. } => format!("{step} -> agent {agent}"),
            RunEvent::StepUnassigned { step, reason, .. } => format!("{step}: {reason}"),
            RunEvent::StepStarted {
                step,
                attempt,
                agent,
                ..
            } => {
                format!(
                    "{step} attempt {attempt}{}",
                    agent
                        .as_ref()
                        .map(|a| format!(" on {a}"))
                        .unwrap_or_default()
                )
            }
            RunEvent::StepSucceeded {
                step,
                attempt,
                duration_ms,
                ..
            } => format!("{step} attempt {attempt} in {duration_ms} ms"),
            RunEvent::StepFailed {
                step,
                attempt,
                kind,
                message,
                next_retry_at,
                ..
            } => format!(
                "{step} attempt {attempt} {}: {message}{}",
                kind.as_str(),
                next_retry_at
                    .map(|t| format!(" (retry at {})", t.format("%H:%M:%S%.3f")))
                    .unwrap_or_default()
            ),
            RunEvent::StepAbandoned { step, attempt, .. } => {
                format!("{step} attempt {attempt} abandoned")
            }
            RunEvent::StepSkipped { step, reason } => format!("{step}: {reason}"),
            RunEvent::ChildRunStarted {
                step, child_run_id, ..
            } => format!("{step} child run {child_run_id}"),
            RunEvent::CallbackIssued { step, .. } => format!("{step} callback issued"),
            RunEvent::CallbackAccepted { step, .. } => {
                format!("{step} accepted; waits for the callback")
            }
            RunEvent::CallbackReceived { step, .. } => format!("{step} callback received"),
            RunEvent::PollStarted { step, url, .. } => format!("{step} accepted; polls {url}"),
            RunEvent::TimerStarted { step, fire_at, .. } => {
                format!("{step} sleeps until {}", fire_at.to_rfc3339())
            }
            RunEvent::TimerFired { step, .. } => format!("{step} timer fired"),
            RunEvent::SignalAwaited { step, name, .. } => {
                format!("{step} waits for signal {name}")
            }
            RunEvent::SignalReceived { name, id, .. } => format!("signal {name} (id {id})"),
            RunEvent::ApprovalRequested {
                step,
                approvers,
                min_approvals,
                ..
            } => format!(
                "{step} waits for {min_approvals} approval(s){}",
                if approvers.is_empty() {
                    String::new()
                } else {
                    format!(" from {}", approvers.join(", "))
                }
            ),
            RunEvent::ApprovalDecided {
                step,
                by,
                decision,
                comment,
                ..
            } => format!(
                "{step}: {} by {by}{}",
                decision.as_str(),
                comment
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            RunEvent::RunQuarantined { reason, .. } => reason.clone(),
            RunEvent::RunFailed { reason } => reason.clone(),
            RunEvent::RunCancelRequested { reason } => reason.clone(),
            RunEvent::RunStarted {}
            | RunEvent::RunPaused {}
            | RunEvent::RunResumed {}
            | RunEvent::RunCanceled {}
            | RunEvent::RunReleased {}
            | RunEvent::RunSucceeded {} => String::new(),
        };
        format!("{head} {:<16} {detail}", ev.name())
            .trim_end()
            .to_string()
    } else if let Ok(ev) = env.decode::<AgentEvent>() {
        format!("{head} {}", ev.name())
    } else {
        format!("{head} (undecodable event)")
    }
}

/// Live lines on a terminal: one per run (status, steps done) and one per
/// step (status, attempt, time), fitted to the terminal's width; no line
/// per event. Elsewhere one plain line per event.
async fn print_loop(
    mut feed: broadcast::Receiver<Arc<[RawEnvelope]>>,
    mut stop: oneshot::Receiver<()>,
    multi: Option<MultiProgress>,
    quiet: bool,
) {
    // 1 + 1 + 26 + 1 + 4 + 1 + MSG columns: 80 with a message of 46.
    let step_style = ProgressStyle::with_template("{spinner} {prefix:<26} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_strings(&["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", " "]);
    let run_style = ProgressStyle::with_template("{prefix:<28} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<(String, String), ProgressBar> = HashMap::new();
    // Per run: its line, steps in the workflow, steps ended.
    let mut runs: HashMap<String, (ProgressBar, usize, usize)> = HashMap::new();
    let mut stopping = false;
    loop {
        let batch = if stopping {
            match feed.try_recv() {
                Ok(b) => b,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = feed.recv() => match r {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if multi.is_none() && !quiet {
                            eprintln!("(progress skipped {n} commits)");
                        }
                        continue;
                    }
                    Err(_) => break,
                },
                _ = &mut stop => { stopping = true; continue; }
            }
        };
        if quiet {
            continue;
        }
        let Some(multi) = &multi else {
            let mut out = std::io::stderr().lock();
            for env in batch.iter() {
                let _ = writeln!(out, "{}", describe(env));
            }
            continue;
        };
        for env in batch.iter() {
            let Ok(ev) = env.decode::<RunEvent>() else {
                continue; // agent streams: shown by the steps they block
            };
            let run = env.stream.to_string();
            let (run_bar, total, ended) = runs.entry(run.clone()).or_insert_with(|| {
                let b = multi.insert(0, ProgressBar::new_spinner());
                b.set_style(run_style.clone());
                b.set_prefix(format!("run {}", short(&run)));
                b.enable_steady_tick(Duration::from_millis(250));
                (b, 0, 0)
            });
            match &ev {
                RunEvent::RunCreated { workflow, .. } => {
                    *total = workflow.steps.len();
                    run_bar.set_prefix(fit(&format!("run {} {}", short(&run), workflow.name), 28));
                }
                RunEvent::StepSucceeded { .. }
                | RunEvent::StepSkipped { .. }
                | RunEvent::StepFailed {
                    next_retry_at: None,
                    ..
                }
                | RunEvent::StepUnassigned { blocked: false, .. } => *ended += 1,
                _ => {}
            }
            let ends_run = matches!(
                ev,
                RunEvent::RunSucceeded {} | RunEvent::RunFailed { .. } | RunEvent::RunCanceled {}
            );
            if ends_run || matches!(ev, RunEvent::RunQuarantined { .. }) {
                run_bar.finish_with_message(ev.name().to_string());
            } else if !run_bar.is_finished() {
                run_bar.set_message(fit46(format!(
                    "{ended}/{total} steps ended",
                    total = (*total).max(*ended)
                )));
            }
            let Some(step) = ev.step().map(str::to_string) else {
                continue;
            };
            let bar = bars.entry((run.clone(), step.clone())).or_insert_with(|| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(step_style.clone());
                b.set_prefix(fit(&step, 26));
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            match &ev {
                RunEvent::StepStarted { attempt, .. } => {
                    bar.reset_elapsed();
                    bar.set_message(fit46(format!("running, attempt {attempt}")));
                }
                RunEvent::StepSucceeded { attempt, .. } => {
                    bar.finish_with_message(fit46(format!("succeeded, attempt {attempt}")))
                }
                RunEvent::StepFailed {
                    attempt,
                    kind,
                    next_retry_at: Some(_),
                    ..
                } => bar.set_message(fit46(format!(
                    "retrying: attempt {attempt} failed ({})",
                    kind.as_str()
                ))),
                RunEvent::StepFailed { attempt, kind, .. } => bar.finish_with_message(fit46(
                    format!("failed, attempt {attempt} ({})", kind.as_str()),
                )),
                RunEvent::StepSkipped { reason, .. } => {
                    bar.finish_with_message(fit46(format!("skipped: {reason}")))
                }
                RunEvent::StepUnassigned {
                    reason,
                    blocked: false,
                    ..
                } => bar.finish_with_message(fit46(format!("unassigned: {reason}"))),
                RunEvent::StepUnassigned {
                    reason,
                    blocked: true,
                    ..
                } => bar.set_message(fit46(format!("blocked: {reason}"))),
                RunEvent::StepAbandoned { attempt, .. } => {
                    bar.set_message(fit46(format!("attempt {attempt} cut off")))
                }
                _ => {}
            }
        }
    }
    for b in bars.values().chain(runs.values().map(|r| &r.0)) {
        if !b.is_finished() {
            b.abandon();
        }
    }
}
