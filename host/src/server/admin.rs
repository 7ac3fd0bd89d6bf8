//! Admin endpoints (admin token required), mirroring the CLI: functions, grants,
//! connections, services and invocations. Every answer is JSON; connection views are the
//! masked `ConnectionView` the CLI prints, so no response carries a secret value.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Admin;
use super::error::ApiError;
use crate::UploadOptions;
use crate::connections::CatalogEntry;
use crate::oauth::RevocationOutcome;

/// Most invocation records one request returns.
pub const MAX_INVOCATIONS_PAGE: usize = 1000;
/// Records returned when `limit` is not given.
const DEFAULT_INVOCATIONS_PAGE: usize = 20;

/// What a JSON admin handler returns.
pub(super) type ApiResult = Result<Json<Value>, ApiError>;

/// Serialize a handler's answer.
pub(super) fn to_json(v: impl serde::Serialize) -> ApiResult {
    serde_json::to_value(v).map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "host-error",
            e.to_string(),
        )
    })
}

/// `GET /v1/functions`
pub async fn list_functions(_: Admin, State(s): State<AppState>) -> ApiResult {
    to_json(s.host.list_functions()?)
}

/// `GET /v1/functions/{name}`
pub async fn show_function(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    to_json(s.host.show_function(&name)?)
}

/// `DELETE /v1/functions/{name}[?with_schedules=true]`: 409 `in-use` if schedules run
/// it, unless they go too.
pub async fn delete_function(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteFunctionQuery>,
) -> ApiResult {
    let versions = s.host.delete_function(&name, q.with_schedules)?;
    Ok(Json(json!({ "deleted": name, "versions": versions })))
}

/// Query of `DELETE /v1/functions/{name}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DeleteFunctionQuery {
    /// Also delete the schedules that run the function.
    #[serde(default)]
    with_schedules: bool,
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(format!("query parameter {key}={value:?} is not a number"))
    })
}

/// `POST /v1/functions/{name}`: the raw body is the component (.wasm). Query parameters
/// mirror `keyhole functions upload`: `grant` (repeatable), `reset_grants`,
/// `timeout_ms`, `memory_mib`, `max_input`, `max_output`, `max_requests`.
pub async fn upload_function(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let wasm = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // Uploads have their own cap, not `--max-body`.
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!(
                    "the component is over the {} MiB upload cap",
                    crate::runtime::MAX_COMPONENT_BYTES >> 20
                ),
            )
        } else {
            ApiError::from_body(e)
        }
    })?;
    let previous = s.host.storage().latest_function(&name)?;
    let mut limits = previous.map(|p| p.limits).unwrap_or_default();
    let mut custom = false;
    let mut options = UploadOptions::default();
    let pairs = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes());
    for (key, value) in pairs {
        match key.as_ref() {
            "grant" => options.grants.push(value.into_owned()),
            "reset_grants" => options.reset_grants = value != "false",
            "timeout_ms" => {
                limits.timeout_ms = parse_number(&key, &value)?;
                custom = true;
            }
            "memory_mib" => {
                // Saturate rather than wrap; the limit check refuses what is too large.
                let mib = parse_number::<u64>(&key, &value)?;
                limits.memory_bytes = mib.saturating_mul(1 << 20);
                custom = true;
            }
            "max_input" => {
                limits.max_input_bytes = parse_number(&key, &value)?;
                custom = true;
            }
            "max_output" => {
                limits.max_output_bytes = parse_number(&key, &value)?;
                custom = true;
            }
            "max_requests" => {
                limits.max_outbound_requests = parse_number(&key, &value)?;
                custom = true;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; known: grant, reset_grants, timeout_ms, memory_mib, max_input, max_output, max_requests"
                )));
            }
        }
    }
    options.limits = custom.then_some(limits);
    let uploaded = s.host.upload(&name, wasm.to_vec(), options).await?;
    let grants = s.host.storage().grants_of_function(&uploaded.row.name)?;
    let mut v = to_json(&uploaded)?.0;
    v["grants"] = json!(grants);
    // 201 for a new version; 200 when the latest version already was this upload.
    let status = if uploaded.new_version {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(v)))
}

/// `GET /v1/functions/{name}/grants`
pub async fn list_grants(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    let detail = s.host.show_function(&name)?;
    Ok(Json(json!({ "function": name, "grants": detail.grants })))
}

