//! Token verification while the JWKS endpoint misbehaves (#13, item 3): latency of
//! requests with a valid ES256 token, through the HTTP API, while 1,000 tokens with
//! random `kid`s arrive at once and the JWKS endpoint answers in 10 s, or not at all
//! (503). Also the verifier alone (no HTTP), and how many times the JWKS was fetched.
//!
//! The route is `GET /v1/generations/not-a-uuid`: the token is verified first, then
//! the path is refused (400) before any PostgREST call, so what is timed is the HTTP
//! path and the verification. No database is needed.
//!
//! `cargo bench --bench jwks` · `BENCH_QUICK=1 cargo bench --bench jwks`

#[path = "common/mod.rs"]
mod common;

use bookengine::auth::{JwksSource, JwtVerifier};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRIVATE_PEM: &str = include_str!("../tests/fixtures/es256-test-private.pem");
const JWKS: &str = include_str!("../tests/fixtures/jwks-test.json");
const RANDOM_KIDS: usize = 1000;
const P99_TARGET_MS: f64 = 5.0;

const OK: u8 = 0;
const SLOW: u8 = 1;
const DOWN: u8 = 2;

fn main() {
    bench_main("jwks", run);
}

struct Endpoint {
    url: String,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_endpoint() -> Res<Endpoint> {
    let mode = Arc::new(AtomicU8::new(OK));
    let hits = Arc::new(AtomicUsize::new(0));
    let (m, h) = (mode.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (m, h) = (m.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                match m.load(Ordering::SeqCst) {
                    SLOW => tokio::time::sleep(Duration::from_secs(10)).await,
                    DOWN => return (axum::http::StatusCode::SERVICE_UNAVAILABLE, ""),
                    _ => {}
                }
                (axum::http::StatusCode::OK, JWKS)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Endpoint {
        url: format!("http://127.0.0.1:{port}/jwks.json"),
        mode,
        hits,
    })
}

fn es256(kid: &str) -> Res<String> {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    let claims = json!({"sub": uuid::Uuid::new_v4(), "role": "authenticated",
                        "aud": "authenticated", "exp": chrono::Utc::now().timestamp() + 3600});
    Ok(encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(PRIVATE_PEM.as_bytes())?,
    )?)
}

/// Valid-token requests at concurrency 4 for `window`, while (optionally) 1,000
/// random-kid requests are sent at once; returns (valid, random) stats.
async fn scenario(
    http: &reqwest::Client,
    url: &str,
    valid: &str,
    window: Duration,
    random: bool,
) -> Res<(Stats, Option<Stats>)> {
    let randoms = if random {
        let mut tasks = Vec::new();
        for _ in 0..RANDOM_KIDS {
            let token = es256(&uuid::Uuid::new_v4().to_string())?;
            let (http, url) = (http.clone(), url.to_owned());
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = http.get(url).bearer_auth(token).send().await;
                let ok = r.is_ok_and(|r| r.status().as_u16() == 401);
                (ms(t.elapsed()), ok)
            }));
        }
        Some(tasks)
    } else {
        None
    };
    let (http2, url2, token) = (http.clone(), url.to_owned(), valid.to_owned());
    let sample = run_load(4, usize::MAX, window, move |_, _| {
        let (http, url, token) = (http2.clone(), url2.clone(), token.clone());
        async move {
            // Verified, then the path is refused: 400 means the token passed.
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 400)
        }
    })
    .await;
    let random_stats = match randoms {
        Some(tasks) => {
            let mut lat = Vec::new();
            let mut errors = 0;
            for t in tasks {
                let (l, ok) = t.await?;
                lat.push(l);
                errors += usize::from(!ok);
            }
            let mut s = Stats::of_ms(&lat);
            s.errors = errors;
            Some(s)
        }
        None => None,
    };
    Ok((Stats::of(&sample), random_stats))
}

/// The service verifying with the JWKS at `jwks_url`; returns the URL of the timed route.
async fn serve(jwks_url: &str) -> Res<String> {
    let config = bookengine::http::ServeConfig {
        addr: "127.0.0.1:0".into(),
        webhook_secret: None,
        // Never reached: the route refuses the path before any PostgREST call.
        supabase: bookengine::config::SupabaseConfig {
            postgrest_url: Some("http://127.0.0.1:9".parse()?),
            ..Default::default()
        },
        auth: bookengine::config::AuthConfig {
            jwt_secret: None,
            jwks_url: Some(jwks_url.to_owned()),
        },
        no_worker: true,
        worker: Default::default(),
        providers: Default::default(),
        ops: Default::default(),
    };
    let app = bookengine::http::Application::build(&config).await?;
    let url = format!("http://127.0.0.1:{}/v1/generations/not-a-uuid", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    Ok(url)
}

async fn run() -> Res<()> {
    let window = if quick() {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(5)
    };
    let endpoint = jwks_endpoint().await?;
    let http = reqwest::Client::new();
    let valid = es256("test-es256")?;
    println!("jwks: valid ES256 requests at concurrency 4 for {window:?}, through HTTP (auth only); a fresh service per row");

    for (label, mode, random) in [
        ("JWKS healthy, no random kids", OK, false),
        ("JWKS answering in 10 s + 1,000 random kids", SLOW, true),
        ("JWKS down (503) + 1,000 random kids", DOWN, true),
    ] {
        // A fresh service (it loads the JWKS at start), so no row inherits a fetch.
        endpoint.mode.store(OK, Ordering::SeqCst);
        let url = serve(&endpoint.url).await?;
        endpoint.mode.store(mode, Ordering::SeqCst);
        let before = endpoint.hits.load(Ordering::SeqCst);
        let (v, r) = scenario(&http, &url, &valid, window, random).await?;
        let fetches = endpoint.hits.load(Ordering::SeqCst) - before;
        println!("{}", v.line(&format!("valid: {label}")));
        if let Some(r) = &r {
            println!("{}", r.line("  random-kid requests (401 each)"));
        }
        println!("  JWKS fetches during the run: {fetches}");
        println!("  valid p99: {}", verdict_max(v.p99, P99_TARGET_MS, " ms"));
    }

    // The verifier alone, while a fresh verifier's first unknown kid hangs on the fetch.
    endpoint.mode.store(OK, Ordering::SeqCst);
    let verifier = JwtVerifier::new(None, Some(JwksSource::parse(&endpoint.url))).await?;
    endpoint.mode.store(SLOW, Ordering::SeqCst);
    let v2 = verifier.clone();
    let randoms: Vec<_> = (0..RANDOM_KIDS)
        .map(|_| {
            let v = v2.clone();
            let token = es256(&uuid::Uuid::new_v4().to_string());
            tokio::spawn(async move {
                if let Ok(t) = token {
                    let _ = v.verify(&t).await;
                }
            })
        })
        .collect();
    let mut lat = Vec::new();
    let until = Instant::now() + window;
    while Instant::now() < until {
        let t = Instant::now();
        let ok = verifier.verify(&valid).await.is_ok();
        lat.push(ms(t.elapsed()));
        if !ok {
            return Err("a valid token was refused".into());
        }
        tokio::task::yield_now().await;
    }
    for t in randoms {
        let _ = t.await;
    }
    let s = Stats::of_ms(&lat);
    println!("{}", s.line("verifier only, JWKS 10 s + 1,000 random kids"));
    println!("  verify p99: {}", verdict_max(s.p99, P99_TARGET_MS, " ms"));
    Ok(())
}
