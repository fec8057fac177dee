//! Following jobs as they run: the hub behind `GET /v1/generations/{id}/events`.
//!
//! One **reader** per (job, viewer's user) polls PostgREST and fans what it reads
//! out to every open stream of that user on that job, so PostgREST calls per job do
//! not grow with the number of viewers. Each interval the reader makes one light
//! read (the job's status columns and each step's status and times, never outputs);
//! only when that moved does it read the job with its steps, once, and publish it.
//!
//! RLS still decides: the reader reads with its user's own token (the freshest
//! unexpired one among that user's viewers, which all share one identity), never the
//! service role. A new viewer is authorised with its own token (one read) before it
//! joins. Each viewer ends with `token_expired` when its own token expires, and all
//! end with `generation_not_found` when the job is no longer visible.
//!
//! Events are fanned out over a broadcast channel of pre-serialised updates with a
//! sequence number; a viewer that falls behind skips to the latest snapshot. Later
//! kinds of event (text deltas, issue #14) travel on the same channel.

use super::JobDetail;
use crate::error::{codes, Error, Kind, Result};
use crate::metrics::Metrics;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use futures::Stream;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

/// Limits on event streams (`serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct StreamConfig {
    /// Open event streams (GET /v1/generations/{id}/events) per user, all jobs
    /// together; more are answered 429 `too_many_streams`.
    #[arg(long, env = "BOOKENGINE_STREAMS_PER_USER", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_user: u32,

    /// Open event streams per job, all viewers together; more are answered 429
    /// `too_many_streams`.
    #[arg(long, env = "BOOKENGINE_STREAMS_PER_JOB", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub streams_per_job: u32,

    /// How often the shared reader of a followed job looks for changes, in ms (one
    /// light PostgREST read per job and viewing user, whatever the number of streams).
    #[arg(long, env = "BOOKENGINE_STREAM_POLL_MS", default_value_t = 400,
          value_parser = clap::value_parser!(u64).range(50..))]
    pub stream_poll_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            streams_per_user: 16,
            streams_per_job: 64,
            stream_poll_ms: 400,
        }
    }
}

/// Seconds a refused viewer is asked to wait (a slot frees when any stream closes).
const RETRY_AFTER_SECS: u64 = 5;

/// Updates a viewer may fall behind before it skips to the latest snapshot.
const CHANNEL_CAPACITY: usize = 64;

/// One event for every viewer of a job, serialised once.
#[derive(Debug)]
pub struct Update {
    /// Position in this reader's sequence (viewers skip what they have seen).
    pub seq: u64,
    /// The SSE event name: `progress`, `done` or `error`.
    pub event: &'static str,
    /// The JSON payload.
    pub data: String,
    /// The stream ends after this one.
    pub last: bool,
}

/// The shared readers and the open-stream counts. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    rest: Rest,
    config: StreamConfig,
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    readers: HashMap<(Uuid, Uuid), Arc<Reader>>,
    per_user: HashMap<Uuid, u32>,
    per_job: HashMap<Uuid, u32>,
    next_viewer: u64,
}

/// What one reader shares with its viewers.
struct Reader {
    job: Uuid,
    tx: broadcast::Sender<Arc<Update>>,
    shared: Mutex<ReaderShared>,
}

#[derive(Default)]
struct ReaderShared {
    /// The last update published: what a new viewer starts from.
    latest: Option<Arc<Update>>,
    next_seq: u64,
    /// Each viewer's token and its expiry (unix seconds).
    tokens: HashMap<u64, (i64, Secret)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain counters behind: keep going.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When a token with expiry `exp` (unix seconds) stops being valid, on the tokio clock.
fn deadline_of(exp: i64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let left = exp.saturating_mul(1000).saturating_sub(now_ms).max(0);
    Instant::now() + Duration::from_millis(left as u64)
}

impl Reader {
    fn publish(&self, event: &'static str, data: String, last: bool) {
        let update = {
            let mut shared = lock(&self.shared);
            shared.next_seq += 1;
            let update = Arc::new(Update {
                seq: shared.next_seq,
                event,
                data,
                last,
            });
            shared.latest = Some(update.clone());
            update
        };
        // No receiver is fine: viewers joining later start from `latest`.
        let _ = self.tx.send(update);
    }

    fn publish_error(&self, e: &Error, last: bool) {
        let body = json!({"code": e.code, "message": e.message});
        self.publish("error", body.to_string(), last);
    }

    /// The freshest unexpired token among the viewers, if any.
    fn token(&self) -> Option<Secret> {
        let now = unix_now();
        lock(&self.shared)
            .tokens
            .values()
            .filter(|(exp, _)| *exp > now)
            .max_by_key(|(exp, _)| *exp)
            .map(|(_, t)| t.clone())
    }
}

/// A reserved stream slot; dropping it gives the slot back.
struct Slot {
    hub: Arc<HubInner>,
    job: Uuid,
    user: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.hub.state);
        decrement(&mut state.per_user, self.user);
        decrement(&mut state.per_job, self.job);
        Metrics::global().streams_open.dec();
    }
}