/// `PUT /v1/functions/{name}/grants/{connection}`
pub async fn grant(
    _: Admin,
    State(s): State<AppState>,
    Path((function, connection)): Path<(String, String)>,
) -> ApiResult {
    s.host.connections().grant(&function, &connection)?;
    Ok(Json(
        json!({ "function": function, "connection": connection, "granted": true }),
    ))
}

/// `DELETE /v1/functions/{name}/grants/{connection}`
pub async fn revoke_grant(
    _: Admin,
    State(s): State<AppState>,
    Path((function, connection)): Path<(String, String)>,
) -> ApiResult {
    s.host.connections().revoke_grant(&function, &connection)?;
    Ok(Json(
        json!({ "function": function, "connection": connection, "granted": false }),
    ))
}

/// Query of the invocation listings.
#[derive(Debug, Deserialize)]
pub struct InvocationsQuery {
    /// Only this function.
    pub function: Option<String>,
    /// How many records (default 20, at most 1000).
    pub limit: Option<usize>,
}

fn page(limit: Option<usize>) -> usize {
    limit
        .unwrap_or(DEFAULT_INVOCATIONS_PAGE)
        .clamp(1, MAX_INVOCATIONS_PAGE)
}

/// `GET /v1/invocations?function=&limit=`: recent invocations, newest first.
pub async fn invocations(
    _: Admin,
    State(s): State<AppState>,
    Query(q): Query<InvocationsQuery>,
) -> ApiResult {
    // Invocations answered before this request are listed, their records committed.
    s.host.records_settled().await;
    to_json(s.host.logs(q.function.as_deref(), page(q.limit))?)
}

/// `GET /v1/functions/{name}/invocations?limit=`
pub async fn function_invocations(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<InvocationsQuery>,
) -> ApiResult {
    s.host.records_settled().await;
    to_json(s.host.logs(Some(&name), page(q.limit))?)
}

/// `GET /v1/connections`
pub async fn list_connections(_: Admin, State(s): State<AppState>) -> ApiResult {
    to_json(s.host.connections().list()?)
}

/// `GET /v1/connections/{name}` (secrets masked)
pub async fn show_connection(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    to_json(s.host.connections().show(&name)?)
}

/// `POST /v1/connections/{name}/test`: run the service's verification request.
pub async fn test_connection(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    to_json(s.host.connections().test(&name).await?)
}

/// `POST /v1/connections/{name}/revoke`: revoke OAuth tokens at the provider (RFC
/// 7009), then wipe the credentials (the connection stays). Answers
/// `{"connection": …, "provider": [one outcome per token], "wiped": bool}` as the CLI's
/// `--json` does:
/// 200, or 502 with an `error` beside them when the provider did not confirm every
/// revocation (the credentials are wiped here all the same, but the grant may still be
/// live there).
pub async fn revoke_connection(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let revocation = s.host.connections().revoke(&name).await?;
    let unconfirmed = revocation
        .provider
        .iter()
        .any(|p| p.outcome == RevocationOutcome::Failed);
    let Json(mut body) = to_json(&revocation)?;
    if !unconfirmed {
        return Ok(Json(body).into_response());
    }
    body["error"] = json!({
        "kind": "revocation-unconfirmed",
        "message": "the credentials were wiped here, but the provider did not confirm every revocation, so the grant may still be live there; remove keyhole's access in the provider's account settings",
    });
    Ok((StatusCode::BAD_GATEWAY, Json(body)).into_response())
}

fn entry_json(e: &CatalogEntry) -> Value {
    let mut v = serde_json::to_value(&e.def).unwrap_or_default();
    v["source"] = serde_json::to_value(e.source).unwrap_or_default();
    v
}

/// `GET /v1/services`
pub async fn list_services(_: Admin, State(s): State<AppState>) -> ApiResult {
    let list = s.host.connections().catalog().list()?;
    Ok(Json(Value::Array(list.iter().map(entry_json).collect())))
}

/// `GET /v1/services/{name}`: the definition, plus the OAuth client id, callback URL and
/// the origins the client is sent to for OAuth services (never the client secret).
pub async fn show_service(
    _: Admin,
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult {
    let connections = s.host.connections();
    let entry = connections.catalog().require(&name)?;
    let mut v = entry_json(&entry);
    if entry.def.oauth2.is_some() {
        let summary = connections.oauth_client_summary(&name)?;
        v["oauth_client_id"] = json!(summary.client_id);
        v["callback_url"] = json!(summary.callback_url);
        v["oauth_client_origins"] = json!(summary.origins);
    }
    Ok(Json(v))
}
