//! Following jobs as they run: the hub behind `GET /v1/generations/{id}/events`.
//!
//! One **reader** per (job, viewer's user) polls PostgREST and fans what it reads
//! out to every open stream of that user on that job, so PostgREST calls per job do
//! not grow with the number of viewers. Each interval the reader makes one light
//! read (the job's status columns and each step's status and times, never outputs);
//! only when that moved does it read the job with its steps, once, and publish it.
//! While the job runs it also reads the job's new text rows (`generation_deltas`,
//! [`deltas`]) every `stream_delta_poll_ms`, or when woken by a `NOTIFY` from the
//! writes themselves ([`listen`]), and publishes them as one batch.
//!
//! RLS still decides: the reader reads with its user's own token (the freshest
//! unexpired one among that user's viewers, which all share one identity), never the
//! service role. A new viewer is authorised before it joins: by one read with its own
//! token, shared by the viewers of the same user who join at the same moment, or
//! without a read when the user's reader saw the job within the last two light
//! intervals (RLS answers by user and role, and the service verified this token as
//! that user's `authenticated` token). Each viewer ends with `token_expired` when its
//! own token expires, and all end with `generation_not_found` when the job is no
//! longer visible.
//!
//! Events are fanned out over a broadcast channel of pre-serialised updates with a
//! sequence number; a viewer that falls behind skips to the latest snapshot. Text
//! rows are never skipped: each batch says after which `seq` it starts, and a viewer
//! whose own position is earlier (it resumed with `Last-Event-ID`, joined between two
//! reads, or fell behind) gets the missing rows first: from the reader's memory of the
//! job's text (all of it from its first read, up to [`HISTORY_BYTES`]), or, for what
//! that does not hold, by reading them itself with its own token. So a viewer who
//! joins or reconnects costs no PostgREST read while its user's reader runs.

pub mod deltas;
pub mod listen;
mod reader;
mod viewer;

pub use viewer::{Sent, Viewer};

use crate::error::{codes, Error, Kind, Result};
use crate::metrics::Metrics;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use deltas::DeltaEvent;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
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

    /// How often the shared reader of a running job reads its new text rows, in ms,
    /// when no LISTEN connection wakes it (one read per job and viewing user).
    #[arg(long, env = "BOOKENGINE_STREAM_DELTA_POLL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(20..))]
    pub stream_delta_poll_ms: u64,

    /// Postgres connection (direct or session pooler, not the transaction pooler) on
    /// which to LISTEN for `generation_deltas` notifications: readers then read new
    /// text when it is written instead of polling. Reads still go through PostgREST
    /// with the viewer's token; this connection only carries job ids.
    #[arg(long, env = "BOOKENGINE_STREAM_LISTEN_URL", hide_env_values = true)]
    pub stream_listen_url: Option<Secret>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            streams_per_user: 16,
            streams_per_job: 64,
            stream_poll_ms: 400,
            stream_delta_poll_ms: 100,
            stream_listen_url: None,
        }
    }
}

/// Seconds a refused viewer is asked to wait (a slot frees when any stream closes).
const RETRY_AFTER_SECS: u64 = 5;

/// Updates a viewer may fall behind before it skips to the latest snapshot.
const CHANNEL_CAPACITY: usize = 64;

/// Text a reader keeps for joining and resuming viewers; older rows are read from the
/// table by the viewer who needs them.
pub const HISTORY_BYTES: usize = 8 << 20;

/// How long a joining viewer waits for a new reader's first round before it reads
/// what was written so far itself.
const FIRST_ROUND_WAIT: Duration = Duration::from_secs(5);

/// One update for every viewer of a job, serialised once.
#[derive(Debug)]
pub struct Update {
    /// Position in this reader's sequence (viewers skip what they have seen).
    pub seq: u64,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// The job as it is now: `progress`, `done` or `error` with its JSON payload;
    /// the stream ends after one that is `last`.
    Snapshot {
        event: &'static str,
        data: String,
        last: bool,
    },
    /// Exactly the text rows with `after < seq <= upto`, ascending.
    Deltas {
        after: i64,
        upto: i64,
        events: Vec<Arc<DeltaEvent>>,
    },
}

impl Update {
    fn is_last(&self) -> bool {
        matches!(self.body, Body::Snapshot { last: true, .. })
    }
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
    /// A LISTEN connection is up: readers of running jobs wait for its wake-ups
    /// (and read at each light interval) instead of polling for text.
    listening: AtomicBool,
    /// Ends the LISTEN task with the hub.
    stop: CancellationToken,
}

impl Drop for HubInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An authorising read several joining viewers wait for: visible or not, or the
/// read's failure (each waiter then reads with its own token).
type Authorising = Shared<BoxFuture<'static, Result<bool, Arc<Error>>>>;

