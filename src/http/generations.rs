//! /v1/generations: request a book, follow it (JSON or Server-Sent Events), cancel.

use super::error::{ApiError, ApiResult};
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::generations::{self, GenerationRequest, Job, JobDetail};
use crate::rest::Caller;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
        if s.parse::<generations::JobStatus>().is_err() {
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

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Resume after this text row (as `Last-Event-ID`, which wins when both are sent).
    after: Option<String>,
}

/// A text row position as a client sends it back: a non-negative integer.
fn position(value: &str, name: &str) -> ApiResult<i64> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError(crate::error::Error::invalid(
                crate::error::codes::INVALID_REQUEST,
                format!(
                    "{name} must be a non-negative integer (the id of the last event received)"
                ),
            ))
        })
}

/// Progress as Server-Sent Events: a `progress` event whenever the job changes
/// (status, progress, steps), then `done` when it ends; `error` events carry
/// `{code, message}` and end the stream when final (`token_expired`,
/// `generation_not_found`, `invalid_token`, `backend_unavailable` while resending
/// text). While the job runs, its text as it is written: one event per
/// `generation_deltas` row, named after its kind (`attempt`, `delta`, `discard`,
/// `restart`), `id:` = the row's `seq`, data = the row. Reconnecting with
/// `Last-Event-ID: n` (or `?after=n`) sends exactly the rows after n, then goes on
/// live. All streams of one user on one job share one reader
/// (crate::generations::watch), which reads with that user's JWT, so the stream shows
/// exactly what RLS lets them see. Capped per user and per job (429 `too_many_streams`).
async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
    Q(q): Q<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Caller::User(token) = user.caller else {
        return Err(ApiError(crate::error::Error::internal(
            "a signed-in user without a token",
        )));
    };
    let header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("-"));
    let after = match (header, q.after.as_deref()) {
        (Some(h), _) if !h.trim().is_empty() => position(h, "Last-Event-ID")?,
        (_, Some(a)) => position(a, "after")?,
        _ => 0,
    };
    let viewer = state
        .streams
        .watch(id, user.id, token, user.expires_at, after)
        .await?;
    let stream = viewer.updates().map(|u| {
        let mut event = Event::default().event(u.event()).data(u.data());
        if let Some(seq) = u.id() {
            event = event.id(seq.to_string());
        }
        Ok(event)
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
