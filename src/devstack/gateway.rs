//! DEVELOPMENT TOOL, local stack only: a thin stand-in for the Supabase API gateway, so
//! that clients built for a Supabase project (supabase-js, this service with only
//! SUPABASE_URL and the new keys) work against the local PostgREST unchanged.
//!
//! It answers where a project does:
//! * `/rest/v1/*`: proxied to the local PostgREST;
//! * `/auth/v1/user`: the user of a valid bearer JWT (what supabase-js `auth.getUser()`
//!   and `auth.setSession()` call);
//! * `/auth/v1/.well-known/jwks.json`: the public signing keys (none for HS256 only).
//!
//! and enforces the 2026 keys' rules as the hosted gateway does: an `apikey` is
//! required; an opaque `sb_publishable_`/`sb_secret_` key with no `Authorization` (or
//! with that same key as the bearer, which is what supabase-js sends without a session)
//! is replaced by an `anon`/`service_role` JWT; any other `sb_` key in `Authorization`
//! is refused with 401. It is not a security boundary: never expose it.

use crate::auth::{JwksSource, JwtVerifier};
use crate::error::{Error, Result};
use crate::secret::Secret;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the front needs to know.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The local PostgREST, e.g. http://127.0.0.1:54330.
    pub postgrest_url: String,
    /// Signs nothing here; verifies `/auth/v1/user` bearers (HS256).
    pub jwt_secret: Secret,
    /// A JWKS file with public ES256/RS256 keys, served and used to verify, if any.
    pub jwks_path: Option<PathBuf>,
    pub publishable_key: Secret,
    pub secret_key: Secret,
    /// The legacy role JWTs: accepted as `apikey` too, and what opaque keys map to.
    pub anon_key: Secret,
    pub service_role_key: Secret,
}

/// Counters a test can read: what the front mapped and refused.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Requests whose `sb_secret_` key became the service role JWT.
    pub mapped_secret: AtomicU64,
    /// Requests whose `sb_publishable_` key became the anon JWT.
    pub mapped_publishable: AtomicU64,
    /// Requests forwarded with the caller's own JWT.
    pub user_jwt: AtomicU64,
    /// Requests refused (no key, unknown key, an opaque key as bearer).
    pub refused: AtomicU64,
}

impl GatewayStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

struct Front {
    config: GatewayConfig,
    verifier: JwtVerifier,
    jwks: Value,
    http: reqwest::Client,
    stats: Arc<GatewayStats>,
}

/// What an `apikey` turned out to be.
enum Key {
    Publishable,
    Secret,
    /// A legacy JWT key (anon or service_role): passed through as the hosted gateway does.
    Legacy,
}

/// Largest request body proxied (PostgREST bodies of this service are far smaller).
const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The public half of a JWKS: no symmetric keys, no private members.
fn public_jwks(text: &str) -> Result<Value> {
    let mut set: Value = serde_json::from_str(text)
        .map_err(|e| Error::config(format!("the gateway's JWKS is not JSON: {e}")))?;
    if let Some(keys) = set["keys"].as_array_mut() {
        keys.retain(|k| k["kty"] != "oct");
        for k in keys.iter_mut() {
            if let Some(obj) = k.as_object_mut() {
                for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                    obj.remove(private);
                }
            }
        }
    }
    Ok(set)
}

/// The front as an axum router.
pub async fn router(config: GatewayConfig) -> Result<(Router, Arc<GatewayStats>)> {
    let (jwks, source) = match &config.jwks_path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::config(format!("reading the JWKS {}: {e}", path.display())))?;
            (
                public_jwks(&text)?,
                Some(JwksSource::parse(&path.display().to_string())),
            )
        }
        None => (json!({ "keys": [] }), None),
    };
    let verifier = JwtVerifier::new(Some(&config.jwt_secret), source).await?;
    let stats = Arc::new(GatewayStats::default());
    let front = Arc::new(Front {
        config,
        verifier,
        jwks,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::internal(format!("gateway HTTP client: {e}")))?,
        stats: stats.clone(),
    });
    let router = Router::new().fallback(dispatch).with_state(front);
    Ok((router, stats))
}

