//! The SuperAdmin page at /admin (placeholder: being written).

use super::AppState;
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
}
