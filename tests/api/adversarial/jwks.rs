//! JWKS (#13, item 3): tokens with made-up `kid`s cannot make the service fetch the
//! key set more than once a minute, nor stall valid tokens while a fetch hangs; the
//! set is refreshed on a timer (keys that left it are dropped) and failures back off.
//! The JWKS is served by a local HTTP server that counts fetches and can be slowed
//! down or broken.

use crate::kit::service::{serve_config, Service};
use crate::kit::stack::{Stack, ES256_PRIVATE_PEM};
use bookengine::auth::{JwksPolicy, JwksSource, JwtVerifier};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OK: u8 = 0;
const SLOW: u8 = 1;
const DOWN: u8 = 2;

/// A JWKS endpoint: serves `body`, answering at once, after 10 s, or 503.
#[derive(Clone)]
struct JwksServer {
    url: String,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<String>>,
}

impl JwksServer {
    async fn start() -> JwksServer {
        let server = JwksServer {
            url: String::new(),
            mode: Arc::new(AtomicU8::new(OK)),
            hits: Arc::default(),
            body: Arc::new(Mutex::new(
                include_str!("../../fixtures/jwks-test.json").to_owned(),
            )),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = server.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let s = s.clone();
                async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    match s.mode.load(Ordering::SeqCst) {
                        SLOW => tokio::time::sleep(Duration::from_secs(10)).await,
                        DOWN => {
                            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new())
                        }
                        _ => {}
                    }
                    let body = s.body.lock().unwrap().clone();
                    (axum::http::StatusCode::OK, body)
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://127.0.0.1:{port}/jwks.json"),
            ..server
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

fn es256(sub: uuid::Uuid, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = json!({"sub": sub, "role": "authenticated", "aud": "authenticated",
                        "exp": chrono::Utc::now().timestamp() + 600});
    encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(ES256_PRIVATE_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Through the API, 1,000 random-`kid` tokens while the JWKS endpoint hangs for 10 s:
/// one fetch in all, every random token refused quickly, valid tokens unaffected.
#[tokio::test]
async fn random_kids_neither_force_fetches_nor_stall_valid_tokens() {
    // PostgREST verifies the ES256 tokens too (its JWKS holds the test key).
    let stack = Stack::start_with(true).await;
    let jwks = JwksServer::start().await;
    let mut config = serve_config(&stack);
    config.auth = bookengine::config::AuthConfig {
        jwt_secret: None,
        jwks_url: Some(jwks.url.clone()),
    };
    let service = Service::start(&config).await.expect("start the service");
    let base = service.address.clone();
    assert_eq!(jwks.hits(), 1, "loaded once at start");

    let user = stack.user(Some("pro"), false).await;
    let valid = es256(user.id, "test-es256");
    let http = reqwest::Client::new();
    // /v1/me/engine verifies the token, then asks PostgREST as the user.
    let call = |token: String| {
        let http = http.clone();
        let url = format!("{base}/v1/me/engine");
        async move {
            let t = Instant::now();
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body, t.elapsed())
        }
    };
    let (status, body, _) = call(valid.clone()).await;
    assert_eq!(status, 404, "verified, and no engine assigned: {body}");
    assert_eq!(body["error"]["code"], "no_engine_assigned");

    jwks.set(SLOW);
    let random: Vec<_> = (0..1000)
        .map(|_| {
            let token = es256(user.id, &uuid::Uuid::new_v4().to_string());
            tokio::spawn(call(token))
        })
        .collect();
    let mut valid_slowest = Duration::ZERO;
    for _ in 0..50 {
        let (status, body, took) = call(valid.clone()).await;
        assert_eq!(status, 404, "{body}");
        valid_slowest = valid_slowest.max(took);
    }
    let mut random_slowest = Duration::ZERO;
    for r in random {
        let (status, body, took) = r.await.unwrap();
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_token");
        random_slowest = random_slowest.max(took);
    }
    eprintln!(
        "JWKS hanging 10 s, 1,000 random kids: fetches {}, slowest valid {valid_slowest:?}, \
         slowest random {random_slowest:?}",
        jwks.hits() - 1
    );
    assert_eq!(jwks.hits(), 2, "one fetch for all the unknown kids");
    // Bounds below the JWKS's 10 s hang, so they tell "waited for the hanging fetch"
    // (10 s or more; before the fix each valid request waited 20 s) from a slow machine
    // (a valid request took 2.1 s on 2 busy cores); the timed figures are in
    // benches/README.md.
    assert!(valid_slowest < Duration::from_secs(8), "{valid_slowest:?}");
    assert!(
        random_slowest < Duration::from_secs(9),
        "{random_slowest:?}"
    );

    // A minute has not passed: more unknown kids fetch nothing, even with the endpoint back.
    jwks.set(OK);
    for _ in 0..20 {
        let (status, _, _) = call(es256(user.id, &uuid::Uuid::new_v4().to_string())).await;
        assert_eq!(status, 401);
    }
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn the_key_set_is_refreshed_on_a_timer_drops_removed_keys_and_backs_off() {
    let jwks = JwksServer::start().await;
    let policy = JwksPolicy {
        refresh_every: Duration::from_millis(300),
        unknown_kid_interval: Duration::from_secs(60),
        unknown_kid_wait: Duration::from_millis(250),
        backoff_first: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        fetch_timeout: Duration::from_secs(2),
    };
    let v = JwtVerifier::with_policy(None, Some(JwksSource::parse(&jwks.url)), policy)
        .await
        .unwrap();
    let user = uuid::Uuid::new_v4();
    let token = es256(user, "test-es256");
    assert!(v.verify(&token).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let healthy = jwks.hits();
    assert!(
        healthy >= 3,
        "refreshed on the timer: {healthy} fetches in 1 s"
    );

    // The endpoint fails: fetches back off (200, 400, 800 ms, then every 1 s) and the
    // keys already held keep verifying.
    jwks.set(DOWN);
    let before = jwks.hits();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let failed = jwks.hits() - before;
    assert!(
        (2..=5).contains(&failed),
        "{failed} fetches in 2.6 s (every 300 ms would be 8)"
    );
    assert!(
        v.verify(&token).await.is_ok(),
        "keys survive a failing endpoint"
    );

    // The key leaves the set: it is dropped at the next refresh.
    *jwks.body.lock().unwrap() = r#"{"keys": []}"#.into();
    jwks.set(OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !v.key_ids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "key still held: {:?}",
            v.key_ids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = v
        .verify(&token)
        .await
        .expect_err("a removed key verifies nothing");
    assert_eq!(e.code, "invalid_token");

    // It comes back (rotation back): picked up by the timer.
    *jwks.body.lock().unwrap() = include_str!("../../fixtures/jwks-test.json").into();
    let deadline = Instant::now() + Duration::from_secs(5);
    while v.key_ids() != ["test-es256"] {
        assert!(
            Instant::now() < deadline,
            "key not picked up: {:?}",
            v.key_ids()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(v.verify(&token).await.is_ok());
}