#[derive(Default)]
struct HubState {
    // Ordered by job first, so the readers of one job are one range (LISTEN wake-ups).
    readers: BTreeMap<(Uuid, Uuid), Arc<Reader>>,
    per_user: HashMap<Uuid, u32>,
    per_job: HashMap<Uuid, u32>,
    next_viewer: u64,
    /// The authorising read in flight per (job, user), with the viewer id that began it.
    authorising: HashMap<(Uuid, Uuid), (u64, Authorising)>,
}

/// What one reader shares with its viewers.
struct Reader {
    job: Uuid,
    tx: broadcast::Sender<Arc<Update>>,
    shared: Mutex<ReaderShared>,
    /// Rung when a write of this job's text was announced (LISTEN).
    wake: Notify,
    /// Rounds of reads done (a joining viewer waits for the first).
    rounds: watch::Sender<u64>,
}

#[derive(Default)]
struct ReaderShared {
    /// The last snapshot published: what a new viewer starts from.
    latest: Option<Arc<Update>>,
    next_seq: u64,
    /// Each viewer's token and its expiry (unix seconds).
    tokens: HashMap<u64, (i64, Secret)>,
    /// When a read of the reader last found the job visible to its user.
    visible_at: Option<Instant>,
    /// The job's text rows the reader has published.
    history: History,
}

/// The text rows a reader published, contiguous: every row with `from < seq <= upto`
/// (once `ready`, i.e. after its first read, which starts at the beginning).
#[derive(Default)]
struct History {
    ready: bool,
    from: i64,
    upto: i64,
    rows: VecDeque<Arc<DeltaEvent>>,
    bytes: usize,
}

impl History {
    /// Add a published batch: the rows with `after < seq <= upto`.
    fn add(&mut self, after: i64, upto: i64, events: &[Arc<DeltaEvent>]) {
        if !self.ready && after != 0 {
            return;
        }
        if !self.ready || after > self.upto {
            // The first read, or (not expected) a gap: start over at `after`.
            self.rows.clear();
            self.bytes = 0;
            self.from = after;
            self.upto = after;
            self.ready = true;
        }
        for e in events {
            if e.seq > self.upto {
                self.bytes += e.data.len();
                self.upto = e.seq;
                self.rows.push_back(e.clone());
            }
        }
        self.upto = self.upto.max(upto);
        while self.bytes > HISTORY_BYTES {
            match self.rows.pop_front() {
                Some(old) => {
                    self.bytes -= old.data.len();
                    self.from = old.seq;
                }
                None => break,
            }
        }
    }

    /// The rows with `after < seq <= upto` (no upper bound: `None`) and how far they
    /// go, when this history holds everything from `after`; `None` when it does not.
    fn rows_after(&self, after: i64, upto: Option<i64>) -> Option<(Vec<Arc<DeltaEvent>>, i64)> {
        if !self.ready || after < self.from {
            return None;
        }
        let end = upto.map_or(self.upto, |u| u.min(self.upto));
        let start = self.rows.partition_point(|e| e.seq <= after);
        let rows: Vec<_> = self
            .rows
            .iter()
            .skip(start)
            .take_while(|e| e.seq <= end)
            .cloned()
            .collect();
        Some((rows, end.max(after)))
    }
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
    fn send(&self, body: Body) {
        let update = {
            let mut shared = lock(&self.shared);
            if let Body::Deltas {
                after,
                upto,
                events,
            } = &body
            {
                shared.history.add(*after, *upto, events);
            }
            shared.next_seq += 1;
            let update = Arc::new(Update {
                seq: shared.next_seq,
                body,
            });
            if matches!(update.body, Body::Snapshot { .. }) {
                shared.latest = Some(update.clone());
            }
            update
        };
        // No receiver is fine: viewers joining later start from `latest` and the table.
        let _ = self.tx.send(update);
    }