fn decrement(counts: &mut HashMap<Uuid, u32>, key: Uuid) {
    if let Some(n) = counts.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

/// One open stream: its place in a reader, until dropped.
pub struct Viewer {
    _slot: Slot,
    id: u64,
    reader: Arc<Reader>,
    rx: broadcast::Receiver<Arc<Update>>,
    deadline: Instant,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        lock(&self.reader.shared).tokens.remove(&self.id);
    }
}

impl WatchHub {
    pub fn new(rest: Rest, config: StreamConfig) -> Self {
        Self {
            inner: Arc::new(HubInner {
                rest,
                config,
                state: Mutex::new(HubState::default()),
            }),
        }
    }

    /// Open a stream on `job` for `user`, whose verified token expires at `exp`
    /// (unix seconds). Refused with `too_many_streams` beyond the caps, and with the
    /// read's own error (`generation_not_found`, …) when the token cannot see the job.
    pub async fn watch(&self, job: Uuid, user: Uuid, token: Secret, exp: i64) -> Result<Viewer> {
        let slot = self.reserve(job, user)?;
        // Authorise with the viewer's own token: one light read, whatever the reader holds.
        Metrics::global()
            .stream_reads
            .with_label_values(&["join"])
            .inc();
        let builder = self
            .inner
            .rest
            .rpc(
                &Caller::User(token.clone()),
                "generation_get",
                &json!({ "job_id": job }),
            )?
            .select("id");
        let rows: Vec<serde_json::Value> = self.inner.rest.send(builder).await?;
        if rows.is_empty() {
            return Err(not_found(job));
        }
        Ok(self.join(slot, token, exp))
    }

    fn reserve(&self, job: Uuid, user: Uuid) -> Result<Slot> {
        let mut state = lock(&self.inner.state);
        let users = state.per_user.get(&user).copied().unwrap_or(0);
        let jobs = state.per_job.get(&job).copied().unwrap_or(0);
        let c = &self.inner.config;
        if users >= c.streams_per_user || jobs >= c.streams_per_job {
            let which = if users >= c.streams_per_user {
                format!("{} open event streams per user", c.streams_per_user)
            } else {
                format!("{} open event streams per generation", c.streams_per_job)
            };
            return Err(Error::new(
                Kind::RateLimited,
                codes::TOO_MANY_STREAMS,
                format!("at most {which}; close one or try again later"),
            )
            .with_retry_after(RETRY_AFTER_SECS));
        }
        *state.per_user.entry(user).or_default() += 1;
        *state.per_job.entry(job).or_default() += 1;
        Metrics::global().streams_open.inc();
        Ok(Slot {
            hub: self.inner.clone(),
            job,
            user,
        })
    }

    fn join(&self, slot: Slot, token: Secret, exp: i64) -> Viewer {
        let key = (slot.job, slot.user);
        let mut state = lock(&self.inner.state);
        state.next_viewer += 1;
        let id = state.next_viewer;
        let (reader, start) = match state.readers.get(&key) {
            Some(r) => (r.clone(), false),
            None => {
                let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
                let r = Arc::new(Reader {
                    job: slot.job,
                    tx,
                    shared: Mutex::new(ReaderShared::default()),
                });
                state.readers.insert(key, r.clone());
                (r, true)
            }
        };
        // Under the hub lock: a reader retires only under it, and only with no tokens.
        let rx = reader.tx.subscribe();
        lock(&reader.shared).tokens.insert(id, (exp, token));
        drop(state);
        if start {
            tokio::spawn(run_reader(self.inner.clone(), key, reader.clone()));
        }
        Viewer {
            _slot: slot,
            id,
            reader,
            rx,
            deadline: deadline_of(exp),
        }
    }

    /// Readers running now (for tests and metrics).
    pub fn readers(&self) -> usize {
        lock(&self.inner.state).readers.len()
    }
}

