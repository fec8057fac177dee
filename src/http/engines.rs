//! /v1/engines: deploy, list, show, update (and redeploy), delete.

use super::error::ApiResult;
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::engines::{self, Engine, EngineFilter, EnginePatch};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::Value;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/engines", get(list).post(deploy))
        .route("/v1/engines/{id}", get(show).patch(update).delete(remove))
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
