//! /v1/generations: request a book, follow it (JSON or Server-Sent Events), cancel.

use super::error::{ApiError, ApiResult};
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::generations::{self, GenerationRequest, Job, JobDetail};
use crate::rest::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use std::convert::Infallible;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/generations", get(list).post(request))
        .route("/v1/generations/{id}", get(show))
        .route("/v1/generations/{id}/cancel", post(cancel))
        .route("/v1/generations/{id}/events", get(events))
}

async fn request(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<GenerationRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let job = generations::request(&state.rest, &user.caller, &req).await?;
    // A worker in this process starts at once; others learn from the webhook or by polling.
    state.wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    status: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Q(q): Q<ListQuery>,
) -> ApiResult<Json<Vec<Job>>> {
    if let Some(s) = q.status.as_deref() {
        if !matches!(
            s,
            "queued" | "running" | "succeeded" | "failed" | "cancelled"
        ) {
            return Err(ApiError(crate::error::Error::invalid(
                crate::error::codes::INVALID_REQUEST,
                "status must be queued, running, succeeded, failed or cancelled",
            )));
        }
    }
    let jobs = generations::list(
        &state.rest,
        &user.caller,
        q.limit.unwrap_or(50),
        q.status.as_deref(),
    )
    .await?;
    Ok(Json(jobs))
}

async fn show(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Json<JobDetail>> {
    Ok(Json(generations::get(&state.rest, &user.caller, id).await?))
}

async fn cancel(State(state): State<AppState>, user: AuthUser, Id(id): Id) -> ApiResult<Json<Job>> {
    Ok(Json(
        generations::cancel(&state.rest, &user.caller, id).await?,
    ))
}

/// Progress as Server-Sent Events: a `progress` event whenever the job changes
/// (status, progress, steps), then `done` when it ends; `error` events carry
/// `{code, message}` and end the stream when final (`token_expired`,
/// `generation_not_found`, `invalid_token`). All streams of one user on one job share
/// one reader (crate::generations::watch), which reads with that user's JWT, so the
/// stream shows exactly what RLS lets them see. Capped per user and per job (429
/// `too_many_streams`).
async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Caller::User(token) = user.caller else {
        return Err(ApiError(crate::error::Error::internal(
            "a signed-in user without a token",
        )));
    };
    let viewer = state
        .streams
        .watch(id, user.id, token, user.expires_at)
        .await?;
    let stream = viewer
        .updates()
        .map(|u| Ok(Event::default().event(u.event).data(u.data.as_str())));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
