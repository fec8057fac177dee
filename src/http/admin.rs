//! The SuperAdmin page at /admin: one HTML page, its ES modules and its style sheet,
//! embedded in the binary (no build step, nothing fetched from elsewhere). The modules
//! include the React app's own API client (`supabase/client/engines.js`), so the page
//! runs the same tested code rather than a copy.
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
const APP_CSS: &str = include_str!("admin/app.css");

/// The page's JavaScript modules as (URL path, source): the one list the routes are
/// built from and the import check below reads, so a module renamed or added without
/// its line here fails a unit test instead of the page. `main.js` is the entry
/// (index.html's `<script type="module">`); the others are imported by relative path.
const MODULES: &[(&str, &str)] = &[
    ("/admin/main.js", include_str!("admin/main.js")),
    ("/admin/api.js", include_str!("admin/api.js")),
    (
        "/admin/assignments.js",
        include_str!("admin/assignments.js"),
    ),
    ("/admin/bulk.js", include_str!("admin/bulk.js")),
    ("/admin/deploy.js", include_str!("admin/deploy.js")),
    ("/admin/dom.js", include_str!("admin/dom.js")),
    ("/admin/engines.js", include_str!("admin/engines.js")),
    (
        "/admin/generations.js",
        include_str!("admin/generations.js"),
    ),
    ("/admin/messages.js", include_str!("admin/messages.js")),
    ("/admin/session.js", include_str!("admin/session.js")),
    ("/admin/state.js", include_str!("admin/state.js")),
    ("/admin/tabs.js", include_str!("admin/tabs.js")),
    ("/admin/timeline.js", include_str!("admin/timeline.js")),
    ("/admin/versions.js", include_str!("admin/versions.js")),
    (
        "/admin/client/engines.js",
        include_str!("../../supabase/client/engines.js"),
    ),
];

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
    let router = Router::new()
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route("/admin/app.css", get(styles))
        .route("/admin/dev-users", get(move || dev_users(dev.clone())));
    MODULES.iter().fold(router, |router, &(path, source)| {
        router.route(path, get(move || module(source)))
    })
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

