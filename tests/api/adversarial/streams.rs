//! Event streams (#13, item 2): a stream ends soon after its token expires or its job
//! disappears; open streams are capped per user and per job; and many viewers of a
//! job share one reader, so PostgREST reads do not grow with them (counted by a
//! pass-through proxy in front of the real PostgREST).

use crate::kit::proxy::CountingProxy;
use crate::kit::service::Service;
use crate::kit::stack::Stack;
use bookengine::auth::{mint, MintRequest};
use bookengine::generations::watch::StreamConfig;
use reqwest::{Method, Url};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

// ------------------------------------------------------------------ a counting proxy

/// PostgREST reads by kind: `join` (a viewer's authorisation), `light` (the shared
/// reader's change check), `full` (job and steps, two calls, when something moved), `other`.
fn kind_of(_: &Method, path_and_query: &str) -> String {
    let Ok(url) = Url::parse(&format!("http://proxy{path_and_query}")) else {
        return "other".into();
    };
    let select = url
        .query_pairs()
        .find(|(k, _)| k == "select")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match url.path() {
        "/rpc/generation_watch" => "light",
        "/rpc/generation_get" if select == "id" => "join",
        // A full read is the job and its steps (two calls, only when something moved).
        "/rpc/generation_get" | "/rpc/generation_steps_of" => "full",
        // Text rows (#14): the reader's reads (from the beginning, then new rows each
        // delta interval while the job runs), and a viewer's own replay of rows the
        // reader no longer holds.
        "/generation_deltas" if select == "seq" => "head",
        "/generation_deltas" => "deltas",
        _ => "other",
    }
    .into()
}

/// A proxy in front of the stack's PostgREST counting reads by [`kind_of`].
pub(super) async fn reads_proxy(stack: &Stack) -> CountingProxy {
    CountingProxy::start(&stack.rest_url, kind_of)
        .await
        .expect("start the counting proxy")
}

/// The reads since the last take, by kind.
pub(super) fn take(proxy: &CountingProxy) -> BTreeMap<String, u64> {
    proxy
        .take()
        .into_iter()
        .map(|(kind, c)| (kind, c.count))
        .collect()
}

// ------------------------------------------------------------------ the service

/// The API in front of `rest_url` (PostgREST or the proxy), with these stream limits.
async fn serve(stack: &Stack, rest_url: &str, streams: StreamConfig) -> Service {
    let ops = bookengine::http::OpsConfig {
        streams,
        ..Default::default()
    };
    Service::api_via(stack, rest_url, ops).await
}

