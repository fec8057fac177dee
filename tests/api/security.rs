//! The security matrix on the service: every /v1 route against bad tokens and
//! other users' ids, and no secret in the logs of a real `serve` process.

use crate::kit::app::{book_setup, spawn_app};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::request_book;
use crate::kit::mock_llm::{Fault, Mocks, OPENAI_KEY};
use crate::kit::stack::Stack;
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn routes(engine: &str, assignment: &str, job: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, "/v1/engines".into(), None),
        (
            Method::POST,
            "/v1/engines".into(),
            Some(crate::kit::flows::example_flow()),
        ),
        (Method::GET, format!("/v1/engines/{engine}"), None),
        (
            Method::PATCH,
            format!("/v1/engines/{engine}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/v1/engines/{engine}"), None),
        (Method::GET, "/v1/assignments".into(), None),
        (
            Method::POST,
            "/v1/assignments".into(),
            Some(json!({"engine_id": engine, "tier": "hobby"})),
        ),
        (
            Method::POST,
            "/v1/assignments/bulk".into(),
            Some(json!({"engine_ids": [engine], "tiers": ["hobby"]})),
        ),
        (
            Method::PATCH,
            format!("/v1/assignments/{assignment}"),
            Some(json!({"priority": 1})),
        ),
        (
            Method::DELETE,
            format!("/v1/assignments/{assignment}"),
            None,
        ),
        (Method::GET, "/v1/me/engines".into(), None),
        (Method::GET, "/v1/me/engine".into(), None),
        (Method::GET, "/v1/generations".into(), None),
        (
            Method::POST,
            "/v1/generations".into(),
            Some(json!({"input": {}})),
        ),
        (Method::GET, format!("/v1/generations/{job}"), None),
        (
            Method::POST,
            format!("/v1/generations/{job}/cancel"),
            Some(json!({})),
        ),
        (Method::GET, format!("/v1/generations/{job}/events"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_tokens_and_other_users_ids() {
    let app = spawn_app().await;
    let (admin, pro, engine) = book_setup(&app).await;
    let (_, a) = app
        .get(&format!("/v1/assignments?engine_id={engine}"), &admin.token)
        .await;
    let assignment = a[0]["id"].as_str().unwrap().to_owned();
    let (s, job) = request_book(&app, &pro, "mine").await;
    assert_eq!(s, 202);
    let job = job["id"].as_str().unwrap().to_owned();
    let engine = engine.to_string();

    let now = chrono::Utc::now().timestamp();
    let secret = app.stack.jwt_secret.expose().as_bytes().to_vec();
    let sign = |claims: Value, key: &[u8]| {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
    };
    let user_claims = |exp: i64| json!({"sub": pro.id, "role": "authenticated", "exp": exp});
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let bad_tokens: Vec<(&str, Option<String>, u16)> = vec![
        ("no token", None, 401),
        ("expired", Some(sign(user_claims(now - 600), &secret)), 401),
        (
            "wrong key",
            Some(sign(
                user_claims(now + 600),
                b"another-secret-another-secret-another",
            )),
            401,
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT"})),
                b64(user_claims(now + 600))
            )),
            401,
        ),
        ("malformed", Some("abc.def".into()), 401),
        (
            "forged service_role",
            Some(sign(
                json!({"role": "service_role", "exp": now + 600}),
                b"another-secret-another-secret-another",
            )),
            401,
        ),
        // A real service key is not a person: the API refuses it.
        (
            "service role key",
            Some(app.stack.service_key.expose().to_owned()),
            403,
        ),
        (
            "anon key",
            Some(app.stack.anon_key.expose().to_owned()),
            403,
        ),
    ];
    for (method, path, body) in routes(&engine, &assignment, &job) {
        for (what, token, expected) in &bad_tokens {
            let (s, b) = app
                .call(method.clone(), &path, token.as_deref(), body.clone())
                .await;
            assert_eq!(s, *expected, "{method} {path} with {what}: {b}");
            assert!(
                b["error"]["code"].is_string(),
                "{method} {path} with {what}: {b}"
            );
        }
    }

    // Another user, with a valid token, learns nothing about ids that are not theirs.
    let other = app.stack.user(Some("hobby"), false).await;
    let idor: Vec<(Method, String, Option<Value>, &[u16])> = vec![
        (Method::GET, format!("/v1/engines/{engine}"), None, &[404]),
        (
            Method::PATCH,
            format!("/v1/engines/{engine}"),
            Some(json!({"name": "x"})),
            &[404],
        ),
        (
            Method::DELETE,
            format!("/v1/engines/{engine}"),
            None,
            &[404],
        ),
        (
            Method::PATCH,
            format!("/v1/assignments/{assignment}"),
            Some(json!({"priority": 1})),
            &[404],
        ),
        (
            Method::DELETE,
            format!("/v1/assignments/{assignment}"),
            None,
            &[404],
        ),
        (Method::GET, format!("/v1/generations/{job}"), None, &[404]),
        (
            Method::POST,
            format!("/v1/generations/{job}/cancel"),
            Some(json!({})),
            &[404],
        ),
        (
            Method::GET,
            format!("/v1/generations/{job}/events"),
            None,
            &[404],
        ),
        (
            Method::POST,
            "/v1/assignments".into(),
            Some(json!({"engine_id": engine, "user_id": other.id})),
            &[403],
        ),
    ];
    for (method, path, body, allowed) in idor {
        let (s, b) = app
            .call(method.clone(), &path, Some(&other.token), body)
            .await;
        assert!(
            allowed.contains(&s),
            "{method} {path} as another user: {s} {b}"
        );
    }
    let (_, list) = app.get("/v1/generations", &other.token).await;
    assert_eq!(list, json!([]));
    let (_, list) = app.get("/v1/engines", &other.token).await;
    assert_eq!(list, json!([]));
    // Nothing changed.
    let (_, e) = app
        .get(&format!("/v1/engines/{engine}"), &admin.token)
        .await;
    assert_eq!(e["name"], crate::kit::flows::example_flow()["name"]);
    let (_, j) = app.get(&format!("/v1/generations/{job}"), &pro.token).await;
    assert_eq!(j["cancel_requested"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_a_serve_process() {
    let stack = Stack::start().await;
    let mocks = Mocks::start().await;
    // The provider echoes a request's key back in its 401 body, as some do.
    mocks.openai.always(Some(Fault::Status(401)));
    let admin = stack.admin().await;
    let pro = stack.user(Some("pro"), false).await;
    let port = bookengine::devstack::free_port().unwrap();
    let webhook = "whsec-0123456789-abcdefghij";
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace,hyper=debug,reqwest=debug")
        .env("BOOKENGINE_ADDR", format!("127.0.0.1:{port}"))
        .env("POSTGREST_URL", &stack.rest_url)
        .env("SUPABASE_JWT_SECRET", stack.jwt_secret.expose())
        .env("SUPABASE_ANON_KEY", stack.anon_key.expose())
        .env("SUPABASE_SERVICE_ROLE_KEY", stack.service_key.expose())
        .env("WEBHOOK_SECRET", webhook)
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENAI_BASE_URL", &mocks.openai.base_url)
        .env("BOOKENGINE_POLL_INTERVAL_MS", "100")
        .env("BOOKENGINE_BACKOFF_MS", "10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut flow = crate::kit::flows::example_flow();
    for s in flow["steps"].as_array_mut().unwrap() {
        s["configuration"]["provider"] = json!("openai");
        s["configuration"]["fallbacks"] = json!([]);
    }
    let served = Served {
        base: base.clone(),
        http: http.clone(),
    };
    let (s, engine) = served.post("/v1/engines", &admin.token, flow).await;
    assert_eq!(s, 201);
    let assignment = json!({"engine_id": engine["id"], "tier": "pro"});
    served
        .post("/v1/assignments", &admin.token, assignment)
        .await;
    let topic = json!({"input": {"topic": "secrets"}});
    let (_, job) = served.post("/v1/generations", &pro.token, topic).await;
    // Failures of every kind: bad tokens, a bad webhook secret, a provider refusing the key.
    served.get("/v1/engines", "garbage.token.here").await;
    http.post(format!("{base}/webhooks/generation"))
        .bearer_auth("wrong")
        .body("{}")
        .send()
        .await
        .unwrap();
    let delivery =
        json!({"type": "INSERT", "table": "generation_jobs", "record": {"id": job["id"]}});
    served.post("/webhooks/generation", webhook, delivery).await;
    let id = job["id"].as_str().unwrap();
    let mut status = String::new();
    for _ in 0..100 {
        let (_, j) = served
            .get(&format!("/v1/generations/{id}"), &pro.token)
            .await;
        status = j["status"].as_str().unwrap_or_default().to_owned();
        if status == "failed" {
            assert!(!j.to_string().contains(OPENAI_KEY));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "failed");
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.len() > 1000,
        "expected verbose logs, got {} bytes",
        logs.len()
    );
    for (what, secret) in [
        ("jwt secret", stack.jwt_secret.expose()),
        ("service role key", stack.service_key.expose()),
        ("anon key", stack.anon_key.expose()),
        ("provider key", OPENAI_KEY),
        ("webhook secret", webhook),
        ("admin token", admin.token.as_str()),
        ("user token", pro.token.as_str()),
    ] {
        // A JWT's signature part is the part that must never leak.
        let needle = secret.rsplit('.').next().unwrap_or(secret);
        assert!(!logs.contains(needle), "the {what} appears in the logs");
    }
}

/// A `bookengine serve` child process, called over HTTP.
struct Served {
    base: String,
    http: reqwest::Client,
}

impl JsonCalls for Served {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }
}