async fn module(source: &'static str) -> Response {
    asset("text/javascript; charset=utf-8", source)
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
    use std::collections::BTreeSet;

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
        assert!(body.contains("/admin/main.js") && body.contains("/admin/app.css"));

        let (status, ct, _) = get(&format!("{base}/admin/app.css")).await;
        assert_eq!((status, ct.as_str()), (200, "text/css; charset=utf-8"));

        // Every module, with the page's headers: a browser runs a module only when it
        // comes with a JavaScript type, and the CSP's script-src 'self' admits it.
        for (path, source) in MODULES {
            let resp = reqwest::get(format!("{base}{path}"))
                .await
                .expect("request");
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            assert_eq!(header("content-type"), "text/javascript; charset=utf-8");
            assert_eq!(header("cache-control"), "no-cache", "{path}");
            assert_eq!(header("content-security-policy"), CSP, "{path}");
            assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
            assert_eq!(resp.text().await.unwrap_or_default(), *source, "{path}");
        }
        // The page's client is the React app's, not a copy.
        let (_, _, client) = get(&format!("{base}/admin/client/engines.js")).await;
        assert!(client.contains("export function createEngineClient"));

        let resp = reqwest::get(format!("{base}/admin"))
            .await
            .expect("request");
        let csp = resp.headers().get("content-security-policy");
        assert!(csp.is_some_and(|v| v.to_str().unwrap_or("").contains("script-src 'self'")));
    }

    #[test]
    fn the_assets_reach_nothing_outside_this_service() {
        let modules = MODULES.iter().map(|(_, source)| *source);
        for text in [INDEX_HTML, APP_CSS].into_iter().chain(modules) {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("@import") && !text.contains("<script>"));
        }
        assert!(INDEX_HTML.contains("aria-live"));
        assert!(INDEX_HTML.contains("local development only"));
    }

    /// The module specifiers of `source`'s static `import ... from '...'`,
    /// `import '...'` and `export ... from '...'` statements (each ends at its `;`).
    fn specifiers(source: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut offset = 0;
        for line in source.split_inclusive('\n') {
            let start = offset + (line.len() - line.trim_start().len());
            offset += line.len();
            let code = line.trim_start();
            let import = code.starts_with("import ")
                || code.starts_with("import{")
                || code.starts_with("import'")
                || code.starts_with("import\"");
            let reexport = code.starts_with("export {")
                || code.starts_with("export{")
                || code.starts_with("export *");
            if !import && !reexport {
                continue;
            }
            let rest = &source[start..];
            let statement = rest[..rest.find(';').unwrap_or(rest.len())].trim_end();
            // `export { a, b };` names local bindings: no module.
            let Some(quote) = statement.chars().last().filter(|c| *c == '\'' || *c == '"') else {
                assert!(
                    reexport && !statement.contains(" from"),
                    "an import that does not end in a quoted specifier and `;`: {statement}"
                );
                continue;
            };
            let body = &statement[..statement.len() - 1];
            let Some(open) = body.rfind(quote) else {
                panic!("unbalanced quotes in: {statement}");
            };
            out.push(body[open + 1..].to_owned());
        }
        out
    }

    /// The served path `specifier` names when imported by the module at `from`; None
    /// for what a browser cannot load without an import map (bare names, URLs).
    fn resolve(from: &str, specifier: &str) -> Option<String> {
        let mut parts: Vec<&str> = if specifier.starts_with('/') {
            Vec::new()
        } else if specifier.starts_with("./") || specifier.starts_with("../") {
            let dir = from
                .rsplit_once('/')
                .map(|(dir, _)| dir)
                .unwrap_or_default();
            dir.split('/').filter(|s| !s.is_empty()).collect()
        } else {
            return None;
        };
        for segment in specifier.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                s => parts.push(s),
            }
        }
        Some(format!("/{}", parts.join("/")))
    }

    /// index.html's `<script type="module" src="...">`.
    fn entry_modules() -> Vec<&'static str> {
        INDEX_HTML
            .split("<script")
            .skip(1)
            .filter_map(|tag| tag.split('>').next())
            .filter(|tag| tag.contains("type=\"module\""))
            .filter_map(|tag| tag.split("src=\"").nth(1)?.split('"').next())
            .collect()
    }

    #[test]
    fn every_import_resolves_to_a_served_module_and_every_module_is_used() {
        let served: BTreeSet<&str> = MODULES.iter().map(|(path, _)| *path).collect();
        assert_eq!(served.len(), MODULES.len(), "a module is listed twice");
        let entries = entry_modules();
        assert_eq!(entries, ["/admin/main.js"], "index.html's module scripts");
        // Follow the imports from the entry: each must be served, and each served
        // module must be reached (a module left in the list unused is a stale name).
        let mut reached: BTreeSet<String> = entries.iter().map(|e| e.to_string()).collect();
        let mut queue: Vec<String> = reached.iter().cloned().collect();
        while let Some(path) = queue.pop() {
            let Some((_, source)) = MODULES.iter().find(|(p, _)| *p == path) else {
                panic!("{path} is not a served module; served: {served:?}");
            };
            for specifier in specifiers(source) {
                let target = resolve(&path, &specifier);
                let Some(target) = target.filter(|t| served.contains(t.as_str())) else {
                    panic!(
                        "{path} imports '{specifier}', which is not a served module \
                         (add it to MODULES in src/http/admin.rs); served: {served:?}"
                    );
                };
                if reached.insert(target.clone()) {
                    queue.push(target);
                }
            }
        }
        let unused: Vec<_> = served.iter().filter(|p| !reached.contains(**p)).collect();
        assert!(unused.is_empty(), "served but never imported: {unused:?}");
        // Nothing imported at run time, which this check could not follow.
        for (path, source) in MODULES {
            assert!(!source.contains("import("), "{path} has a dynamic import");
        }
    }

    #[test]
    fn the_import_reader_reads_every_form_and_skips_comments() {
        let source = r#"// import { not } from './commented.js';
import { a, b } from './a.js';
import {
  c,
  d,
} from "../up/c.js";
import './side-effect.js';
import * as all from '/admin/all.js';
export { e } from './e.js';
export * from './star.js';
export { f, g };
/*
 * import { nor } from './block.js';
 */
const x = import.meta.url;
export function h() { return "from './not-a-statement.js'"; }
"#;
        assert_eq!(
            specifiers(source),
            [
                "./a.js",
                "../up/c.js",
                "./side-effect.js",
                "/admin/all.js",
                "./e.js",
                "./star.js"
            ]
        );
        let from = "/admin/main.js";
        assert_eq!(resolve(from, "./x.js").as_deref(), Some("/admin/x.js"));
        assert_eq!(
            resolve(from, "./client/engines.js").as_deref(),
            Some("/admin/client/engines.js")
        );
        assert_eq!(
            resolve("/admin/client/engines.js", "../dom.js").as_deref(),
            Some("/admin/dom.js")
        );
        assert_eq!(resolve(from, "/admin/y.js").as_deref(), Some("/admin/y.js"));
        assert_eq!(resolve(from, "../../../z.js"), None);
        assert_eq!(resolve(from, "playwright-core"), None);
        assert_eq!(resolve(from, "https://cdn.example/x.js"), None);
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
