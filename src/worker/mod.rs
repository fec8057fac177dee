//! The worker: claims generation jobs through PostgREST with the service role,
//! runs each engine's flow, and records every step. Woken by the Supabase
//! webhook, and polling, so a lost webhook delays a job but never loses it.

mod deltas;
mod execute;
mod output;
mod record;
mod writer;

use crate::metrics::Metrics;
use crate::providers::ProviderRegistry;
use crate::queue::{Claim, Queue};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Worker settings.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once by this process.
    #[arg(long, env = "BOOKENGINE_WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,

    /// Calls of one fan-out step run at once, per job.
    #[arg(long, env = "BOOKENGINE_FANOUT_CONCURRENCY", default_value_t = 4)]
    pub fanout_concurrency: usize,

    /// How often to look for jobs without a webhook, in milliseconds.
    #[arg(long, env = "BOOKENGINE_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,

    /// Lease length; a job whose worker stops renewing it is taken over after this.
    #[arg(long, env = "BOOKENGINE_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,

    /// Retries per model for a step that does not set `retries`.
    #[arg(long, env = "BOOKENGINE_DEFAULT_RETRIES", default_value_t = 2)]
    pub default_retries: u32,

    /// Base of the exponential backoff between retries, in milliseconds.
    #[arg(long, env = "BOOKENGINE_BACKOFF_MS", default_value_t = 500)]
    pub backoff_ms: u64,

    /// Per-call timeout for a step that does not set `timeout_s`, in seconds.
    #[arg(long, env = "BOOKENGINE_CALL_TIMEOUT_SECONDS", default_value_t = 120)]
    pub call_timeout_seconds: u64,

    /// A call still running after this many milliseconds is marked `running` in its
    /// step row; quicker calls are recorded once, when they finish (a round trip saved).
    #[arg(long, env = "BOOKENGINE_RUNNING_MARK_MS", default_value_t = 500)]
    pub running_mark_ms: u64,

    /// How often to look for engines whose check is pending (written by any client,
    /// e.g. the React app through PostgREST), in milliseconds.
    #[arg(long, env = "BOOKENGINE_CHECK_INTERVAL_MS", default_value_t = 1000)]
    pub check_interval_ms: u64,

    /// This worker's name in leases (default: host-pid).
    #[arg(long, env = "BOOKENGINE_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Stream provider calls and store their text as it arrives (generation_deltas),
    /// readable while a job runs.
    #[arg(long, env = "BOOKENGINE_STREAM_DELTAS", default_value_t = true, action = clap::ArgAction::Set)]
    pub stream_deltas: bool,

    /// Streamed text is written at most this long after it arrived, in milliseconds
    /// (one write per worker, carrying all its jobs).
    #[arg(long, env = "BOOKENGINE_DELTA_FLUSH_MS", default_value_t = 100)]
    pub delta_flush_ms: u64,

    /// ... or as soon as this many bytes of text wait.
    #[arg(long, env = "BOOKENGINE_DELTA_FLUSH_BYTES", default_value_t = 16384)]
    pub delta_flush_bytes: usize,

    /// A finished job's streamed text is deleted after this many seconds (its step
    /// outputs hold it); every worker runs the cleanup every 30 s.
    #[arg(
        long,
        env = "BOOKENGINE_DELTA_RETENTION_SECONDS",
        default_value_t = 600
    )]
    pub delta_retention_seconds: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            fanout_concurrency: 4,
            poll_interval_ms: 1000,
            lease_seconds: 30,
            default_retries: 2,
            backoff_ms: 500,
            call_timeout_seconds: 120,
            running_mark_ms: 500,
            check_interval_ms: 1000,
            worker_id: None,
            stream_deltas: true,
            delta_flush_ms: 100,
            delta_flush_bytes: 16384,
            delta_retention_seconds: 600,
        }
    }
}

pub struct Worker {
    queue: Queue,
    providers: ProviderRegistry,
    config: WorkerConfig,
    id: String,
    metrics: Arc<Metrics>,
    deltas: deltas::Deltas,
}