impl Viewer {
    /// The updates this viewer sends: the current snapshot first, then each change;
    /// ends after a `done` or a final `error`, or with `token_expired` at the token's expiry.
    pub fn updates(mut self) -> impl Stream<Item = Arc<Update>> + Send {
        async_stream::stream! {
            let mut seen = 0u64;
            // Subscribed before reading `latest`, so nothing falls between the two.
            let first = lock(&self.reader.shared).latest.clone();
            if let Some(u) = first {
                seen = u.seq;
                let last = u.last;
                yield u;
                if last {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(self.deadline) => {
                        let body = json!({
                            "code": codes::TOKEN_EXPIRED,
                            "message": "the access token expired; reconnect with a fresh one",
                        });
                        yield Arc::new(Update { seq: seen + 1, event: "error", data: body.to_string(), last: true });
                        return;
                    }
                    r = self.rx.recv() => r,
                };
                let update = match next {
                    Ok(u) => u,
                    // Fell behind: the latest snapshot says everything the skipped ones did.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        match lock(&self.reader.shared).latest.clone() {
                            Some(u) => u,
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if update.seq <= seen {
                    continue;
                }
                seen = update.seq;
                let last = update.last;
                yield update;
                if last {
                    return;
                }
            }
        }
    }
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(
        codes::GENERATION_NOT_FOUND,
        format!("generation {id} not found"),
    )
}

/// The light read: `None` when the job is not (or no longer) visible; otherwise the
/// job's state and each step's status (no outputs), whose bytes are the fingerprint of
/// what a viewer can see change. Through `generation_watch` (sql/V10), which shows an
/// admin any job, as the rest of the API does under V8's owner-only policies.
async fn read_light(rest: &Rest, token: &Secret, job: Uuid) -> Result<Option<bytes::Bytes>> {
    Metrics::global()
        .stream_reads
        .with_label_values(&["light"])
        .inc();
    let builder = rest.rpc(
        &Caller::User(token.clone()),
        "generation_watch",
        &json!({ "job_id": job }),
    )?;
    let body = rest.send_raw(builder).await?;
    // `null` when the caller cannot see the job. Only the top level is looked at, so
    // a deeply nested body cannot make this read fail (serde_json's recursion limit).
    let visible = !matches!(body.as_ref(), b"null" | b"" | b"[]");
    Ok(visible.then_some(body))
}

/// The full read, when the light one moved: the job and its steps with their outputs.
async fn read_full(rest: &Rest, token: &Secret, job: Uuid) -> Result<Option<JobDetail>> {
    Metrics::global()
        .stream_reads
        .with_label_values(&["full"])
        .inc();
    match super::get(rest, &Caller::User(token.clone()), job).await {
        Ok(detail) => Ok(Some(detail)),
        Err(e) if e.kind == Kind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Is this failure the end of the stream (the token or the job is gone) rather
/// than a dependency's hiccup worth waiting out?
fn is_final(e: &Error) -> bool {
    matches!(
        e.kind,
        Kind::Unauthenticated | Kind::Forbidden | Kind::NotFound
    )
}

/// The reader's loop: light read each interval, full read when it moved, until the
/// job ends, disappears, or nobody watches.
async fn run_reader(hub: Arc<HubInner>, key: (Uuid, Uuid), reader: Arc<Reader>) {
    let rest = hub.rest.clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(hub.config.stream_poll_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<bytes::Bytes> = None;
    let mut failing: Option<&'static str> = None;
    loop {
        ticker.tick().await;
        if retire_if_idle(&hub, key, &reader) {
            return;
        }
        // Every viewer's token has expired: they are ending; read nothing meanwhile.
        let Some(token) = reader.token() else {
            continue;
        };
        let outcome = match read_light(&rest, &token, reader.job).await {
            Ok(Some(fp)) if seen.as_ref() == Some(&fp) => Ok(false),
            Ok(Some(fp)) => match read_full(&rest, &token, reader.job).await {
                Ok(Some(detail)) => {
                    seen = Some(fp);
                    let finished = detail.job.is_finished();
                    match serde_json::to_string(&detail) {
                        Ok(data) => {
                            reader.publish(
                                if finished { "done" } else { "progress" },
                                data,
                                finished,
                            );
                            Ok(finished)
                        }
                        Err(e) => Err(Error::internal(format!("serialising a job: {e}"))),
                    }
                }
                Ok(None) => Err(not_found(reader.job)),
                Err(e) => Err(e),
            },
            Ok(None) => Err(not_found(reader.job)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(false) => failing = None,
            Ok(true) => break,
            Err(e) if is_final(&e) => {
                reader.publish_error(&e, true);
                break;
            }
            Err(e) => {
                // After an outage, publish the job again even if it did not change.
                seen = None;
                // Said once per outage, not every interval; the stream stays open.
                if failing != Some(e.code) {
                    tracing::warn!(job_id = %reader.job, code = e.code,
                        detail = e.internal.as_deref().unwrap_or(""), "event stream read failed");
                    reader.publish_error(&e, false);
                    failing = Some(e.code);
                }
            }
        }
    }
    let mut state = lock(&hub.state);
    if state
        .readers
        .get(&key)
        .is_some_and(|r| Arc::ptr_eq(r, &reader))
    {
        state.readers.remove(&key);
    }
}

/// Remove the reader when no viewer is left, atomically with joins (both under the hub lock).
fn retire_if_idle(hub: &HubInner, key: (Uuid, Uuid), reader: &Arc<Reader>) -> bool {
    let mut state = lock(&hub.state);
    if !lock(&reader.shared).tokens.is_empty() {
        return false;
    }
    if state
        .readers
        .get(&key)
        .is_some_and(|r| Arc::ptr_eq(r, reader))
    {
        state.readers.remove(&key);
    }
    true
}
