//! Schedules: create, list, read, pause, resume, delete, trigger. The
//! server fires them (every second it starts the runs of due nominal
//! times).

use super::*;

use chronicle_engine::runtime::NewSchedule;
use chronicle_engine::schedule::{Overlap, ScheduleEvent};

/// `POST /v1/schedules` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Its name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// A workflow definition: a JSON object, or YAML/JSON text.
    #[schema(value_type = Object)]
    pub workflow: Option<Value>,
    /// Or the name of a registered workflow (its latest version, pinned now).
    pub workflow_name: Option<String>,
    /// Five-field crontab expression (`0 * * * *`).
    pub cron: String,
    /// Each run's input (default `{}`).
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// IANA time zone (default `UTC`).
    pub timezone: Option<String>,
    /// `skip` (default) or `allow`: a nominal time while the last run
    /// still runs.
    pub overlap: Option<String>,
    /// How far back missed times fire after downtime (`1h`, default).
    pub catch_up: Option<String>,
}

fn view(app: &AppState, name: &str) -> Result<Json<Value>, Problem> {
    Ok(Json(ops::schedule_json(&app.engine().schedule(name)?)))
}

/// Create a schedule.
#[utoipa::path(
    post, path = "/v1/schedules", tag = "schedules", request_body = CreateSchedule,
    responses((status = 201, description = "The schedule", body = Object), (status = 400, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem))
)]
pub async fn create_schedule(
    State(app): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let req: CreateSchedule = json_body(&body)?;
    let workflow = match (&req.workflow, &req.workflow_name) {
        (Some(def), None) => parse_workflow(def, app.engine().store())?,
        (None, Some(name)) => app.registered(name, None)?.0,
        _ => {
            return Err(Problem::invalid_input(
                "give workflow (a definition) or workflow_name, one of them",
            ));
        }
    };
    let overlap = match req.overlap.as_deref() {
        None | Some("skip") => Overlap::Skip,
        Some("allow") => Overlap::Allow,
        Some(o) => {
            return Err(Problem::bad_request(format!(
                "overlap {o:?} must be skip or allow"
            )));
        }
    };
    let catch_up_ms = match req.catch_up.as_deref() {
        None => 3_600_000,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| {
                Problem::bad_request(format!("catch_up {t:?} is not a duration like 1h: {e}"))
            })?
            .as_millis() as u64,
    };
    let s = app
        .engine()
        .schedule_create(NewSchedule {
            name: req.name,
            workflow,
            cron: req.cron,
            timezone: req.timezone.unwrap_or_else(|| "UTC".into()),
            input: check_input(req.input)?,
            overlap,
            catch_up_ms,
        })
        .await?;
    let mut r = (StatusCode::CREATED, Json(ops::schedule_json(&s))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/schedules/{}", s.name)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// Every schedule, by name.
#[utoipa::path(
    get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "`{schedules: [...]}`", body = Object), (status = 503, body = Problem))
)]
pub async fn list_schedules(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let all: Vec<Value> = app
        .engine()
        .schedules()?
        .iter()
        .map(ops::schedule_json)
        .collect();
    Ok(Json(json!({ "schedules": all })))
}

/// One schedule.
#[utoipa::path(
    get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn get_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    view(&app, &name)
}

/// Delete a schedule: nothing fires any more (its history stays).
#[utoipa::path(
    delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn delete_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    let s = app
        .engine()
        .schedule_set(&name, ScheduleEvent::ScheduleDeleted {})
        .await?;
    Ok(Json(ops::schedule_json(&s)))
}

/// Pause a schedule.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn pause_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    app.engine()
        .schedule_set(&name, ScheduleEvent::SchedulePaused {})
        .await?;
    view(&app, &name)
}

/// Resume a schedule (times missed while paused do not fire).
#[utoipa::path(
    post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn resume_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Problem> {
    app.engine()
        .schedule_set(&name, ScheduleEvent::ScheduleResumed {})
        .await?;
    view(&app, &name)
}

/// Fire a schedule now.
#[utoipa::path(
    post, path = "/v1/schedules/{name}/trigger", tag = "schedules",
    params(("name" = String, Path, description = "Schedule name")),
    responses((status = 202, description = "`{run_id, schedule}`", body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn trigger_schedule(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let run = app.engine().schedule_trigger(&name).await?;
    Ok(created_response(
        run,
        StatusCode::ACCEPTED,
        json!({"run_id": run, "schedule": name}),
    ))
}