impl Worker {
    pub fn new(queue: Queue, providers: ProviderRegistry, config: WorkerConfig) -> Arc<Self> {
        let id = config.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
            format!("{}-{}", host.trim(), std::process::id())
        });
        let deltas = deltas::Deltas::start(
            queue.clone(),
            deltas::DeltaSettings {
                flush: Duration::from_millis(config.delta_flush_ms.max(1)),
                flush_bytes: config.delta_flush_bytes.max(1),
            },
        );
        Arc::new(Self {
            queue,
            providers,
            config,
            id,
            metrics: Metrics::global(),
            deltas,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Claim and run jobs until `shutdown`; then stop claiming and give running
    /// jobs `grace` to finish (the rest are resumed by another worker after their lease).
    pub async fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut running: JoinSet<()> = JoinSet::new();
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let mut failures = 0u32;
        let mut compaction: Option<tokio::task::JoinHandle<()>> = None;
        let mut next_compaction = tokio::time::Instant::now() + COMPACTION_EVERY;
        tracing::info!(worker = %self.id, "worker started");
        loop {
            while running.try_join_next().is_some() {}
            // Housekeeping rides on the claim loop, one pass at a time, off its path.
            if tokio::time::Instant::now() >= next_compaction
                && compaction.as_ref().is_none_or(|h| h.is_finished())
            {
                next_compaction = tokio::time::Instant::now() + COMPACTION_EVERY;
                compaction = Some(tokio::spawn(self.clone().compact_deltas()));
            }
            let free = self.config.concurrency.saturating_sub(running.len());
            let mut claimed_all = false;
            if free > 0 {
                match self
                    .queue
                    .claim(&self.id, free, self.config.lease_seconds)
                    .await
                {
                    Ok(jobs) => {
                        failures = 0;
                        claimed_all = jobs.len() == free;
                        for claim in jobs {
                            self.metrics
                                .jobs_claimed
                                .with_label_values(&[self.id.as_str()])
                                .inc();
                            match claim {
                                Claim::Ready(job) => {
                                    running.spawn(self.clone().execute(job));
                                }
                                Claim::Unreadable {
                                    id,
                                    lease_token,
                                    reason,
                                } => {
                                    running.spawn(self.clone().reject(id, lease_token, reason));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            code = %e.code,
                            detail = e.internal.as_deref().unwrap_or(""),
                            "claim failed"
                        );
                    }
                }
            }
            // Back off while PostgREST is down; otherwise claim again at once when
            // the batch was full (more may be waiting).
            let pause = if failures > 0 {
                poll.saturating_mul(failures.min(5))
            } else if claimed_all {
                Duration::ZERO
            } else {
                poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        tracing::info!(worker = %self.id, jobs = running.len(), "worker stopping");
        let _ = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.abort_all();
    }
}

/// How often each worker deletes the deltas of jobs past their retention.
const COMPACTION_EVERY: Duration = Duration::from_secs(30);

impl Worker {
    /// One retention pass (sql/V11 delta_compact): the deltas of jobs that finished
    /// longer ago than the retention. Idle when another worker's pass is running.
    async fn compact_deltas(self: Arc<Self>) {
        match self
            .queue
            .compact_deltas(self.config.delta_retention_seconds, 500)
            .await
        {
            Ok(c) if c.jobs > 0 => {
                tracing::info!(
                    jobs = c.jobs,
                    rows = c.deleted,
                    "deltas past retention deleted"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(code = %e.code, "delta retention pass failed"),
        }
    }

    /// A claimed job this worker cannot read fails on its own, at once and for good
    /// (a retry would read the same row); the rest of its batch runs as usual.
    async fn reject(self: Arc<Self>, id: uuid::Uuid, lease: uuid::Uuid, reason: String) {
        let message = format!("the job cannot be run: {reason}");
        tracing::warn!(job_id = %id, %reason, "unreadable job failed");
        match self.queue.fail(id, lease, &message, false, 0).await {
            Ok(()) => self
                .metrics
                .jobs_finished
                .with_label_values(&["failed"])
                .inc(),
            // Its lease expires; the release's poison guard bounds how often this repeats.
            Err(e) => {
                tracing::warn!(job_id = %id, code = %e.code, "could not fail the unreadable job")
            }
        }
    }
}

/// Build a worker from configuration and run it in the background until `shutdown`.
pub async fn spawn(
    supabase: &crate::config::SupabaseConfig,
    config: &WorkerConfig,
    providers: &crate::providers::ProvidersConfig,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> crate::error::Result<(Arc<Worker>, tokio::task::JoinHandle<()>)> {
    supabase.service_role_key()?;
    let rest = crate::rest::Rest::new(supabase)?;
    let registry = providers.registry().await?;
    let labels = registry.labels();
    tracing::info!(providers = ?labels, "providers");
    // The engine checker rides along: a worker is where engines must be known good.
    crate::engines::check::spawn(
        rest.clone(),
        Duration::from_millis(config.check_interval_ms),
        shutdown.clone(),
    );
    let worker = Worker::new(Queue::new(rest), registry, config.clone());
    let handle = tokio::spawn(worker.clone().run(wake, shutdown, Duration::from_secs(10)));
    Ok((worker, handle))
}
