//! The SuperAdmin page at /admin: one HTML page with its script and style sheet,
//! embedded in the binary (no build step, nothing fetched from elsewhere).
//!
//! The page holds no privilege of its own: it calls this service's `/v1` API with
//! the access token the person pastes, so Row Level Security decides what it
//! shows and what it may change.
//!
//! For the local demo stack, `GET /admin/dev-users` hands out tokens for seeded
//! users, but only when `BOOKENGINE_DEV_USERS` names a JSON file
//! `[{"label", "user_id"}]` and `SUPABASE_JWT_SECRET` is set; otherwise it is a
//! 404 like any unknown path.

use super::error::{ApiError, ApiResult};
use crate::auth::{mint, MintRequest};
use crate::error::{codes, Error, Kind};
use crate::secret::Secret;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

const INDEX_HTML: &str = include_str!("admin/index.html");
const APP_JS: &str = include_str!("admin/app.js");
const APP_CSS: &str = include_str!("admin/app.css");

/// Scripts, styles and requests from this origin only; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The setting naming the seeded-users file (local development only).
pub const DEV_USERS_ENV: &str = "BOOKENGINE_DEV_USERS";

/// What `/admin/dev-users` needs (`serve`'s `BOOKENGINE_DEV_USERS` and
/// `SUPABASE_JWT_SECRET`): unset on a deployed service, where the route is a 404.
#[derive(Debug, Clone, Default)]
pub struct DevUsers {
    pub file: Option<String>,
    pub jwt_secret: Option<Secret>,
}

/// Generic over the state so the routes can be tested without a backend.
pub fn router<S: Clone + Send + Sync + 'static>(dev: DevUsers) -> Router<S> {
    let dev = std::sync::Arc::new(dev);
    Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/app.js", get(script))
        .route("/admin/app.css", get(styles))
        .route("/admin/dev-users", get(move || dev_users(dev.clone())))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn styles() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// One line of the seeded-users file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeededUser {
    label: String,
    user_id: Uuid,
}

/// What the page gets: a ready-to-use access token per seeded user.
#[derive(Debug, Serialize)]
pub struct DevUser {
    pub label: String,
    pub user_id: Uuid,
    pub token: String,
}