/// A queued job of `token`'s user (no worker runs: the test moves it by SQL).
async fn job_of(app: &Service, token: &str) -> Uuid {
    let r = app
        .http
        .post(format!("{}/v1/generations", app.address))
        .bearer_auth(token)
        .json(&json!({"input": {"topic": "streams"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    Uuid::parse_str(body["id"].as_str().unwrap()).unwrap()
}

/// A user of tier `pro` with an engine assigned to that tier.
async fn pro_user_with_engine(stack: &Stack) -> crate::kit::seed::TestUser {
    let engine = stack.engine_fixture("stream engine", true).await;
    stack
        .assign_fixture(engine, Some("pro"), None, 0, true)
        .await;
    stack.user(Some("pro"), false).await
}

async fn set_running(stack: &Stack, job: Uuid) {
    stack
        .pg
        .execute(
            "UPDATE generation_jobs SET status = 'running', attempt = 1, started_at = now(), \
             updated_at = now() WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
}

async fn set_progress(stack: &Stack, job: Uuid, done: i64) {
    stack
        .pg
        .execute(
            "UPDATE generation_jobs SET progress = jsonb_build_object('done', $2::bigint, 'total', 10), \
             updated_at = now() WHERE id = $1",
            &[&job, &done],
        )
        .await
        .unwrap();
}

fn short_token(stack: &Stack, user: Uuid, ttl: Duration) -> (String, i64) {
    let token = mint(
        &stack.jwt_secret,
        &MintRequest {
            user: Some(user),
            role: "authenticated".into(),
            ttl,
            email: None,
        },
    )
    .unwrap();
    (token.expose().to_owned(), unix_now() + ttl.as_secs() as i64)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ------------------------------------------------------------------ reading SSE

struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(
        app: &Service,
        job: Uuid,
        token: &str,
    ) -> Result<Sse, (u16, Option<String>, Value)> {
        let resp = app
            .http
            .get(format!("{}/v1/generations/{job}/events", app.address))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.json().await.unwrap_or(Value::Null);
            return Err((status, retry, body));
        }
        Ok(Sse {
            resp,
            buf: String::new(),
        })
    }

    /// The next event (name, JSON data), or None when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(cut) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..cut + 2).collect();
                let mut event = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    async fn next_within(&mut self, limit: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("an event (or the end) in time")
    }
}

// ------------------------------------------------------------------ the tests

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_when_its_job_disappears() {
    let stack = Stack::start().await;
    let app = serve(&stack, &stack.rest_url, StreamConfig::default()).await;
    let user = pro_user_with_engine(&stack).await;
    let job = job_of(&app, &user.token).await;
    set_running(&stack, job).await;

    // A token that expires in 3 s, on a job that runs far longer.
    let (short, exp) = short_token(&stack, user.id, Duration::from_secs(3));
    let mut expiring = Sse::open(&app, job, &short).await.expect("stream opens");
    let mut lasting = Sse::open(&app, job, &user.token)
        .await
        .expect("stream opens");
    let (event, first) = expiring.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event, "progress");
    assert_eq!(first["status"], "running");
    assert_eq!(
        lasting
            .next_within(Duration::from_secs(10))
            .await
            .unwrap()
            .0,
        "progress"
    );

    // Progress moves: both see it (the shared reader read it once).
    set_progress(&stack, job, 3).await;
    let (event, moved) = expiring.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event, "progress");
    assert_eq!(moved["progress"]["done"], 3);

    let (event, body) = expiring
        .next_within(Duration::from_secs(15))
        .await
        .expect("an error event, not a silent end");
    let ended = unix_now();
    assert_eq!(event, "error", "{body}");
    assert_eq!(body["code"], "token_expired");
    assert!(
        ended >= exp - 1,
        "ended before the token expired: {ended} < {exp}"
    );
    assert!(
        ended <= exp + 10,
        "ended {}s after the token expired",
        ended - exp
    );
    assert!(
        expiring.next_within(Duration::from_secs(5)).await.is_none(),
        "the stream closes after token_expired"
    );

    // The other stream (a fresh token) goes on, and ends when the job is gone.
    assert_eq!(
        lasting.next_within(Duration::from_secs(5)).await.unwrap().1["progress"]["done"],
        3
    );
    stack
        .pg
        .execute("DELETE FROM generation_jobs WHERE id = $1", &[&job])
        .await
        .unwrap();
    let t = Instant::now();
    let (event, body) = lasting.next_within(Duration::from_secs(15)).await.unwrap();
    assert_eq!(event, "error", "{body}");
    assert_eq!(body["code"], "generation_not_found");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(lasting.next_within(Duration::from_secs(5)).await.is_none());

    // An expired token cannot open a stream at all.
    let (gone, _) = short_token(&stack, user.id, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(7)).await; // past the 5 s leeway
    let job2 = job_of(&app, &user.token).await;
    let refused = Sse::open(&app, job2, &gone).await.err().expect("refused");
    assert_eq!(refused.0, 401);
}

#[tokio::test]
async fn open_streams_are_capped_per_user_and_per_job() {
    let stack = Stack::start().await;
    let app = serve(
        &stack,
        &stack.rest_url,
        StreamConfig {
            streams_per_user: 2,
            streams_per_job: 2,
            stream_poll_ms: 400,
            ..StreamConfig::default()
        },
    )
    .await;
    let user = pro_user_with_engine(&stack).await;
    let admin = stack.admin().await;
    let job = job_of(&app, &user.token).await;
    let other_job = job_of(&app, &user.token).await;

    let a1 = Sse::open(&app, job, &user.token).await.expect("first");
    let _a2 = Sse::open(&app, other_job, &user.token)
        .await
        .expect("second");
    // A third stream of the same user, on any job: 429 with Retry-After.
    let (status, retry, body) = Sse::open(&app, job, &user.token)
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s > 0)));

    // Per job: the admin's stream brings `job` to 2; a third viewer is refused
    // although the admin is under the per-user cap.
    let _b1 = Sse::open(&app, job, &admin.token).await.expect("admin 1");
    let (status, _, body) = Sse::open(&app, job, &admin.token)
        .await
        .err()
        .expect("job full");
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_streams");

    // Closing a stream frees its slot.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Sse::open(&app, job, &user.token).await {
            Ok(_) => break,
            Err((429, _, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("slot not freed: {e:?}"),
        }
    }
    // Someone else's job: 404 as before (and the refused slot is given back).
    let stranger = stack.user(Some("pro"), false).await;
    let (status, _, body) = Sse::open(&app, job, &stranger.token)
        .await
        .err()
        .expect("404");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "generation_not_found");
}

