//! POST /webhooks/generation: a Supabase Database Webhook for inserts into
//! generation_jobs wakes the worker. Deliveries are at most once and unsigned, so
//! the worker polls too, and a duplicate delivery only causes an extra claim attempt.
//!
//! Only the job's id is read. `supabase/webhook.sql` sends just that; a Dashboard
//! webhook sends the whole row (`record`), which is skipped over unread, at any depth.

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::error::{codes, Error, Kind};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

/// The largest row a Dashboard webhook can carry for a job: the input (64 KiB at
/// most, sql/V8), the engine snapshot (a flow deployed through the API's 1 MiB body
/// limit, plus its model list) and the other columns (well under 16 KiB at insert):
/// about 1.1 MiB, so 2 MiB. Read only after the secret is checked.
pub const WEBHOOK_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Mounted outside the API's 1 MiB request limit (src/http/mod.rs), with its own.
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
    /// Only the id; the row's other columns are skipped without being decoded.
    #[serde(default)]
    record: Option<RecordId>,
}

#[derive(Debug, Deserialize)]
struct RecordId {
    #[serde(default)]
    id: Option<Value>,
}

/// What a delivery says: is it a new job, and which (when the sender named it).
#[derive(Debug, PartialEq)]
pub struct Delivery {
    pub new_job: bool,
    pub job_id: Option<uuid::Uuid>,
}

/// Read a delivery. Malformed bodies are errors.
pub fn read_delivery(body: &[u8]) -> Result<Delivery, Error> {
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(
            codes::INVALID_JSON,
            format!("not a Supabase webhook payload: {e}"),
        )
    })?;
    let new_job = payload.kind.eq_ignore_ascii_case("INSERT")
        && payload.table == "generation_jobs"
        && payload.schema.as_deref().is_none_or(|s| s == "public");
    let job_id = payload
        .record
        .and_then(|r| r.id)
        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()));
    Ok(Delivery { new_job, job_id })
}

/// Is this delivery an insert into generation_jobs? Malformed bodies are errors.
#[cfg(test)]
fn is_new_job(body: &[u8]) -> Result<bool, Error> {
    read_delivery(body).map(|d| d.new_job)
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
    body: Body,
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
    // Read only now, after the secret: strangers cannot make us buffer 2 MiB.
    let body = axum::body::to_bytes(body, WEBHOOK_BODY_LIMIT)
        .await
        .map_err(|_| {
            metrics.webhooks.with_label_values(&["rejected"]).inc();
            ApiError(Error::new(
                Kind::TooLarge,
                codes::PAYLOAD_TOO_LARGE,
                "webhook body over 2 MiB (or not fully received)",
            ))
        })?;
    let delivery = read_delivery(&body).map_err(|e| {
        metrics.webhooks.with_label_values(&["malformed"]).inc();
        ApiError(e)
    })?;
    if !delivery.new_job {
        metrics.webhooks.with_label_values(&["ignored"]).inc();
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "woken": false})),
        ));
    }
    metrics.webhooks.with_label_values(&["woken"]).inc();
    tracing::debug!(job_id = ?delivery.job_id, "webhook: new job");
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

    #[test]
    fn reads_only_the_id_of_a_row_at_any_depth() {
        let id = uuid::Uuid::new_v4();
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(
            r#"{{"type":"INSERT","table":"generation_jobs","schema":"public","record":{{"input":{{"x":{deep}}},"n":1e999,"id":"{id}"}},"old_record":null}}"#
        );
        assert_eq!(
            read_delivery(body.as_bytes()).unwrap(),
            Delivery {
                new_job: true,
                job_id: Some(id)
            }
        );
        let minimal =
            format!(r#"{{"type":"INSERT","table":"generation_jobs","record":{{"id":"{id}"}}}}"#);
        assert_eq!(read_delivery(minimal.as_bytes()).unwrap().job_id, Some(id));
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
