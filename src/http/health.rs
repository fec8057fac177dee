//! Liveness, readiness and the OpenAPI document.

use super::error::ApiError;
use super::AppState;
use crate::error::{codes, Error};
use crate::secret::Secret;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

const OPENAPI: &str = include_str!("openapi.json");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Ready when PostgREST (and through it, Postgres) answers, as of at most a second ago.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": {"code": e.code, "message": e.message}})),
        ),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Prometheus text format. Holds counts and latencies only: no ids, prompts or keys.
/// With `METRICS_TOKEN` set, only `Authorization: Bearer <METRICS_TOKEN>` is answered.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        if let Err(e) = metrics_authorized(&headers, expected) {
            return ApiError(e).into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::Metrics::global().render(),
    )
        .into_response()
}

fn metrics_authorized(headers: &HeaderMap, expected: &Secret) -> Result<(), Error> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            Error::unauthenticated(
                codes::MISSING_TOKEN,
                "send the metrics token: Authorization: Bearer <METRICS_TOKEN>",
            )
        })?;
    // Constant time: the comparison does not reveal how much of the token matched.
    if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(Error::unauthenticated(
            codes::INVALID_TOKEN,
            "the metrics token is not valid",
        ))
    }
}