#[tokio::test]
async fn two_hundred_viewers_of_one_running_job_cost_the_reads_of_one() {
    const VIEWERS: usize = 200;
    const WINDOW: Duration = Duration::from_secs(4);
    let stack = Stack::start().await;
    let proxy = reads_proxy(&stack).await;
    let app = Arc::new(
        serve(
            &stack,
            &proxy.url,
            StreamConfig {
                streams_per_user: 1000,
                streams_per_job: 1000,
                stream_poll_ms: 400,
                ..StreamConfig::default()
            },
        )
        .await,
    );
    let user = pro_user_with_engine(&stack).await;
    let job = job_of(&app, &user.token).await;
    set_running(&stack, job).await;

    // One viewer: what one shared reader costs over the window.
    let mut one = Sse::open(&app, job, &user.token).await.unwrap();
    one.next_within(Duration::from_secs(10)).await.unwrap();
    take(&proxy);
    tokio::time::sleep(WINDOW).await;
    let single = take(&proxy);
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.state.streams.readers() > 0 {
        assert!(
            Instant::now() < deadline,
            "the reader retires when its last viewer leaves"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    take(&proxy);

    // 200 viewers of the same user.
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..VIEWERS {
        let app = app.clone();
        let token = user.token.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut sse = Sse::open(&app, job, &token).await.expect("viewer opens");
            let mut events = Vec::new();
            while let Some(e) = sse.next().await {
                received.fetch_add(1, Ordering::SeqCst);
                let last = e.0 == "done";
                events.push(e);
                if last {
                    break;
                }
            }
            events
        }));
    }
    let wait = |n: usize| {
        let received = received.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while received.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "{} of {n} events",
                    received.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait(VIEWERS).await;
    let joining = take(&proxy);
    assert_eq!(
        app.state.streams.readers(),
        1,
        "one reader for all viewers of one user"
    );
    tokio::time::sleep(WINDOW).await;
    let many = take(&proxy);

    // A change: read once, sent to all.
    set_progress(&stack, job, 5).await;
    wait(2 * VIEWERS).await;
    let changed = take(&proxy);

    // The end: every viewer gets `done`, and the reader goes.
    stack
        .pg
        .execute(
            "UPDATE generation_jobs SET status = 'succeeded', finished_at = now(), updated_at = now() WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    for t in tasks {
        let events = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("viewer ends")
            .unwrap();
        assert_eq!(events.last().map(|e| e.0.as_str()), Some("done"));
        assert!(events.iter().any(|e| e.1["progress"]["done"] == 5));
    }
    eprintln!(
        "stream reads over {WINDOW:?} at 400 ms: 1 viewer {single:?}; {VIEWERS} viewers joining {joining:?}, \
         steady {many:?}, one change {changed:?}"
    );
    let n = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    assert!(n(&single, "light") >= 3, "the reader polls: {single:?}");
    assert!(
        n(&many, "light") <= n(&single, "light") + 2,
        "200 viewers read more than one: {many:?} vs {single:?}"
    );
    assert_eq!(
        n(&single, "full") + n(&many, "full"),
        0,
        "nothing changed, nothing re-read"
    );
    // Joining together, the viewers share authorising reads (and once the reader has
    // seen the job, it vouches for its user's next viewers): not one read each.
    assert!(
        n(&joining, "join") >= 1 && n(&joining, "join") <= 20,
        "authorising reads are shared: {joining:?}"
    );
    assert!(n(&joining, "full") <= 2, "{joining:?}");
    assert_eq!(
        n(&changed, "full"),
        2,
        "one change, one read (job + steps) for all: {changed:?}"
    );
    // Text rows: the reader's reads do not grow with the viewers either, and a joining
    // viewer gets what was written before it from the reader's memory, not a read.
    assert!(
        n(&single, "deltas") >= 10,
        "a running job's text is polled: {single:?}"
    );
    assert!(
        n(&many, "deltas") <= n(&single, "deltas") + 4,
        "200 viewers read more text than one: {many:?} vs {single:?}"
    );
    assert!(
        n(&joining, "deltas") <= n(&single, "deltas") + 20,
        "joining viewers are not a read each: {joining:?}"
    );
    assert_eq!(n(&many, "other") + n(&changed, "other"), 0);
}