/// A running in-process front (the test harness): stops when dropped.
pub struct GatewayHandle {
    pub url: String,
    pub stats: Arc<GatewayStats>,
    stop: CancellationToken,
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serve the front on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    stop: CancellationToken,
) -> Result<()> {
    let (router, _) = router(config).await?;
    axum::serve(crate::net::nodelay(listener), router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(|e| Error::internal(format!("gateway: {e}")))
}

/// Start the front on a free loopback port, in this process.
pub async fn spawn(config: GatewayConfig) -> Result<GatewayHandle> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::internal(format!("gateway listener: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("gateway address: {e}")))?
        .port();
    let (router, stats) = router(config).await?;
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(crate::net::nodelay(listener), router)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await;
    });
    Ok(GatewayHandle {
        url: format!("http://127.0.0.1:{port}"),
        stats,
        stop,
    })
}

fn refuse(front: &Front, status: StatusCode, body: Value) -> Response {
    front.stats.refused.fetch_add(1, Ordering::Relaxed);
    (status, Json(body)).into_response()
}

async fn dispatch(State(front): State<Arc<Front>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if path == "/auth/v1/.well-known/jwks.json" {
        return Json(front.jwks.clone()).into_response();
    }
    if path == "/auth/v1/user" && request.method() == Method::GET {
        return user(&front, request.headers()).await;
    }
    if let Some(rest) = path.strip_prefix("/rest/v1") {
        if rest.is_empty() || rest.starts_with('/') {
            let rest = rest.to_owned();
            return proxy(&front, request, &rest).await;
        }
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "no Route matched with those values (local development gateway)"})),
    )
        .into_response()
}

/// The `apikey` header, else the `apikey` query parameter (both are accepted hosted).
fn apikey(request: &Request) -> Option<String> {
    if let Some(v) = request.headers().get("apikey") {
        return v.to_str().ok().map(|s| s.trim().to_owned());
    }
    request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "apikey")
            .map(|(_, v)| v.to_owned())
    })
}

fn classify(front: &Front, key: &str) -> Option<Key> {
    let c = &front.config;
    let is = |s: &Secret| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            s.expose().as_bytes(),
            key.as_bytes(),
        ))
    };
    if is(&c.publishable_key) {
        Some(Key::Publishable)
    } else if is(&c.secret_key) {
        Some(Key::Secret)
    } else if is(&c.anon_key) || is(&c.service_role_key) {
        Some(Key::Legacy)
    } else {
        None
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// Check the key rules; returns the bearer JWT to forward (None: forward none).
fn admit(front: &Front, request: &Request) -> std::result::Result<Option<String>, Box<Response>> {
    let Some(key) = apikey(request).filter(|k| !k.is_empty()) else {
        return Err(Box::new(refuse(
            front,
            StatusCode::UNAUTHORIZED,
            json!({"message": "No API key found in request",
                   "hint": "No `apikey` request header or url param was found."}),
        )));
    };
    let Some(kind) = classify(front, &key) else {
        return Err(Box::new(refuse(
            front,
            StatusCode::UNAUTHORIZED,
            json!({"message": "Invalid API key",
                   "hint": "Double check your Supabase `anon` or `service_role` API key."}),
        )));
    };
    let given = bearer(request.headers());
    // supabase-js without a session sends the apikey itself as the bearer: as hosted,
    // that counts as no Authorization.
    let given = given.filter(|t| *t != key);
    match (given, kind) {
        (Some(token), _) if token.starts_with("sb_") => Err(Box::new(refuse(
            front,
            StatusCode::UNAUTHORIZED,
            json!({"code": "PGRST301", "message": "Expected 3 parts in JWT; got 1",
                   "hint": "an sb_ API key belongs in the apikey header, never in Authorization (local development gateway)",
                   "details": null}),
        ))),
        (Some(token), _) => {
            front.stats.user_jwt.fetch_add(1, Ordering::Relaxed);
            Ok(Some(token))
        }
        (None, Key::Publishable) => {
            front
                .stats
                .mapped_publishable
                .fetch_add(1, Ordering::Relaxed);
            Ok(Some(front.config.anon_key.expose().to_owned()))
        }
        (None, Key::Secret) => {
            front.stats.mapped_secret.fetch_add(1, Ordering::Relaxed);
            Ok(Some(front.config.service_role_key.expose().to_owned()))
        }
        // A legacy key alone: PostgREST decides (its anon role), as behind Kong.
        (None, Key::Legacy) => Ok(None),
    }
}

/// Request headers not forwarded: hop-by-hop ones, and those the front replaces.
const DROPPED: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "upgrade",
    "authorization",
    "apikey",
];

