//! The text of a running job over SSE (issue #14, item 3): `generation_deltas` rows
//! as `attempt`/`delta`/`discard`/`restart` events with `id:` = seq; resuming with
//! `Last-Event-ID` (or `?after=`) sends exactly what was missed; RLS decides who reads
//! them; LISTEN/NOTIFY wakes the readers. Rows are written as the worker writes them,
//! through `delta_append` with the job's lease (no worker runs here: the test is the
//! writer, so it knows the final text to compare with).

use crate::kit::jobs::request_book;
use crate::kit::seed::TestUser;
use crate::kit::service::Service;
use crate::kit::stack::Stack;
use bookengine::generations::watch::StreamConfig;
use bookengine::secret::Secret;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

// ------------------------------------------------------------------ the service

/// The API alone, with these stream settings.
pub(crate) async fn serve(stack: &Stack, streams: StreamConfig) -> Service {
    let ops = bookengine::http::OpsConfig {
        streams,
        ..Default::default()
    };
    Service::api_via(stack, &stack.rest_url, ops).await
}

/// The test database as a connection string (for LISTEN).
fn listen_url(stack: &Stack) -> Secret {
    Secret::new(bookengine::devstack::url_for(&stack.db))
}

/// A running job of a pro user (no worker: the test holds its lease).
pub(crate) async fn running_job(stack: &Stack, app: &Service) -> (TestUser, Uuid, Uuid) {
    let engine = stack.engine_fixture("delta engine", true).await;
    stack
        .assign_fixture(engine, Some("pro"), None, 0, true)
        .await;
    let user = stack.user(Some("pro"), false).await;
    let r = app
        .http
        .post(format!("{}/v1/generations", app.address))
        .bearer_auth(&user.token)
        .json(&json!({"input": {"topic": "deltas"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    let job = Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
    let lease = Uuid::new_v4();
    stack
        .pg
        .execute(
            "UPDATE generation_jobs SET status = 'running', attempt = 1, started_at = now(), \
             lease_token = $2, lease_owner = 'test', lease_expires_at = now() + interval '1 hour', \
             updated_at = now() WHERE id = $1",
            &[&job, &lease],
        )
        .await
        .unwrap();
    (user, job, lease)
}

pub(crate) async fn finish(stack: &Stack, job: Uuid) {
    stack
        .pg
        .execute(
            "UPDATE generation_jobs SET status = 'succeeded', finished_at = now(), updated_at = now(), \
             lease_token = NULL WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
}

/// Once `ready` exists (the reader under test follows the job; at most 60 s), flushes
/// `rows` two at a time with `pause` between flushes, as a worker would, then ends the
/// job. Its own connection: the task outlives no borrow of the stack.
pub(crate) fn write_when_ready(
    stack: &Stack,
    job: Uuid,
    rows: Vec<Value>,
    ready: std::path::PathBuf,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let db = stack.db.clone();
    tokio::spawn(async move {
        let (pg, conn) = db.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for batch in rows.chunks(2) {
            let batch = Value::Array(batch.to_vec());
            pg.query_one("SELECT public.delta_append($1::jsonb)", &[&batch])
                .await
                .unwrap();
            tokio::time::sleep(pause).await;
        }
        pg.execute(
            "UPDATE generation_jobs SET status = 'succeeded', finished_at = now(), \
             updated_at = now(), lease_token = NULL WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    })
}

/// One flush, as the worker makes it.
pub(crate) async fn append(stack: &Stack, rows: &[Value]) -> Value {
    let rows = Value::Array(rows.to_vec());
    let row = stack
        .pg
        .query_one("SELECT public.delta_append($1::jsonb)", &[&rows])
        .await
        .unwrap();
    row.get(0)
}

/// The rows of one job's stream: calls with retries, a discarded attempt, a restart.
pub(crate) struct Script {
    pub(crate) rows: Vec<Value>,
    /// The final text of each (step, item).
    pub(crate) finals: BTreeMap<(String, i64), String>,
}

impl Script {
    /// The final texts keyed `step:item`, as the JS checks read them.
    pub(crate) fn finals_json(&self) -> serde_json::Map<String, Value> {
        self.finals
            .iter()
            .map(|((step, item), text)| (format!("{step}:{item}"), json!(text)))
            .collect()
    }
}

pub(crate) fn script(job: Uuid, lease: Uuid, chunks_per_call: usize) -> Script {
    let mut rows = Vec::new();
    let mut finals = BTreeMap::new();
    let mut seq = 0i64;
    let mut row = |step: &str, item: i64, kind: &str, attempt: i64, run: i64, text: &str| {
        seq += 1;
        let meta = match kind {
            "attempt" => json!({"provider": "mock", "model": "m", "attempt": attempt}),
            "discard" => json!({"reason": "the stream broke"}),
            _ => Value::Null,
        };
        rows.push(json!({"job_id": job, "lease": lease, "seq": seq, "step_id": step,
            "item_index": item, "kind": kind, "attempt": attempt, "run": run, "text": text, "meta": meta}));
    };
    let chunk = |call: &str, i: usize| format!("{call} chunk {i} «ünïcødé» \"quoted\"\n");
    for (step, item) in [
        ("outline", -1i64),
        ("chapters", 0),
        ("chapters", 1),
        ("chapters", 2),
    ] {
        let call = format!("{step}[{item}]");
        match item {
            // A retried attempt: its text is void, never in the book.
            1 => {
                row(step, item, "attempt", 1, 1, "");
                for i in 0..chunks_per_call / 2 {
                    row(step, item, "delta", 1, 1, &format!("VOID {i} "));
                }
                row(step, item, "discard", 1, 1, "");
                row(step, item, "attempt", 2, 1, "");
            }
            // A crashed run: its partial text is void, the next run restarts the call.
            2 => {
                row(step, item, "attempt", 1, 1, "");
                for i in 0..chunks_per_call / 3 {
                    row(step, item, "delta", 1, 1, &format!("LOST {i} "));
                }
                row(step, item, "restart", 1, 2, "");
                row(step, item, "attempt", 1, 2, "");
            }
            _ => row(step, item, "attempt", 1, 1, ""),
        }
        let (attempt, run) = match item {
            1 => (2, 1),
            2 => (1, 2),
            _ => (1, 1),
        };
        let mut text = String::new();
        for i in 0..chunks_per_call {
            let c = chunk(&call, i);
            text.push_str(&c);
            row(step, item, "delta", attempt, run, &c);
        }
        finals.insert((step.to_owned(), item), text);
    }
    Script { rows, finals }
}

/// The reassembly rule (sql/V11, V15): per (step, item), in seq order, an `attempt`
/// starts the text again from its own text, a `delta` adds to it, a `discard` or a
/// `restart` voids it.
pub(crate) fn reassemble(events: &[Event]) -> BTreeMap<(String, i64), String> {
    let mut out: BTreeMap<(String, i64), String> = BTreeMap::new();
    for e in events {
        if e.id.is_none() {
            continue;
        }
        let key = (
            e.data["step_id"].as_str().unwrap_or_default().to_owned(),
            e.data["item_index"].as_i64().unwrap_or(-99),
        );
        let text = out.entry(key).or_default();
        match e.event.as_str() {
            "delta" => text.push_str(e.data["text"].as_str().unwrap_or_default()),
            "attempt" => *text = e.data["text"].as_str().unwrap_or_default().to_owned(),
            "discard" | "restart" => text.clear(),
            other => panic!("a row event named {other}"),
        }
    }
    out
}

// ------------------------------------------------------------------ reading SSE

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) event: String,
    pub(crate) id: Option<i64>,
    pub(crate) data: Value,
}

pub(crate) struct Sse {
    resp: reqwest::Response,
    // Bytes, decoded a whole event at a time: a chunk may end inside a UTF-8 character.
    buf: Vec<u8>,
}

impl Sse {
    /// Open the job's stream, resuming after `last` (as a browser's EventSource does).
    pub(crate) async fn open(
        app: &Service,
        job: Uuid,
        token: &str,
        last: Option<i64>,
    ) -> Result<Sse, (u16, Value)> {
        Sse::open_at(&app.http, &app.address, job, token, last).await
    }

    pub(crate) async fn open_at(
        http: &reqwest::Client,
        address: &str,
        job: Uuid,
        token: &str,
        last: Option<i64>,
    ) -> Result<Sse, (u16, Value)> {
        let mut req = http
            .get(format!("{address}/v1/generations/{job}/events"))
            .bearer_auth(token);
        if let Some(n) = last {
            req = req.header("Last-Event-ID", n.to_string());
        }
        let resp = req.send().await.unwrap();
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            return Err((status, resp.json().await.unwrap_or(Value::Null)));
        }
        Ok(Sse::new(resp))
    }

    fn new(resp: reqwest::Response) -> Sse {
        Sse {
            resp,
            buf: Vec::new(),
        }
    }

    /// The id of the first event that has one (a text row's seq).
    async fn first_row(&mut self) -> i64 {
        loop {
            let e = self
                .next_within(Duration::from_secs(10))
                .await
                .expect("an event within 10 s");
            if let Some(id) = e.id {
                return id;
            }
        }
    }

    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(cut) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let bytes: Vec<u8> = self.buf.drain(..cut + 2).collect();
                let block = String::from_utf8(bytes).expect("UTF-8 events");
                let mut event = "message".to_owned();
                let mut data = String::new();
                let mut id = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<i64>().expect("a numeric id"));
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("JSON data");
                return Some(Event { event, id, data });
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                _ => return None,
            }
        }
    }

    pub(crate) async fn next_within(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("an event (or the end) in time")
    }
}

/// A tiny deterministic generator (xorshift64*): random points, reproducible by seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

// ------------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_disconnects_resume_with_no_gap_no_duplicate_and_the_final_text() {
    let stack = Stack::start().await;
    let app = serve(&stack, StreamConfig::default()).await;
    let (user, job, lease) = running_job(&stack, &app).await;
    let script = script(job, lease, 150);
    let total = script.rows.len() as i64;

    // The writer: a flush of 1-4 rows every ~20 ms, as the worker's batching does.
    let writer = {
        let rows = script.rows.clone();
        let db = stack.db.clone();
        tokio::spawn(async move {
            let (pg, conn) = db.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut rng = Rng(0x5eed_1234);
            let mut i = 0;
            while i < rows.len() {
                let n = (1 + rng.below(4) as usize).min(rows.len() - i);
                let batch = Value::Array(rows[i..i + n].to_vec());
                let r: Value = pg
                    .query_one("SELECT public.delta_append($1::jsonb)", &[&batch])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(r["inserted"], n as i64, "{r}");
                i += n;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let seed = std::env::var("BOOKENGINE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0dd_ba11_u64);
    let mut rng = Rng(seed);
    let mut got: Vec<Event> = Vec::new();
    let mut last: Option<i64> = None;
    let mut disconnects = 0;
    let started = Instant::now();
    let mut done = None;
    'outer: while done.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "seed {seed}: stuck"
        );
        let mut sse = Sse::open(&app, job, &user.token, last)
            .await
            .expect("opens");
        // Read a random number of events (0 = drop right after connecting), then drop.
        let keep = if disconnects < 100 {
            rng.below(9)
        } else {
            u64::MAX
        };
        let mut read = 0;
        while read < keep {
            let Some(e) = sse.next_within(Duration::from_secs(20)).await else {
                break;
            };
            read += 1;
            if let Some(id) = e.id {
                last = Some(id);
                got.push(e);
            } else if e.event == "done" {
                done = Some(e);
                continue 'outer;
            } else {
                assert_eq!(e.event, "progress", "seed {seed}: {e:?}");
            }
        }
        drop(sse);
        disconnects += 1;
        if disconnects == 100 {
            // The writer is done by now or soon: let the job end so the stream can.
            writer_done_then_finish(&stack, job, &writer).await;
        }
    }
    assert!(writer.is_finished());
    assert!(disconnects >= 100, "{disconnects} disconnects");

    let ids: Vec<i64> = got.iter().filter_map(|e| e.id).collect();
    let expected: Vec<i64> = (1..=total).collect();
    if ids != expected {
        let at = ids
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(ids.len().min(expected.len()));
        let from = at.saturating_sub(5);
        panic!(
            "seed {seed}: every row exactly once, in order: {} ids for {total} rows; first \
             difference at {at}: got {:?}, expected {:?}",
            ids.len(),
            &ids[from..(at + 5).min(ids.len())],
            &expected[from..(at + 5).min(expected.len())]
        );
    }
    assert_eq!(
        reassemble(&got),
        script.finals,
        "seed {seed}: the reassembled text is the final text"
    );
    let all: String = got.iter().filter_map(|e| e.data["text"].as_str()).collect();
    assert!(
        all.contains("VOID") && all.contains("LOST"),
        "the void text was streamed"
    );
    let finals: String = script.finals.values().cloned().collect();
    assert!(!finals.contains("VOID") && !finals.contains("LOST"));
    // The row's own fields travel: kind, attempt, run, meta.
    let discard = got.iter().find(|e| e.event == "discard").unwrap();
    assert_eq!(discard.data["kind"], "discard");
    assert_eq!(discard.data["meta"]["reason"], "the stream broke");
    let restart = got.iter().find(|e| e.event == "restart").unwrap();
    assert_eq!(restart.data["run"], 2);
    assert_eq!(done.unwrap().data["status"], "succeeded");
    eprintln!("{disconnects} disconnects, {} rows, seed {seed}", ids.len());
}

async fn writer_done_then_finish(stack: &Stack, job: Uuid, writer: &tokio::task::JoinHandle<()>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writer.is_finished() {
        assert!(Instant::now() < deadline, "the writer ends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finish(stack, job).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_header_or_query_and_rls_decides_who_reads_deltas() {
    let stack = Stack::start().await;
    let app = serve(&stack, StreamConfig::default()).await;
    let (user, job, lease) = running_job(&stack, &app).await;
    let script = script(job, lease, 6);
    let half = script.rows.len() / 2;
    append(&stack, &script.rows[..half]).await;

    // A new viewer gets what was written so far (after its first progress event).
    let mut sse = Sse::open(&app, job, &user.token, None).await.unwrap();
    let first = sse.next_within(Duration::from_secs(10)).await.unwrap();
    let mut seen = Vec::new();
    if first.id.is_some() {
        seen.push(first);
    }
    while seen.len() < half {
        let e = sse.next_within(Duration::from_secs(10)).await.unwrap();
        if e.id.is_some() {
            seen.push(e);
        }
    }
    assert_eq!(seen.last().unwrap().id, Some(half as i64));
    // Live: the next flush arrives without reconnecting.
    append(&stack, &script.rows[half..half + 3]).await;
    let t = Instant::now();
    let mut live = Vec::new();
    while live.len() < 3 {
        let e = sse.next_within(Duration::from_secs(10)).await.unwrap();
        if let Some(id) = e.id {
            live.push(id);
        }
    }
    assert_eq!(
        live,
        vec![half as i64 + 1, half as i64 + 2, half as i64 + 3]
    );
    eprintln!("live rows arrived after {:?}", t.elapsed());
    drop(sse);

    // `?after=` resumes as Last-Event-ID does; the header wins when both are sent.
    let after = 2i64;
    let r = app
        .http
        .get(format!(
            "{}/v1/generations/{job}/events?after={after}",
            app.address
        ))
        .bearer_auth(&user.token)
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let mut sse = Sse::new(r);
    let first_row = sse.first_row().await;
    assert_eq!(first_row, 5, "Last-Event-ID wins over ?after=");
    drop(sse);
    let r = app
        .http
        .get(format!(
            "{}/v1/generations/{job}/events?after=2",
            app.address
        ))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let mut sse = Sse::new(r);
    let first_row = sse.first_row().await;
    assert_eq!(first_row, 3);
    drop(sse);
    for bad in ["-1", "x", "1.5"] {
        let r = app
            .http
            .get(format!("{}/v1/generations/{job}/events", app.address))
            .bearer_auth(&user.token)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    // Another user: 404 on the stream, and no rows straight through PostgREST.
    let stranger = stack.user(Some("pro"), false).await;
    let refused = Sse::open(&app, job, &stranger.token, Some(0))
        .await
        .err()
        .expect("404");
    assert_eq!(refused.0, 404);
    assert_eq!(refused.1["error"]["code"], "generation_not_found");
    let url = format!(
        "{}/generation_deltas?job_id=eq.{job}&select=seq",
        stack.rest_url
    );
    let rows = |token: String| {
        let http = stack.http.clone();
        let url = url.clone();
        let anon = stack.anon_key.expose().to_owned();
        async move {
            let r = http
                .get(&url)
                .header("apikey", anon)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Vec<Value>>().await.unwrap().len()
        }
    };
    assert_eq!(rows(stranger.token.clone()).await, 0, "RLS hides the rows");
    assert_eq!(
        rows(user.token.clone()).await,
        half + 3,
        "the owner reads them"
    );
    // An admin follows someone else's book, text included.
    let admin = stack.admin().await;
    assert_eq!(rows(admin.token.clone()).await, half + 3);
    let mut sse = Sse::open(&app, job, &admin.token, Some(half as i64))
        .await
        .unwrap();
    let id = loop {
        let e = sse.next_within(Duration::from_secs(10)).await.unwrap();
        if let Some(id) = e.id {
            break id;
        }
    };
    assert_eq!(id, half as i64 + 1);
    drop(sse);

    // The end: the rest, then `done`; a late viewer (rows compacted away) gets the
    // job with its outputs, and no rows.
    append(&stack, &script.rows[half + 3..]).await;
    let mut sse = Sse::open(&app, job, &user.token, Some(half as i64 + 3))
        .await
        .unwrap();
    finish(&stack, job).await;
    let mut rest = Vec::new();
    let done = loop {
        let e = sse
            .next_within(Duration::from_secs(15))
            .await
            .expect("done");
        if let Some(id) = e.id {
            rest.push(id);
        } else if e.event == "done" {
            break e;
        }
    };
    let expected: Vec<i64> = (half as i64 + 4..=script.rows.len() as i64).collect();
    assert_eq!(rest, expected);
    assert_eq!(done.data["status"], "succeeded");
    assert!(sse.next_within(Duration::from_secs(5)).await.is_none());
    stack
        .pg
        .execute("DELETE FROM generation_deltas WHERE job_id = $1", &[&job])
        .await
        .unwrap();
    let mut sse = Sse::open(&app, job, &user.token, None).await.unwrap();
    let only = sse.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!((only.event.as_str(), only.id), ("done", None));
    assert!(sse.next_within(Duration::from_secs(5)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_wakes_readers_when_rows_are_written() {
    let stack = Stack::start().await;
    // Polling so slow that only a NOTIFY can explain quick arrivals.
    let app = serve(
        &stack,
        StreamConfig {
            stream_poll_ms: 3000,
            stream_delta_poll_ms: 10_000,
            stream_listen_url: Some(listen_url(&stack)),
            ..StreamConfig::default()
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.state.streams.listening() {
        assert!(Instant::now() < deadline, "the LISTEN connection comes up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (user, job, lease) = running_job(&stack, &app).await;
    let script = script(job, lease, 10);
    let mut sse = Sse::open(&app, job, &user.token, None).await.unwrap();
    let first = sse.next_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(first.event, "progress");
    // Let the reader's first rounds pass (light read, head), then write one row at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waits = Vec::new();
    for row in script.rows.iter().take(10) {
        let t = Instant::now();
        append(&stack, std::slice::from_ref(row)).await;
        let e = loop {
            let e = sse.next_within(Duration::from_secs(10)).await.unwrap();
            if e.id.is_some() {
                break e;
            }
        };
        assert_eq!(e.id, row["seq"].as_i64());
        waits.push(t.elapsed());
    }
    waits.sort();
    eprintln!("write → event with LISTEN: {waits:?}");
    assert!(
        waits[waits.len() / 2] < Duration::from_millis(500),
        "woken by the writes, not by a 3 s / 10 s poll: {waits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_stream_generation_resumes_through_broken_connections() {
    let stack = Stack::start().await;
    let app = serve(&stack, StreamConfig::default()).await;
    let (user, job, lease) = running_job(&stack, &app).await;
    let script = script(job, lease, 60);
    let total = script.rows.len();
    let finals = script.finals_json();
    let ready = std::env::temp_dir().join(format!("bookengine-resume-{job}"));
    // The writer: once the client is streaming, two rows every 30 ms (the 20 breaks
    // happen while it writes), then the job ends.
    let writer = write_when_ready(
        &stack,
        job,
        script.rows.clone(),
        ready.clone(),
        Duration::from_millis(30),
    );
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .args(["--test", "supabase/client/resume.check.mjs"])
            .current_dir(&repo)
            .env("BOOKENGINE_URL", &app.address)
            .env("DELTA_TOKEN", &user.token)
            .env("DELTA_JOB_ID", job.to_string())
            .env("DELTA_TOTAL", total.to_string())
            .env("DELTA_FINALS", Value::Object(finals).to_string())
            .env("READY_FILE", &ready)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the suite ends in time")
    .expect("node runs");
    writer.await.unwrap();
    let _ = std::fs::remove_file(&ready);
    assert!(
        output.status.success(),
        "resume.check.mjs failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// End to end: a book written by the worker through streaming mock providers (a slow
/// chapter stream, a chapter call cut mid-stream and retried), followed over SSE with a
/// disconnect half-way: text arrives before its step ends, and each call's reassembled
/// text is its step's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_book_streams_over_sse_and_reassembles_to_its_outputs() {
    use crate::kit::app::{app_with_mocks, book_setup};
    use crate::kit::mock_llm::Fault;
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.chunk_interval(Duration::from_millis(100));
    mocks.anthropic.script(vec![Fault::BreakAfter(2)]);
    let (s, job) = request_book(&app, &pro, "sse").await;
    assert_eq!(s, 202, "{job}");
    let job = Uuid::parse_str(job["id"].as_str().unwrap()).unwrap();

    let mut rows: Vec<Event> = Vec::new();
    let mut last = None;
    let mut snapshot: Option<Value> = None;
    let mut early = None;
    let mut reconnected = false;
    let done = 'outer: loop {
        let mut sse = Sse::open_at(&app.http, &app.address, job, &pro.token, last)
            .await
            .expect("opens");
        loop {
            let Some(e) = sse.next_within(Duration::from_secs(60)).await else {
                continue 'outer;
            };
            match (e.event.as_str(), e.id) {
                (_, Some(id)) => {
                    last = Some(id);
                    let text = e.data["text"].as_str().is_some_and(|t| !t.is_empty());
                    if text && e.data["step_id"] == "chapters" && early.is_none() {
                        let item = e.data["item_index"].clone();
                        let finished = snapshot.as_ref().is_some_and(|j| {
                            j["steps"].as_array().into_iter().flatten().any(|s| {
                                s["step_id"] == "chapters"
                                    && s["item_index"] == item
                                    && s["status"] == "succeeded"
                            })
                        });
                        if !finished {
                            early = Some(item);
                        }
                    }
                    rows.push(e);
                    // One disconnect mid-chapter: the rest comes by Last-Event-ID.
                    if !reconnected && early.is_some() {
                        reconnected = true;
                        continue 'outer;
                    }
                }
                ("done", None) => break 'outer e,
                ("progress", None) => snapshot = Some(e.data),
                (other, None) => panic!("unexpected event {other}: {:?}", e.data),
            }
        }
    };
    assert_eq!(done.data["status"], "succeeded", "{:?}", done.data);
    assert!(
        early.is_some(),
        "chapter text arrived before its step ended"
    );
    let ids: Vec<i64> = rows.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(rows.iter().any(|e| e.event == "discard"), "the cut attempt");
    let texts = reassemble(&rows);
    let mut checked = 0;
    for step in done.data["steps"].as_array().unwrap() {
        let key = (
            step["step_id"].as_str().unwrap().to_owned(),
            step["item_index"].as_i64().unwrap(),
        );
        if key.1 == -1 && step["output"].is_array() {
            continue; // a fan-out's summary: no call of its own
        }
        let text = texts
            .get(&key)
            .unwrap_or_else(|| panic!("no text for {key:?}"));
        match &step["output"] {
            Value::String(out) => assert_eq!(text, out, "{key:?}"),
            other => {
                // A JSON step: its text parses to its output (the mock may prefix a marker).
                let json = text.find('{').map(|i| &text[i..]).unwrap_or(text);
                let parsed: Value = serde_json::from_str(json.trim()).unwrap_or(Value::Null);
                assert_eq!(&parsed, other, "{key:?}: {text}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "outline, chapters and edit: {checked}");
}
