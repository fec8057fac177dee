//! POST /webhooks/generation: a Supabase Database Webhook for inserts into
//! generation_jobs wakes the worker. Deliveries are at most once and unsigned, so
//! the worker polls too, and a duplicate delivery only causes an extra claim attempt.

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::error::{codes, Error, Kind};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

/// Supabase sends the whole row; 64 KiB is plenty for a job insert.
pub const WEBHOOK_BODY_LIMIT: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/generation", post(generation))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    table: String,
    #[serde(default)]
    schema: Option<String>,
}

/// Is this delivery an insert into generation_jobs? Malformed bodies are errors.
pub fn is_new_job(body: &[u8]) -> Result<bool, Error> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(
            codes::INVALID_JSON,
            format!("not a Supabase webhook payload: {e}"),
        )
    })?;
    Ok(payload.kind.eq_ignore_ascii_case("INSERT")
        && payload.table == "generation_jobs"
        && payload.schema.as_deref().is_none_or(|s| s == "public"))
}

fn authorized(headers: &HeaderMap, secret: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = given.strip_prefix("Bearer ").unwrap_or(given).trim();
    // Constant time: the comparison does not reveal how much of the secret matched.
    given.as_bytes().ct_eq(secret.as_bytes()).into()
}

async fn generation(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let metrics = crate::metrics::Metrics::global();
    let Some(secret) = state.webhook_secret.as_ref() else {
        return Err(ApiError(Error::new(
            Kind::Unavailable,
            codes::BACKEND_UNAVAILABLE,
            "webhooks are not configured (set WEBHOOK_SECRET)",
        )));
    };
    if !authorized(&headers, secret.expose()) {
        metrics.webhooks.with_label_values(&["unauthorized"]).inc();
        return Err(ApiError(Error::unauthenticated(
            codes::INVALID_TOKEN,
            "wrong or missing webhook secret",
        )));
    }
    let body = body.map_err(|r| {
        metrics.webhooks.with_label_values(&["rejected"]).inc();
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(Error::new(
                Kind::TooLarge,
                codes::PAYLOAD_TOO_LARGE,
                "webhook body over 64 KiB",
            ))
        } else {
            ApiError(Error::invalid(codes::INVALID_REQUEST, r.body_text()))
        }
    })?;
    let relevant = is_new_job(&body).map_err(|e| {
        metrics.webhooks.with_label_values(&["malformed"]).inc();
        ApiError(e)
    })?;
    if !relevant {
        metrics.webhooks.with_label_values(&["ignored"]).inc();
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "woken": false})),
        ));
    }
    metrics.webhooks.with_label_values(&["woken"]).inc();
    tracing::debug!("webhook: new job");
    state.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"accepted": true, "woken": true})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("BOOKENGINE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500)
    }

    #[test]
    fn recognises_inserts_into_generation_jobs() {
        let ok = br#"{"type":"INSERT","table":"generation_jobs","schema":"public","record":{},"old_record":null}"#;
        assert!(is_new_job(ok).unwrap());
        assert!(!is_new_job(br#"{"type":"UPDATE","table":"generation_jobs"}"#).unwrap());
        assert!(
            !is_new_job(br#"{"type":"INSERT","table":"generation_jobs","schema":"other"}"#)
                .unwrap()
        );
        assert!(is_new_job(b"{").is_err());
        assert!(is_new_job(b"[]").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = is_new_job(&body);
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(kind in "\\PC{0,12}", table in "\\PC{0,20}", extra in "\\PC{0,40}") {
            let body = serde_json::json!({"type": kind, "table": table, "record": {"x": extra}}).to_string();
            prop_assert!(is_new_job(body.as_bytes()).is_ok());
        }
    }
}
