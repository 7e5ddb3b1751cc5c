//! `chronicle signal|approve|reject`: from outside into waiting steps, on
//! the database file or through the server that holds it. Each prints and
//! exits alike either way.

use std::path::Path;

use chronicle_engine::decide::Command;
use chronicle_engine::event::ApprovalDecision;
use chronicle_engine::state::RunState;
use chronicle_server::Method;
use chronicle_server::client::{Client, percent_encode};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::runs::{Control, control_state};

/// A signal to send.
pub struct SignalArgs {
    name: String,
    id: String,
    data: Value,
}

/// Check `signal`'s arguments: a name, `--data` as JSON, `--id` (default:
/// a new UUID). Errors: exit 2 naming the bad argument.
pub fn signal_args(
    name: &str,
    data: Option<String>,
    id: Option<String>,
) -> Result<SignalArgs, CliError> {
    check_name("the signal's name", name)?;
    let data = match data {
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| CliError::input(format!("--data is not JSON: {e}")))?,
        None => Value::Null,
    };
    let id = match id {
        Some(i) => {
            check_name("--id", &i)?;
            i
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    Ok(SignalArgs {
        name: name.to_string(),
        id,
        data,
    })
}

fn check_name(what: &str, name: &str) -> Result<(), CliError> {
    Ok(chronicle_server::ops::check_name(what, name)?)
}

/// A decision to record.
pub struct DecisionArgs {
    step: String,
    decision: ApprovalDecision,
    by: String,
    comment: Option<String>,
}

/// Check `approve`/`reject`'s arguments; `--as` defaults to `$USER`.
/// Errors: exit 2 when no one is named.
pub fn decision_args(
    step: &str,
    decision: &str,
    by: Option<String>,
    comment: Option<String>,
) -> Result<DecisionArgs, CliError> {
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| CliError::input("say who decides: --as WHO"))?;
    check_name("--as", &by)?;
    let decision = if decision == "reject" {
        ApprovalDecision::Reject
    } else {
        ApprovalDecision::Approve
    };
    Ok(DecisionArgs {
        step: step.to_string(),
        decision,
        by,
        comment,
    })
}

fn print_signal(run: &str, a: &SignalArgs, recorded: bool, status: &str) {
    if recorded {
        println!(
            "signal {} (id {}) recorded for run {run}; run {status}",
            a.name, a.id
        );
    } else {
        println!(
            "signal id {} was already recorded for run {run}: nothing changed; run {status}",
            a.id
        );
    }
}

fn print_decision(run: &str, a: &DecisionArgs, step_status: &str, status: &str) {
    let what = match a.decision {
        ApprovalDecision::Approve => "approved",
        ApprovalDecision::Reject => "rejected",
    };
    println!(
        "run {run} step {} {what} by {}; step {step_status}; run {status}",
        a.step, a.by
    );
}

/// A note for a run no process executes (on the file, no server): the
/// signal or decision is recorded, and the run goes on when it is run.
fn note_offline(db: &Path, state: &RunState) {
    // On a shared database the workers go on with it.
    if !state.status.is_terminal() && !chronicle_server::auth::is_shared(db) {
        eprintln!(
            "note: no server holds the database: the run goes on when `chronicle serve` or `chronicle recover` executes it"
        );
    }
}

/// `chronicle signal RUN NAME` on the file.
pub async fn signal_offline(db: &Path, run: &str, a: SignalArgs) -> Result<u8, CliError> {
    let seen = {
        let ro = crate::queries::engine_existing(db)?;
        let r = ro.resolve_run(run)?;
        ro.state(r)?.signal_ids.contains(&a.id)
    };
    let (run, state) = control_state(
        db,
        run,
        Control::Other(Command::Signal {
            name: a.name.clone(),
            id: a.id.clone(),
            data: a.data.clone(),
        }),
    )
    .await?;
    print_signal(&run.to_string(), &a, !seen, state.status.as_str());
    note_offline(db, &state);
    Ok(0)
}

/// `chronicle signal RUN NAME` through the server.
pub async fn signal_remote(c: &Client, run: &str, a: &SignalArgs) -> Result<u8, CliError> {
    let (_, v) = c
        .send_json(
            Method::POST,
            &format!(
                "/v1/runs/{}/signals/{}",
                percent_encode(run),
                percent_encode(&a.name)
            ),
            &json!({"data": a.data, "id": a.id}),
            &[],
        )
        .await?;
    let run_id = v["run_id"].as_str().unwrap_or(run).to_string();
    let (_, status) = c
        .send_json(
            Method::GET,
            &format!("/v1/runs/{}", percent_encode(&run_id)),
            &Value::Null,
            &[],
        )
        .await?;
    print_signal(
        &run_id,
        a,
        v["recorded"].as_bool().unwrap_or(false),
        status["status"].as_str().unwrap_or("?"),
    );
    Ok(0)
}

/// `chronicle approve|reject RUN STEP` on the file.
pub async fn decide_offline(db: &Path, run: &str, a: DecisionArgs) -> Result<u8, CliError> {
    let (run, state) = control_state(
        db,
        run,
        Control::Other(Command::Approval {
            step: a.step.as_str().into(),
            by: a.by.clone(),
            decision: a.decision,
            comment: a.comment.clone(),
        }),
    )
    .await?;
    let step = state
        .steps
        .get(a.step.as_str())
        .map(|s| s.status.as_str())
        .unwrap_or("?");
    print_decision(&run.to_string(), &a, step, state.status.as_str());
    note_offline(db, &state);
    Ok(0)
}

/// `chronicle approve|reject RUN STEP` through the server.
pub async fn decide_remote(c: &Client, run: &str, a: &DecisionArgs) -> Result<u8, CliError> {
    let (_, v) = c
        .send_json(
            Method::POST,
            &format!(
                "/v1/runs/{}/steps/{}/approval",
                percent_encode(run),
                percent_encode(&a.step)
            ),
            &json!({"by": a.by, "decision": a.decision.as_str(), "comment": a.comment}),
            &[],
        )
        .await?;
    let step = v["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == a.step.as_str())
        .and_then(|s| s["status"].as_str())
        .unwrap_or("?");
    print_decision(
        v["run_id"].as_str().unwrap_or(run),
        a,
        step,
        v["status"].as_str().unwrap_or("?"),
    );
    Ok(0)
}
