//! `bookengine serve` (API + worker) and `bookengine worker` (worker only).

use crate::config::SupabaseConfig;
use crate::error::Result;
use crate::http::{Application, ServeConfig};
use crate::providers::ProvidersConfig;
use crate::worker::WorkerConfig;
use clap::Args;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServeConfig,
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = args.config;
    let app = Application::build(&config).await?;
    let shutdown = CancellationToken::new();
    let worker = if config.no_worker {
        // The worker starts the engine checker; an API-only instance starts its own
        // when it has the service key (otherwise its workers do it).
        if config.supabase.service_role_key().is_ok() {
            crate::engines::check::spawn(
                app.state.rest.clone(),
                std::time::Duration::from_millis(config.worker.check_interval_ms),
                shutdown.clone(),
            );
        }
        None
    } else {
        let (_, handle) = crate::worker::spawn(
            &config.supabase,
            &config.worker,
            &config.providers,
            app.state.wake.clone(),
            shutdown.clone(),
        )
        .await?;
        Some(handle)
    };
    tracing::info!(
        port = app.port(),
        worker = worker.is_some(),
        "bookengine listening"
    );
    let stop = shutdown.clone();
    app.run_until(async move {
        shutdown_signal().await;
        stop.cancel();
    })
    .await?;
    if let Some(w) = worker {
        let _ = w.await;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub supabase: SupabaseConfig,
    #[command(flatten)]
    pub worker: WorkerConfig,
    #[command(flatten)]
    pub providers: ProvidersConfig,
}

pub async fn worker(args: WorkerArgs) -> Result<()> {
    let shutdown = CancellationToken::new();
    let (_, handle) = crate::worker::spawn(
        &args.supabase,
        &args.worker,
        &args.providers,
        Arc::new(Notify::new()),
        shutdown.clone(),
    )
    .await?;
    shutdown_signal().await;
    shutdown.cancel();
    let _ = handle.await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