async fn dev_users(dev: std::sync::Arc<DevUsers>) -> ApiResult<Response> {
    let secret = dev.jwt_secret.as_ref().map(Secret::expose);
    let users = dev_users_from(dev.file.as_deref(), secret)?;
    let mut response = axum::Json(users).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Tokens for the users listed in `file`, signed with `secret`; a 404 unless both
/// are set (so a deployed service never offers this).
pub fn dev_users_from(file: Option<&str>, secret: Option<&str>) -> Result<Vec<DevUser>, ApiError> {
    let (Some(file), Some(secret)) = (
        file.map(str::trim).filter(|f| !f.is_empty()),
        secret.filter(|s| !s.trim().is_empty()),
    ) else {
        return Err(ApiError(Error::not_found(
            codes::NOT_FOUND,
            "seeded users are offered on the local development stack only",
        )));
    };
    // The caller learns which setting to fix; the file's path and the parser's
    // words stay in the service's log.
    let misconfigured = |why: String| {
        ApiError(
            Error::new(
                Kind::Internal,
                codes::CONFIG_INVALID,
                format!("{DEV_USERS_ENV} names a seeded-users file that cannot be used; see the service's log"),
            )
            .with_internal(why),
        )
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| misconfigured(format!("cannot read {file}: {e}")))?;
    let seeded: Vec<SeededUser> = serde_json::from_str(&text).map_err(|e| {
        misconfigured(format!(
            "{file} must be a JSON array of {{\"label\", \"user_id\"}}: {e}"
        ))
    })?;
    let secret = Secret::new(secret);
    seeded
        .into_iter()
        .map(|u| {
            let token = mint(
                &secret,
                &MintRequest {
                    user: Some(u.user_id),
                    role: "authenticated".into(),
                    ttl: Duration::from_secs(3600),
                    email: None,
                },
            )
            .map_err(|e| misconfigured(format!("cannot mint a token: {}", e.message)))?;
            Ok(DevUser {
                label: u.label,
                user_id: u.user_id,
                token: token.expose().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Serve the admin routes alone on a free port; returns the base URL.
    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router::<()>(DevUsers::default())).await;
        });
        format!("http://127.0.0.1:{port}")
    }

    async fn get(url: &str) -> (u16, String, String) {
        let resp = reqwest::get(url).await.expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, content_type, resp.text().await.unwrap_or_default())
    }

    #[tokio::test]
    async fn the_page_and_its_assets_are_served_with_their_types() {
        let base = serve().await;
        let (status, ct, body) = get(&format!("{base}/admin")).await;
        assert_eq!(status, 200);
        assert_eq!(ct, "text/html; charset=utf-8");
        assert!(body.contains("<main"), "{body}");
        assert!(body.contains("/admin/app.js") && body.contains("/admin/app.css"));

        let (status, ct, body) = get(&format!("{base}/admin/app.js")).await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "text/javascript; charset=utf-8")
        );
        assert!(body.contains("/v1/engines"));

        let (status, ct, _) = get(&format!("{base}/admin/app.css")).await;
        assert_eq!((status, ct.as_str()), (200, "text/css; charset=utf-8"));

        let resp = reqwest::get(format!("{base}/admin"))
            .await
            .expect("request");
        let csp = resp.headers().get("content-security-policy");
        assert!(csp.is_some_and(|v| v.to_str().unwrap_or("").contains("script-src 'self'")));
    }

    #[test]
    fn the_assets_reach_nothing_outside_this_service() {
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("<script>"));
        }
        assert!(INDEX_HTML.contains("aria-live"));
        assert!(INDEX_HTML.contains("local development only"));
    }

    #[tokio::test]
    async fn dev_users_is_a_404_without_the_setting() {
        let base = serve().await;
        let (status, ct, body) = get(&format!("{base}/admin/dev-users")).await;
        assert_eq!(status, 404);
        assert!(ct.starts_with("application/json"), "{ct}");
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["error"]["message"].is_string());
    }

    #[test]
    fn dev_users_needs_both_the_file_and_the_secret() {
        let secret = "a-local-demo-secret-of-at-least-32-characters";
        for (file, secret) in [
            (None, None),
            (Some("/nonexistent.json"), None),
            (None, Some(secret)),
            (Some(""), Some(secret)),
        ] {
            let err = dev_users_from(file, secret).err().map(|e| e.0);
            assert_eq!(
                err.map(|e| (e.kind, e.code)),
                Some((Kind::NotFound, codes::NOT_FOUND))
            );
        }
    }

    #[tokio::test]
    async fn dev_users_mints_a_valid_token_per_seeded_user() {
        let secret = "a-local-demo-secret-of-at-least-32-characters";
        let dir = std::env::temp_dir().join(format!("bookengine-dev-users-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("users.json");
        let admin = Uuid::new_v4();
        let pro = Uuid::new_v4();
        std::fs::write(
            &file,
            format!(r#"[{{"label": "admin", "user_id": "{admin}"}}, {{"label": "pro user", "user_id": "{pro}"}}]"#),
        )
        .expect("write users");
        let users = dev_users_from(file.to_str(), Some(secret)).map_err(|e| e.0);
        let users = users.expect("dev users");
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0].label.as_str(), users[0].user_id),
            ("admin", admin)
        );
        assert_eq!(users[1].user_id, pro);

        let verifier = crate::auth::JwtVerifier::new(Some(&Secret::new(secret)), None)
            .await
            .expect("verifier");
        let claims = verifier.verify(&users[1].token).await.expect("valid token");
        assert_eq!(claims.user_id(), Some(pro));
        assert_eq!(claims.role.as_deref(), Some("authenticated"));

        // A broken file is a configuration error, and says which variable to fix.
        std::fs::write(&file, "not json").expect("write");
        let err = dev_users_from(file.to_str(), Some(secret))
            .err()
            .map(|e| e.0);
        let err = err.expect("refused");
        assert_eq!(err.code, codes::CONFIG_INVALID);
        assert!(err.message.contains(DEV_USERS_ENV), "{}", err.message);
        // The path is for the log, not for whoever called.
        let path = file.to_string_lossy();
        assert!(!err.message.contains(path.as_ref()), "{}", err.message);
        assert!(err.internal.is_some_and(|i| i.contains(path.as_ref())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
