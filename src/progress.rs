//! Live progress: on a terminal, one line per step with its status,
//! attempt and elapsed time (indicatif); otherwise one plain line per
//! committed event.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use chronicle_engine::event::{AgentEvent, RunEvent};
use chronicle_store::RawEnvelope;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{broadcast, oneshot};

/// A running progress printer.
pub struct Progress {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Print what `feed` delivers until [`Progress::finish`].
    pub fn start(feed: broadcast::Receiver<Arc<[RawEnvelope]>>, quiet: bool) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(print_loop(feed, stop_rx, tty, quiet));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Print what is still queued and stop.
    pub async fn finish(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
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

async fn print_loop(
    mut feed: broadcast::Receiver<Arc<[RawEnvelope]>>,
    mut stop: oneshot::Receiver<()>,
    tty: bool,
    quiet: bool,
) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {prefix:<28} {msg} [{elapsed}]")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut bars: HashMap<(String, String), ProgressBar> = HashMap::new();
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
                        eprintln!("(progress skipped {n} commits)");
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
        for env in batch.iter() {
            if !tty {
                let mut out = std::io::stderr().lock();
                let _ = writeln!(out, "{}", describe(env));
                continue;
            }
            let Ok(ev) = env.decode::<RunEvent>() else {
                multi.println(describe(env)).ok();
                continue;
            };
            let run = env.stream.to_string();
            let Some(step) = ev.step().map(str::to_string) else {
                multi.println(describe(env)).ok();
                continue;
            };
            let bar = bars.entry((run.clone(), step.clone())).or_insert_with(|| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(format!("{} {step}", short(&run)));
                b.enable_steady_tick(Duration::from_millis(120));
                b
            });
            match &ev {
                RunEvent::StepStarted { attempt, .. } => {
                    bar.reset_elapsed();
                    bar.set_message(format!("running  attempt {attempt}"));
                }
                RunEvent::StepSucceeded { attempt, .. } => {
                    bar.finish_with_message(format!("succeeded attempt {attempt}"))
                }
                RunEvent::StepFailed {
                    attempt,
                    kind,
                    next_retry_at: Some(_),
                    ..
                } => bar.set_message(format!(
                    "retrying attempt {attempt} failed ({})",
                    kind.as_str()
                )),
                RunEvent::StepFailed { attempt, kind, .. } => bar
                    .finish_with_message(format!("failed   attempt {attempt} ({})", kind.as_str())),
                RunEvent::StepSkipped { reason, .. } => {
                    bar.finish_with_message(format!("skipped  {reason}"))
                }
                RunEvent::StepUnassigned {
                    reason,
                    blocked: false,
                    ..
                } => bar.finish_with_message(format!("unassigned {reason}")),
                RunEvent::StepUnassigned {
                    reason,
                    blocked: true,
                    ..
                } => bar.set_message(format!("blocked  {reason}")),
                RunEvent::StepAbandoned { attempt, .. } => {
                    bar.set_message(format!("abandoned attempt {attempt}"))
                }
                _ => {}
            }
        }
    }
    for b in bars.values() {
        if !b.is_finished() {
            b.abandon();
        }
    }
}
