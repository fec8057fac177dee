//! /v1/engines: deploy, list, show, update (and redeploy), delete; and each engine's
//! versions (history, diff, rollback, proposals) and rollout.

use std::collections::HashMap;

use super::error::{ApiError, ApiResult};
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::engines::rollout::{self, RolloutRequest, RolloutState};
use crate::engines::versions::{
    self, EngineVersion, History, ProposalRequest, RollbackRequest, VersionDiff,
};
use crate::engines::{self, Engine, EngineFilter, EnginePatch};
use crate::error::{codes, Error};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/engines", get(list).post(deploy))
        .route("/v1/engines/{id}", get(show).patch(update).delete(remove))
        .route(
            "/v1/engines/{id}/versions",
            get(version_list).post(version_propose),
        )
        .route("/v1/engines/{id}/versions/{n}", get(version_show))
        .route("/v1/engines/{id}/versions/{n}/diff/{m}", get(version_diff))
        .route("/v1/engines/{id}/diff", get(version_diff_query))
        .route("/v1/engines/{id}/rollback", post(rollback))
        .route(
            "/v1/engines/{id}/rollout",
            get(rollout_show).post(rollout_start),
        )
        .route("/v1/engines/{id}/rollout/promote", post(rollout_promote))
        .route("/v1/engines/{id}/rollout/abort", post(rollout_abort))
}

async fn deploy(
    State(state): State<AppState>,
    user: AuthUser,
    Json(doc): Json<Value>,
) -> ApiResult<(StatusCode, Json<Engine>)> {
    let engine = engines::deploy(&state.rest, &user.caller, user.id, &doc).await?;
    Ok((StatusCode::CREATED, Json(engine)))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Q(filter): Q<EngineFilter>,
) -> ApiResult<Json<Vec<Engine>>> {
    Ok(Json(
        engines::list(&state.rest, &user.caller, &filter).await?,
    ))
}

async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<Engine>> {
    Ok(Json(engines::get(&state.rest, &user.caller, id).await?))
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Json(patch): Json<EnginePatch>,
) -> ApiResult<Json<Engine>> {
    Ok(Json(
        engines::update(&state.rest, &user.caller, id, patch).await?,
    ))
}

async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    engines::delete(&state.rest, &user.caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The path of a version route: the engine id and up to two version numbers, each
/// refused with a 400 naming it when malformed.
struct VersionPath {
    id: Uuid,
    n: Option<i32>,
    m: Option<i32>,
}

fn version_number(raw: &str, name: &str) -> Result<i32, Error> {
    raw.parse::<i32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        Error::invalid(
            codes::INVALID_REQUEST,
            format!("the version in the path must be a whole number from 1 (got {raw:?})"),
        )
        .with_details(json!({"path": name}))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for VersionPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<HashMap<String, String>>::from_request_parts(parts, state).await?;
        let id = raw
            .get("id")
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                Error::invalid(codes::INVALID_REQUEST, "the id in the path must be a UUID")
            })?;
        let n = raw.get("n").map(|s| version_number(s, "n")).transpose()?;
        let m = raw.get("m").map(|s| version_number(s, "m")).transpose()?;
        Ok(Self { id, n, m })
    }
}

async fn version_list(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<History>> {
    Ok(Json(versions::list(&state.rest, &user.caller, id).await?))
}

async fn version_propose(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Json(request): Json<ProposalRequest>,
) -> ApiResult<(StatusCode, Json<EngineVersion>)> {
    let v = versions::propose(&state.rest, &user.caller, id, &request).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn version_show(
    State(state): State<AppState>,
    user: AuthUser,
    path: VersionPath,
) -> ApiResult<Json<EngineVersion>> {
    let n = path.n.unwrap_or(1);
    Ok(Json(
        versions::get(&state.rest, &user.caller, path.id, n).await?,
    ))
}

async fn version_diff(
    State(state): State<AppState>,
    user: AuthUser,
    path: VersionPath,
) -> ApiResult<Json<VersionDiff>> {
    let (Some(a), Some(b)) = (path.n, path.m) else {
        return Err(Error::invalid(codes::INVALID_REQUEST, "name two versions").into());
    };
    Ok(Json(
        versions::diff_versions(&state.rest, &user.caller, path.id, a, b).await?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    from: i32,
    to: i32,
}

async fn version_diff_query(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Q(q): Q<DiffQuery>,
) -> ApiResult<Json<VersionDiff>> {
    Ok(Json(
        versions::diff_versions(&state.rest, &user.caller, id, q.from, q.to).await?,
    ))
}

async fn rollback(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Json(request): Json<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<EngineVersion>)> {
    let v = versions::rollback(&state.rest, &user.caller, id, &request).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn rollout_show(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<RolloutState>> {
    Ok(Json(rollout::state(&state.rest, &user.caller, id).await?))
}

async fn rollout_start(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Json(request): Json<RolloutRequest>,
) -> ApiResult<Json<RolloutState>> {
    Ok(Json(
        rollout::start(&state.rest, &user.caller, id, &request).await?,
    ))
}

async fn rollout_promote(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<RolloutState>> {
    Ok(Json(rollout::promote(&state.rest, &user.caller, id).await?))
}

async fn rollout_abort(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<RolloutState>> {
    Ok(Json(rollout::abort(&state.rest, &user.caller, id).await?))
}
