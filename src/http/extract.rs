//! Extractors whose rejections are JSON errors like every other error.

use super::error::ApiError;
use super::AppState;
use crate::error::{codes, Error};
use crate::rest::Caller;
use crate::secret::Secret;
use axum::extract::{FromRequest, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use uuid::Uuid;

/// `axum::Json`, with JSON error bodies.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with JSON error bodies.
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct Q<T>(pub T);

/// A UUID path segment; anything else is a 400 naming the parameter.
pub struct Id(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Uuid::parse_str(&raw).map(Id).map_err(|_| {
            ApiError(Error::invalid(
                codes::INVALID_REQUEST,
                "the id in the path must be a UUID",
            ))
        })
    }
}

/// A signed-in person: a verified Supabase access token for the `authenticated`
/// role with a user id. The token is forwarded to PostgREST as is.
pub struct AuthUser {
    pub id: Uuid,
    pub caller: Caller,
    /// When the token expires (unix seconds): long-lived responses end then.
    pub expires_at: i64,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::unauthenticated(
                    codes::MISSING_TOKEN,
                    "send an access token: Authorization: Bearer <jwt>",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::unauthenticated(
                    codes::MISSING_TOKEN,
                    "the Authorization header must be `Bearer <jwt>`",
                )
            })?;
        let claims = state.verifier.verify(token).await?;
        if claims.role.as_deref() != Some("authenticated") {
            return Err(Error::forbidden(
                "this API answers signed-in users; use a user's access token",
            )
            .into());
        }
        let id = claims.user_id().ok_or_else(|| {
            Error::unauthenticated(codes::INVALID_TOKEN, "the access token has no user id")
        })?;
        Ok(AuthUser {
            id,
            caller: Caller::User(Secret::new(token)),
            expires_at: claims.exp,
        })
    }
}
