//! Supabase's 2026 API keys (`sb_publishable_…`, `sb_secret_…`): the local development
//! gateway enforces the hosted gateway's rules, and `serve` given only SUPABASE_URL and
//! the new keys generates a book end to end through it.

use crate::kit::flows::example_flow;
use crate::kit::stack::{Stack, ES256_PRIVATE_PEM};
use bookengine::devstack::gateway::GatewayStats;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn get(
    http: &reqwest::Client,
    url: &str,
    apikey: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = http.get(url);
    if let Some(k) = apikey {
        req = req.header("apikey", k);
    }
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_enforces_the_new_keys_rules() {
    let stack = Stack::start().await;
    let engine = stack.engine_fixture("visible to the service role only", true);
    let engine = engine.await;
    let http = &stack.http;
    let engines = format!("{}/rest/v1/ai_engines?select=id", stack.supabase_url);
    let publishable = stack.publishable_key.expose();
    let secret = stack.secret_key.expose();

    // What the design avoids: PostgREST itself refuses an opaque key as a bearer.
    let (s, body) = get(
        http,
        &format!("{}/ai_engines", stack.rest_url),
        None,
        Some(secret),
    )
    .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (401, Some("PGRST301")),
        "{body}"
    );

    let (s, body) = get(http, &engines, None, None).await;
    assert_eq!(s, 401, "no apikey: {body}");
    assert_eq!(body["message"], "No API key found in request");
    let (s, body) = get(
        http,
        &engines,
        Some("sb_publishable_not-this-project"),
        None,
    )
    .await;
    assert_eq!(s, 401, "unknown apikey: {body}");
    assert_eq!(body["message"], "Invalid API key");

    // The publishable key alone is the anon role: RLS shows anon no engine.
    let (s, body) = get(http, &engines, Some(publishable), None).await;
    assert_eq!((s, body.clone()), (200, json!([])), "publishable: {body}");
    // supabase-js without a session repeats the apikey as the bearer: the same.
    let (s, body) = get(http, &engines, Some(publishable), Some(publishable)).await;
    assert_eq!((s, body.clone()), (200, json!([])), "key as bearer: {body}");
    // The secret key alone is the service role, which bypasses RLS.
    let (s, body) = get(http, &engines, Some(secret), None).await;
    assert_eq!(s, 200, "secret: {body}");
    assert_eq!(body, json!([{ "id": engine }]));
    // An opaque key in Authorization (other than the apikey itself) is refused.
    for (apikey, bearer) in [(publishable, secret), (secret, "sb_secret_elsewhere")] {
        let (s, body) = get(http, &engines, Some(apikey), Some(bearer)).await;
        assert_eq!(s, 401, "{body}");
        assert_eq!(body["code"], "PGRST301");
        assert!(
            !body.to_string().contains(secret),
            "a key was echoed: {body}"
        );
    }
    // A person's JWT goes through unchanged: an admin sees the engine.
    let admin = stack.admin().await;
    let (s, body) = get(http, &engines, Some(publishable), Some(&admin.token)).await;
    assert_eq!(
        (s, body.clone()),
        (200, json!([{ "id": engine }])),
        "{body}"
    );

    // /auth/v1/user: the user of a valid token, and nothing for anything else.
    let user_url = format!("{}/auth/v1/user", stack.supabase_url);
    let (s, body) = get(http, &user_url, Some(publishable), Some(&admin.token)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["id"], json!(admin.id));
    let (s, _) = get(http, &user_url, None, Some(&admin.token)).await;
    assert_eq!(s, 401, "no apikey");
    let (s, _) = get(http, &user_url, Some(publishable), Some(publishable)).await;
    assert_eq!(s, 401, "no user token");
    let forged = format!("{}x", admin.token);
    let (s, body) = get(http, &user_url, Some(publishable), Some(&forged)).await;
    assert_eq!((s, body["error_code"].as_str()), (403, Some("bad_jwt")));
    let (s, body) = get(
        http,
        &format!("{}/auth/v1/.well-known/jwks.json", stack.supabase_url),
        None,
        None,
    )
    .await;
    assert_eq!((s, body), (200, json!({"keys": []})));

    let stats = &stack.gateway.stats;
    assert_eq!(GatewayStats::get(&stats.mapped_publishable), 2);
    assert_eq!(GatewayStats::get(&stats.mapped_secret), 1);
    assert!(GatewayStats::get(&stats.refused) >= 5);
}

