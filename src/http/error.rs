//! The HTTP face of [`crate::error::Error`]: `{"error": {"code", "message", "details"?}}`
//! with the status its kind implies. Internal detail travels to the logging
//! middleware in a response extension and never into the body.

use crate::error::{codes, Error, Kind};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Invalid => StatusCode::BAD_REQUEST,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What the logging middleware learns about a failed request.
#[derive(Clone)]
struct Logged {
    code: crate::error::Code,
    internal: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = status_of(e.kind);
        let mut body = json!({"error": {"code": e.code, "message": e.message}});
        if let Some(details) = e.details {
            body["error"]["details"] = details;
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = e.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Logged {
            code: e.code,
            internal: e.internal,
        });
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let e = match &r {
            JsonRejection::MissingJsonContentType(_) => Error::invalid(
                codes::INVALID_JSON,
                "send the body as JSON (Content-Type: application/json)",
            ),
            JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Error::new(
                    Kind::TooLarge,
                    codes::PAYLOAD_TOO_LARGE,
                    "the request body is too large",
                )
            }
            JsonRejection::JsonSyntaxError(_) => {
                Error::invalid(codes::INVALID_JSON, "the body is not valid JSON")
            }
            _ => Error::invalid(codes::INVALID_REQUEST, r.body_text()),
        };
        Self(e)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self(Error::invalid(codes::INVALID_REQUEST, r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self(Error::invalid(codes::INVALID_REQUEST, r.body_text()))
    }
}

/// Log every failed request once, here, with its code and internal detail.
pub async fn log_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(logged) = response.extensions().get::<Logged>() {
        let status = response.status().as_u16();
        let detail = logged.internal.as_deref().unwrap_or("");
        if status >= 500 {
            tracing::error!(%method, %path, status, code = %logged.code, detail, "request failed");
        } else {
            tracing::info!(%method, %path, status, code = %logged.code, detail, "request refused");
        }
    }
    response
}

/// The response for a handler that panicked: opaque to the caller, logged in full.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(%detail, "handler panicked");
    ApiError(Error::internal(detail)).into_response()
}
