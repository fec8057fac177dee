//! /v1/generations: request a book, follow it (JSON or Server-Sent Events), cancel.

use super::error::{ApiError, ApiResult};
use super::extract::{AuthUser, Id, Json, Q};
use super::AppState;
use crate::generations::{self, GenerationRequest, Job, JobDetail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

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
/// (status, progress, steps), then `done` when it ends. Read with the user's JWT,
/// so the stream shows exactly what RLS lets them see.
async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    Id(id): Id,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = generations::get(&state.rest, &user.caller, id).await?;
    let rest = state.rest.clone();
    let caller = user.caller;
    let stream = async_stream::stream! {
        let mut last = String::new();
        let mut current: JobDetail = first;
        loop {
            let fingerprint = format!(
                "{}|{}|{}",
                current.job.updated_at.as_deref().unwrap_or(""),
                current.job.status,
                current.steps.iter().map(|s| format!("{}{}{}", s.step_id, s.item_index, s.status)).collect::<String>()
            );
            let finished = current.job.is_finished();
            if fingerprint != last {
                last = fingerprint;
                let kind = if finished { "done" } else { "progress" };
                if let Ok(e) = Event::default().event(kind).json_data(&current) {
                    yield Ok(e);
                }
            }
            if finished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
            match generations::get(&rest, &caller, id).await {
                Ok(d) => current = d,
                Err(e) => {
                    let body = serde_json::json!({"code": e.code, "message": e.message});
                    if let Ok(ev) = Event::default().event("error").json_data(body) {
                        yield Ok(ev);
                    }
                    if e.kind == crate::error::Kind::NotFound {
                        break;
                    }
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