fn es256_token(user: Uuid) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-es256".into());
    let claims = json!({"sub": user, "role": "authenticated", "aud": "authenticated",
                        "exp": chrono::Utc::now().timestamp() + 3600});
    encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(ES256_PRIVATE_PEM.as_bytes()).expect("test key"),
    )
    .expect("sign")
}

/// Kills the serve process when the test ends, however it ends.
struct Served(tokio::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_only_the_new_keys_generates_a_book_through_the_gateway() {
    // Tokens signed with an asymmetric key (JWKS), as current projects do; the service
    // gets no JWT secret and finds the JWKS at $SUPABASE_URL/auth/v1/.well-known/jwks.json.
    let stack = Stack::start_with(true).await;
    let admin = stack.admin().await;
    let pro = stack.user(Some("pro"), false).await;
    let (admin_token, pro_token) = (es256_token(admin.id), es256_token(pro.id));
    let port = bookengine::devstack::free_port().expect("port");
    let address = format!("http://127.0.0.1:{port}");

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bookengine"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SUPABASE_URL", &stack.supabase_url)
        .env("SUPABASE_PUBLISHABLE_KEY", stack.publishable_key.expose())
        .env("SUPABASE_SECRET_KEY", stack.secret_key.expose())
        .env("BOOKENGINE_ADDR", format!("127.0.0.1:{port}"))
        // Booleans take 1/0 too.
        .env("BOOKENGINE_OFFLINE_FALLBACK", "1")
        .env("BOOKENGINE_POLL_INTERVAL_MS", "200")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut served = Served(cmd.spawn().expect("start bookengine serve"));
    let stderr = served.0.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = http
            .request(method, format!("{address}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let ready = Instant::now();
    loop {
        match http.get(format!("{address}/readyz")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if ready.elapsed() > Duration::from_secs(30) => panic!("serve did not get ready"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let (s, engine) = call(
        reqwest::Method::POST,
        "/v1/engines",
        &admin_token,
        Some(example_flow()),
    )
    .await;
    assert_eq!(s, 201, "deploy: {engine}");
    let (s, body) = call(
        reqwest::Method::POST,
        "/v1/assignments",
        &admin_token,
        Some(json!({"engine_id": engine["id"], "tier": "pro"})),
    )
    .await;
    assert_eq!(s, 200, "assign: {body}");
    let (s, job) = call(
        reqwest::Method::POST,
        "/v1/generations",
        &pro_token,
        Some(json!({"input": {"topic": "lighthouses"}})),
    )
    .await;
    assert_eq!(s, 202, "request: {job}");
    let id = job["id"].as_str().expect("job id").to_owned();
    let started = Instant::now();
    let job = loop {
        let (s, job) = call(
            reqwest::Method::GET,
            &format!("/v1/generations/{id}"),
            &pro_token,
            None,
        )
        .await;
        assert_eq!(s, 200, "{job}");
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still {job}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(!job["result"]["book"].as_str().unwrap_or("").is_empty());

    // Every call went through the gateway: people's with their JWT, the worker's with
    // the secret key alone (mapped to the service role), and none was refused.
    let stats = &stack.gateway.stats;
    assert!(GatewayStats::get(&stats.user_jwt) > 0);
    assert!(GatewayStats::get(&stats.mapped_secret) > 0);
    assert_eq!(GatewayStats::get(&stats.refused), 0);

    let _ = served.0.start_kill();
    let _ = served.0.wait().await;
    let log = log.await.expect("log");
    assert!(log.contains("bookengine listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI codes in a piped log:\n{log}");
    assert!(
        !log.contains(stack.secret_key.expose()) && !log.contains(&pro_token),
        "a secret reached the log"
    );
}
