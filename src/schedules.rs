//! `chronicle schedule add|list|pause|resume|delete|trigger`, on the
//! database file or through the server that holds it (which fires them).

use std::path::Path;

use chronicle_engine::runtime::NewSchedule;
use chronicle_engine::schedule::{Overlap, ScheduleEvent};
use chronicle_server::Method;
use chronicle_server::client::{Client, percent_encode};
use chronicle_server::ops::schedule_json;
use serde_json::{Value, json};

use crate::cli::ScheduleCmd;
use crate::error::CliError;

fn print_one(v: &Value) {
    let next = v["next"].as_str().unwrap_or("-");
    println!(
        "schedule {} {}: cron {:?} ({}), workflow {}, next {next}, fired {}",
        v["name"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
        v["cron"].as_str().unwrap_or("?"),
        v["timezone"].as_str().unwrap_or("?"),
        v["workflow"].as_str().unwrap_or("?"),
        v["fired"]
    );
}

fn print_list(list: &[Value], json: bool) {
    if json {
        println!("{}", json!({ "schedules": list }));
        return;
    }
    println!(
        "{:<24}  {:<8}  {:<16}  {:<10}  {:<6}  NEXT",
        "NAME", "STATUS", "CRON", "TIMEZONE", "FIRED"
    );
    for v in list {
        println!(
            "{:<24}  {:<8}  {:<16}  {:<10}  {:<6}  {}",
            v["name"].as_str().unwrap_or("?"),
            v["status"].as_str().unwrap_or("?"),
            v["cron"].as_str().unwrap_or("?"),
            v["timezone"].as_str().unwrap_or("?"),
            v["fired"],
            v["next"].as_str().unwrap_or("-")
        );
    }
}

fn input_of(text: Option<&str>) -> Result<Value, CliError> {
    match text {
        None => Ok(json!({})),
        Some(t) => match serde_json::from_str::<Value>(t) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err(CliError::input("--input must be a JSON object")),
            Err(e) => Err(CliError::input(format!("--input is not JSON: {e}"))),
        },
    }
}

/// On the file (no server: nothing fires until `chronicle serve` runs).
pub async fn offline(db: &Path, cmd: ScheduleCmd) -> Result<u8, CliError> {
    if let ScheduleCmd::List { json } = cmd {
        let engine = crate::queries::engine_existing(db)?;
        let list: Vec<Value> = engine.schedules()?.iter().map(schedule_json).collect();
        print_list(&list, json);
        return Ok(0);
    }
    // On a shared database a triggered run is offered to the workers.
    let engine = crate::runs::engine_builder(db)
        .watchdog(false)
        .executes(!chronicle_server::auth::is_shared(db))
        .build()?;
    let s = match cmd {
        ScheduleCmd::Add {
            name,
            file,
            cron,
            input,
            timezone,
            overlap,
            catch_up,
        } => {
            engine
                .schedule_create(NewSchedule {
                    name,
                    workflow: chronicle_engine::model::load_file(&file)?,
                    cron,
                    timezone,
                    input: input_of(input.as_deref())?,
                    overlap: if overlap == "allow" {
                        Overlap::Allow
                    } else {
                        Overlap::Skip
                    },
                    catch_up_ms: catch_up.as_millis() as u64,
                })
                .await?
        }
        ScheduleCmd::Pause { name } => {
            engine
                .schedule_set(&name, ScheduleEvent::SchedulePaused {})
                .await?
        }
        ScheduleCmd::Resume { name } => {
            engine
                .schedule_set(&name, ScheduleEvent::ScheduleResumed {})
                .await?
        }
        ScheduleCmd::Delete { name } => {
            engine
                .schedule_set(&name, ScheduleEvent::ScheduleDeleted {})
                .await?
        }
        ScheduleCmd::Trigger { name } => {
            let run = engine.schedule_trigger(&name).await?;
            println!("schedule {name} fired: run {run}");
            if !chronicle_server::auth::is_shared(db) {
                eprintln!(
                    "note: no server holds the database: `chronicle recover` (or `chronicle serve`) executes the run"
                );
            }
            engine.shutdown().await;
            return Ok(0);
        }
        ScheduleCmd::List { .. } => unreachable!("handled above"),
    };
    print_one(&schedule_json(&s));
    if s.status == "active" {
        eprintln!("note: schedules fire while `chronicle serve` runs on this database");
    }
    Ok(0)
}

/// Through the server.
pub async fn remote(c: &Client, cmd: ScheduleCmd) -> Result<u8, CliError> {
    let path = |name: &str, what: &str| format!("/v1/schedules/{}{what}", percent_encode(name));
    let (_, v) = match cmd {
        ScheduleCmd::List { json } => {
            let (_, v) = c
                .send_json(Method::GET, "/v1/schedules", &Value::Null, &[])
                .await?;
            print_list(
                v["schedules"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                json,
            );
            return Ok(0);
        }
        ScheduleCmd::Add {
            name,
            file,
            cron,
            input,
            timezone,
            overlap,
            catch_up,
        } => {
            let wf = chronicle_engine::model::load_file(&file)?;
            let body = json!({
                "name": name,
                "workflow": serde_json::to_value(&wf).expect("a definition serializes"),
                "cron": cron,
                "input": input_of(input.as_deref())?,
                "timezone": timezone,
                "overlap": overlap,
                "catch_up": humantime::format_duration(catch_up).to_string(),
            });
            c.send_json(Method::POST, "/v1/schedules", &body, &[])
                .await?
        }
        ScheduleCmd::Pause { name } => {
            c.send_json(Method::POST, &path(&name, "/pause"), &json!({}), &[])
                .await?
        }
        ScheduleCmd::Resume { name } => {
            c.send_json(Method::POST, &path(&name, "/resume"), &json!({}), &[])
                .await?
        }
        ScheduleCmd::Delete { name } => {
            c.send_json(Method::DELETE, &path(&name, ""), &Value::Null, &[])
                .await?
        }
        ScheduleCmd::Trigger { name } => {
            let (_, v) = c
                .send_json(Method::POST, &path(&name, "/trigger"), &json!({}), &[])
                .await?;
            println!(
                "schedule {name} fired: run {}",
                v["run_id"].as_str().unwrap_or("?")
            );
            return Ok(0);
        }
    };
    print_one(&v);
    Ok(0)
}
