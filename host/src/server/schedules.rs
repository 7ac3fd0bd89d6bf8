//! Schedule admin endpoints (admin token), mirroring `keyhole schedules …`:
//! list, show, create, edit, pause, resume, release, delete.
//!
//! `PUT /v1/schedules/{name}` takes `{"function": "f", "every": "5m" | "every_ms": 300000 | "cron": "0 */5 * * * *",
//! "input": <any JSON, default {}>}`; `PATCH` takes any of those fields, and changes those.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::admin::{ApiResult, to_json};
use super::auth::Admin;
use super::error::ApiError;
use crate::schedules::{Cadence, ScheduleEdit, Schedules};

fn schedules(s: &AppState) -> Schedules {
    Schedules::new(s.host.storage().clone())
}

/// Body of `PUT /v1/schedules/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Function to run.
    pub function: String,
    /// Fixed interval, e.g. `30s`, `5m`.
    pub every: Option<String>,
    /// The same in milliseconds, as `GET` answers it.
    pub every_ms: Option<u64>,
    /// Cron expression, seconds first (UTC).
    pub cron: Option<String>,
    /// Input JSON (default `{}`).
    pub input: Option<Value>,
}

/// `GET /v1/schedules`
pub async fn list(_: Admin, State(s): State<AppState>) -> ApiResult {
    to_json(schedules(&s).list()?)
}

/// `GET /v1/schedules/{name}`
pub async fn show(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    to_json(schedules(&s).show(&name)?)
}

/// `PUT /v1/schedules/{name}`: create a schedule.
pub async fn create(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Any content type: `curl -d` sends form-urlencoded by default.
    let body = body.map_err(ApiError::from_body)?;
    let new: NewSchedule = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a schedule: {e}")))?;
    let cadence =
        cadence(new.every.as_deref(), new.every_ms, new.cron.as_deref())?.ok_or_else(|| {
            ApiError::bad_request(
                "say when it runs: give one of \"every\" (e.g. \"5m\"), \"every_ms\" and \"cron\"",
            )
        })?;
    let input = new.input.unwrap_or_else(|| json!({})).to_string();
    let row = schedules(&s).add(&name, &new.function, &cadence, &input)?;
    Ok((StatusCode::CREATED, to_json(row)?))
}

/// Body of `PATCH /v1/schedules/{name}`: what to change; what is left out stays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleChange {
    /// Another function to run.
    pub function: Option<String>,
    /// Another interval, e.g. `30s`, `5m`.
    pub every: Option<String>,
    /// The same in milliseconds.
    pub every_ms: Option<u64>,
    /// Another cron expression, seconds first (UTC).
    pub cron: Option<String>,
    /// Another input (any JSON).
    pub input: Option<Value>,
}

/// `PATCH /v1/schedules/{name}`: change a schedule (`keyhole schedules edit`); a new
/// cadence starts afresh from now.
pub async fn edit(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(ApiError::from_body)?;
    let change: ScheduleChange = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a schedule change: {e}; give any of \"function\", \"every\" (or \"every_ms\" or \"cron\") and \"input\""
        ))
    })?;
    let edit = ScheduleEdit {
        function: change.function,
        cadence: cadence(
            change.every.as_deref(),
            change.every_ms,
            change.cron.as_deref(),
        )?,
        input: change.input.map(|v| v.to_string()),
    };
    to_json(schedules(&s).edit(&name, &edit)?)
}

/// The cadence a body gives in one of `every`, `every_ms` and `cron`; `None` when it
/// gives none.
fn cadence(
    every: Option<&str>,
    every_ms: Option<u64>,
    cron: Option<&str>,
) -> Result<Option<Cadence>, ApiError> {
    Ok(Some(match (every, every_ms, cron) {
        (None, None, None) => return Ok(None),
        (Some(every), None, None) => {
            Cadence::Every(humantime::parse_duration(every).map_err(|e| {
                ApiError::bad_request(format!(
                    "\"every\": {every:?} is not a duration ({e}); e.g. \"30s\", \"5m\""
                ))
            })?)
        }
        (None, Some(ms), None) => Cadence::Every(Duration::from_millis(ms)),
        (None, None, Some(expr)) => Cadence::cron(expr)?,
        _ => {
            return Err(ApiError::bad_request(
                "give only one of \"every\" (e.g. \"5m\"), \"every_ms\" and \"cron\"",
            ));
        }
    }))
}

/// `POST /v1/schedules/{name}/pause`
pub async fn pause(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    to_json(schedules(&s).pause(&name)?)
}

/// `POST /v1/schedules/{name}/resume`
pub async fn resume(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    to_json(schedules(&s).resume(&name)?)
}

/// `POST /v1/schedules/{name}/release[?force=true]`: release the claim of a run cut off
/// by a crash (`keyhole schedules release`); the schedule with `"released"`, the end of
/// the lease released, or `null` when no claim held it. 409 `conflict` while the
/// process that claimed it still runs, unless `force`.
pub async fn release(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReleaseQuery>,
) -> ApiResult {
    to_json(schedules(&s).release(&name, q.force)?)
}

/// Query of `POST /v1/schedules/{name}/release`.
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseQuery {
    /// Release even while the process that claimed the schedule still runs.
    #[serde(default)]
    force: bool,
}

/// `DELETE /v1/schedules/{name}`
pub async fn delete(_: Admin, State(s): State<AppState>, Path(name): Path<String>) -> ApiResult {
    schedules(&s).delete(&name)?;
    Ok(Json(json!({ "deleted": name })))
}