async fn proxy(front: &Front, request: Request, rest: &str) -> Response {
    let token = match admit(front, &request) {
        Ok(t) => t,
        Err(refused) => return *refused,
    };
    let query: Vec<&str> = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("apikey="))
        .collect();
    let mut url = format!(
        "{}{}",
        front.config.postgrest_url.trim_end_matches('/'),
        if rest.is_empty() { "/" } else { rest }
    );
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"message": "request body too large"})),
            )
                .into_response()
        }
    };
    let mut forward = front.http.request(parts.method.clone(), &url);
    for (name, value) in parts.headers.iter() {
        if !DROPPED.contains(&name.as_str()) {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    if let Some(t) = token {
        forward = forward.bearer_auth(t);
    }
    let answer = match forward.body(body).send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e.without_url(), "local gateway: PostgREST unreachable");
            return (
                StatusCode::BAD_GATEWAY,
                Json(json!({"message": "PostgREST is unreachable (local development gateway)"})),
            )
                .into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if [
            "connection",
            "transfer-encoding",
            "content-length",
            "keep-alive",
        ]
        .contains(&name.as_str())
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(n, v);
        }
    }
    let bytes: Bytes = match answer.bytes().await {
        Ok(b) => Bytes::copy_from_slice(&b),
        Err(_) => return (
            StatusCode::BAD_GATEWAY,
            Json(json!({"message": "PostgREST's answer was cut off (local development gateway)"})),
        )
            .into_response(),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// GoTrue's `GET /user`, from the token alone: the user it names.
async fn user(front: &Front, headers: &HeaderMap) -> Response {
    let key = headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if key.is_empty() || classify(front, key).is_none() {
        return refuse(
            front,
            StatusCode::UNAUTHORIZED,
            json!({"message": if key.is_empty() { "No API key found in request" } else { "Invalid API key" }}),
        );
    }
    let bad = |msg: &str| {
        refuse(
            front,
            StatusCode::FORBIDDEN,
            json!({"code": 403, "error_code": "bad_jwt", "msg": msg}),
        )
    };
    let Some(token) = bearer(headers).filter(|t| !t.starts_with("sb_")) else {
        return refuse(
            front,
            StatusCode::UNAUTHORIZED,
            json!({"code": 401, "error_code": "no_authorization",
                   "msg": "This endpoint requires a valid Bearer token"}),
        );
    };
    let claims = match front.verifier.verify(&token).await {
        Ok(c) => c,
        Err(_) => return bad("invalid JWT: unable to parse or verify signature"),
    };
    let Some(id) = claims.user_id() else {
        return bad("invalid claim: missing sub claim");
    };
    Json(json!({
        "id": id,
        "aud": "authenticated",
        "role": claims.role.unwrap_or_else(|| "authenticated".into()),
        "email": claims.email.unwrap_or_default(),
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
        "identities": [],
        "is_anonymous": false,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_jwks_holds_no_secret_material() {
        let set = public_jwks(
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"EC","crv":"P-256","x":"x","y":"y","d":"private","kid":"a"}]}"#,
        )
        .expect("jwks");
        let text = set.to_string();
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("private"),
            "{text}"
        );
        assert_eq!(set["keys"].as_array().map(Vec::len), Some(1));
    }
}
