//! /v1/assignments and /v1/me/engine(s).

use super::error::ApiResult;
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::assignments::{
    self, Assignment, AssignmentFilter, AssignmentPatch, BulkAssignment, EngineChoice,
    NewAssignment,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/assignments", get(list).post(assign))
        .route("/v1/assignments/bulk", post(bulk))
        .route("/v1/assignments/{id}", patch(update).delete(remove))
        .route("/v1/me/engines", get(my_engines))
        .route("/v1/me/engine", get(my_engine))
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Q(filter): Q<AssignmentFilter>,
) -> ApiResult<Json<Vec<Assignment>>> {
    Ok(Json(
        assignments::list(&state.rest, &user.caller, &filter).await?,
    ))
}

async fn assign(
    State(state): State<AppState>,
    user: AuthUser,
    Json(new): Json<NewAssignment>,
) -> ApiResult<(StatusCode, Json<Assignment>)> {
    let a = assignments::assign(&state.rest, &user.caller, &new).await?;
    Ok((StatusCode::OK, Json(a)))
}

async fn bulk(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<BulkAssignment>,
) -> ApiResult<Json<Vec<Assignment>>> {
    let items = req.expand()?;
    Ok(Json(
        assignments::bulk(&state.rest, &user.caller, &items).await?,
    ))
}

async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Json(patch): Json<AssignmentPatch>,
) -> ApiResult<Json<Assignment>> {
    Ok(Json(
        assignments::update(&state.rest, &user.caller, id, &patch).await?,
    ))
}

async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<StatusCode> {
    assignments::remove(&state.rest, &user.caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn my_engines(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<EngineChoice>>> {
    Ok(Json(
        assignments::my_engines(&state.rest, &user.caller).await?,
    ))
}

async fn my_engine(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<EngineChoice>> {
    Ok(Json(assignments::resolve(&state.rest, &user.caller).await?))
}
