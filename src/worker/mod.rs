//! The worker: claims generation jobs through PostgREST with the service role,
//! runs each engine's flow, and records every step. Woken by the Supabase
//! webhook, and polling, so a lost webhook delays a job but never loses it.
//!
//! One concept per file: `poll.rs` claims; `execute/` runs one job (its lifecycle
//! in `mod.rs`, step order in `graph.rs`, `for_each` in `fan_out.rs`, one model call
//! in `call.rs`, the run's state in `state.rs`); `record.rs` builds step records and
//! `writer.rs` saves them behind the run; `output.rs` reads answers and assembles
//! the book; `deltas/` stores streamed text; `retention.rs` deletes it later.

mod deltas;
mod execute;
mod output;
mod poll;
mod record;
mod retention;
mod writer;

use crate::metrics::Metrics;
use crate::providers::ProviderRegistry;
use crate::queue::Queue;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
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