    fn publish(&self, event: &'static str, data: String, last: bool) {
        self.send(Body::Snapshot { event, data, last });
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

impl WatchHub {
    pub fn new(rest: Rest, config: StreamConfig) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                rest,
                config,
                state: Mutex::new(HubState::default()),
                listening: AtomicBool::new(false),
                stop: CancellationToken::new(),
            }),
        };
        if let Some(url) = hub.inner.config.stream_listen_url.clone() {
            listen::spawn(Arc::downgrade(&hub.inner), url, hub.inner.stop.clone());
        }
        hub
    }

    /// Open a stream on `job` for `user`, whose verified token expires at `exp`
    /// (unix seconds), sending the text rows after `after` (0: all of them). Refused
    /// with `too_many_streams` beyond the caps, and with the read's own error
    /// (`generation_not_found`, …) when the token cannot see the job.
    pub async fn watch(
        &self,
        job: Uuid,
        user: Uuid,
        token: Secret,
        exp: i64,
        after: i64,
    ) -> Result<Viewer> {
        let slot = self.reserve(job, user)?;
        self.authorise(job, user, &token).await?;
        Ok(self.join(slot, token, exp, after.max(0)))
    }

    /// May `user` (whose token this is, verified) see `job`? Vouched for by the user's
    /// reader when it saw the job lately; otherwise one read, shared with the viewers
    /// of the same user joining at the same moment.
    async fn authorise(&self, job: Uuid, user: Uuid, token: &Secret) -> Result<()> {
        let key = (job, user);
        let fresh = Duration::from_millis(self.inner.config.stream_poll_ms.saturating_mul(2));
        let (owner, read, mine) = {
            let mut state = lock(&self.inner.state);
            let vouched = state.readers.get(&key).is_some_and(|r| {
                lock(&r.shared)
                    .visible_at
                    .is_some_and(|at| at.elapsed() <= fresh)
            });
            if vouched {
                return Ok(());
            }
            state.next_viewer += 1;
            let id = state.next_viewer;
            let rest = self.inner.rest.clone();
            let caller = Caller::User(token.clone());
            let (owner, read) = state
                .authorising
                .entry(key)
                .or_insert_with(|| {
                    let read = async move { visible(&rest, &caller, job).await.map_err(Arc::new) };
                    (id, read.boxed().shared())
                })
                .clone();
            (owner, read, owner == id)
        };
        // The read leaves the map when it ends, or when its waiters are gone (so no
        // token stays behind in it).
        let _forget = Forget {
            hub: &self.inner,
            key,
            owner,
        };
        let seen = match read.await {
            Ok(seen) => seen,
            Err(e) if mine => return Err(e.as_ref().clone()),
            // Another viewer's read failed (its token, a hiccup): this one reads itself.
            Err(_) => visible(&self.inner.rest, &Caller::User(token.clone()), job).await?,
        };
        if seen {
            Ok(())
        } else {
            Err(not_found(job))
        }
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

    fn join(&self, slot: Slot, token: Secret, exp: i64, after: i64) -> Viewer {
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
                    wake: Notify::new(),
                    rounds: watch::Sender::new(0),
                });
                state.readers.insert(key, r.clone());
                (r, true)
            }
        };
        // Under the hub lock: a reader retires only under it, and only with no tokens.
        let rx = reader.tx.subscribe();
        lock(&reader.shared).tokens.insert(id, (exp, token.clone()));
        drop(state);
        if start {
            tokio::spawn(reader::run_reader(self.inner.clone(), key, reader.clone()));
        }
        Viewer {
            _slot: slot,
            id,
            reader,
            rx,
            deadline: deadline_of(exp),
            rest: self.inner.rest.clone(),
            token,
            after,
        }
    }

    /// Readers running now (for tests and metrics).
    pub fn readers(&self) -> usize {
        lock(&self.inner.state).readers.len()
    }

    /// Is a LISTEN connection up (readers woken by the writes)?
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }
}

impl HubInner {
    /// Wake the readers of `job` (a write of its text was announced).
    fn wake_job(&self, job: Uuid) {
        let state = lock(&self.state);
        for reader in state
            .readers
            .range((job, Uuid::nil())..=(job, Uuid::max()))
            .map(|(_, r)| r)
        {
            reader.wake.notify_one();
        }
    }

    /// Wake every reader (LISTEN (re)connected: what was written meanwhile is unannounced).
    fn wake_all(&self) {
        for reader in lock(&self.state).readers.values() {
            reader.wake.notify_one();
        }
    }
}

/// Takes an authorising read out of the map when dropped (unless a later one replaced it).
struct Forget<'a> {
    hub: &'a HubInner,
    key: (Uuid, Uuid),
    owner: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.hub.state);
        if state
            .authorising
            .get(&self.key)
            .is_some_and(|(o, _)| *o == self.owner)
        {
            state.authorising.remove(&self.key);
        }
    }
}

/// The authorising read: can this caller see the job? (One light read.)
async fn visible(rest: &Rest, caller: &Caller, job: Uuid) -> Result<bool> {
    Metrics::global()
        .stream_reads
        .with_label_values(&["join"])
        .inc();
    let builder = rest
        .rpc(caller, "generation_get", &json!({ "job_id": job }))?
        .select("id");
    let rows: Vec<serde_json::Value> = rest.send(builder).await?;
    Ok(!rows.is_empty())
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(
        codes::GENERATION_NOT_FOUND,
        format!("generation {id} not found"),
    )
}
