//! The HTTP API (axum) for the React app and the Edge Function. Each module owns
//! its routes; `Application::build` binds the listener and returns the port, so
//! tests can bind port 0.

mod admin;
#[cfg(test)]
mod agreement;
mod assignments;
mod engines;
pub mod error;
pub mod extract;
mod generations;
mod health;
mod readiness;
mod webhooks;

use crate::auth::JwtVerifier;
use crate::config::{AuthConfig, SupabaseConfig};
use crate::error::{Error, Result};
use crate::generations::watch::{StreamConfig, WatchHub};
use crate::rest::Rest;
use crate::secret::Secret;
use axum::Router;
use readiness::Readiness;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub rest: Rest,
    pub verifier: JwtVerifier,
    /// Wakes the worker (webhook deliveries).
    pub wake: Arc<Notify>,
    pub webhook_secret: Option<Secret>,
    /// Shared readers behind the event streams, and their caps.
    pub streams: WatchHub,
    /// `/readyz`'s recent result.
    pub readiness: Arc<Readiness>,
    /// Bearer token `/metrics` requires; `None` leaves it open.
    pub metrics_token: Option<Secret>,
}

/// Operations settings of `serve`: event stream limits and the metrics endpoint.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OpsConfig {
    /// Bearer token `GET /metrics` requires (`Authorization: Bearer ...`); unset leaves
    /// /metrics open (it holds counts and latencies only).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,

    /// Local development only: a JSON file of seeded users (`[{"label", "user_id"}]`,
    /// written by `bookengine demo`) for which /admin offers ready-made tokens, signed
    /// with SUPABASE_JWT_SECRET. Unset, /admin/dev-users is a 404.
    #[arg(long, env = "BOOKENGINE_DEV_USERS")]
    pub dev_users: Option<String>,

    #[command(flatten)]
    pub streams: StreamConfig,
}

/// Settings for `bookengine serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BOOKENGINE_ADDR", default_value = "127.0.0.1:8787")]
    pub addr: String,

    /// Shared secret the Supabase Database Webhook sends as `Authorization: Bearer ...`.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    #[command(flatten)]
    pub supabase: SupabaseConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    /// Serve the API only; run workers separately with `bookengine worker`.
    #[arg(long, env = "BOOKENGINE_NO_WORKER")]
    pub no_worker: bool,

    #[command(flatten)]
    pub worker: crate::worker::WorkerConfig,

    #[command(flatten)]
    pub providers: crate::providers::ProvidersConfig,

    #[command(flatten)]
    pub ops: OpsConfig,
}

/// Largest request body accepted anywhere (flow documents included).
pub const BODY_LIMIT: usize = 1024 * 1024;

pub fn router(state: AppState, dev_users: admin::DevUsers) -> Router {
    Router::new()
        .merge(health::router())
        .merge(admin::router(dev_users))
        .merge(engines::router())
        .merge(assignments::router())
        .merge(generations::router())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        // After the API's limit: a webhook may carry a whole job row (webhooks.rs).
        .merge(webhooks::router())
        .layer(axum::middleware::from_fn(error::log_errors))
        // A bug (ours or a dependency's) answers 500 JSON instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
    pub state: AppState,
}

impl Application {
    pub async fn build(config: &ServeConfig) -> Result<Self> {
        let rest = Rest::new(&config.supabase)?;
        let verifier = crate::auth::verifier_from(&config.auth, &config.supabase).await?;
        let state = AppState {
            streams: WatchHub::new(rest.clone(), config.ops.streams.clone()),
            readiness: Arc::new(Readiness::new(rest.clone())),
            rest,
            verifier,
            wake: Arc::new(Notify::new()),
            webhook_secret: config.webhook_secret.clone().filter(|s| !s.is_empty()),
            metrics_token: config.ops.metrics_token.clone().filter(|s| !s.is_empty()),
        };
        let listener = TcpListener::bind(&config.addr).await.map_err(|e| {
            Error::config(format!(
                "BOOKENGINE_ADDR: cannot listen on {}: {e}",
                config.addr
            ))
        })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::internal(format!("listener address: {e}")))?
            .port();
        Ok(Self {
            port,
            listener,
            router: router(
                state.clone(),
                admin::DevUsers {
                    file: config
                        .ops
                        .dev_users
                        .clone()
                        .filter(|f| !f.trim().is_empty()),
                    jwt_secret: crate::config::present(&config.auth.jwt_secret).cloned(),
                },
            ),
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serve until the future `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        axum::serve(crate::net::nodelay(self.listener), self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::internal(format!("server: {e}")))
    }
}
