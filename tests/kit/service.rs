//! The service (the HTTP API; a worker only when the caller spawns one) in this
//! process, on a free port, in front of a stack.

use super::stack::{BoxError, Stack};
use bookengine::http::{AppState, Application, OpsConfig, ServeConfig};
use reqwest::Url;
use tokio_util::sync::CancellationToken;

/// What the kit's services start from: a free port, the stack's PostgREST and keys (in
/// the suite's key mode), its JWT secret; no worker, no webhook secret, default
/// operations settings.
pub fn serve_config(stack: &Stack) -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".into(),
        webhook_secret: None,
        supabase: stack.supabase_config(),
        auth: bookengine::config::AuthConfig {
            jwt_secret: Some(stack.jwt_secret.clone()),
            jwks_url: None,
        },
        no_worker: true,
        worker: Default::default(),
        providers: Default::default(),
        ops: Default::default(),
    }
}

/// A service running on the caller's runtime; stopped when dropped.
pub struct Service {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub state: AppState,
    pub http: reqwest::Client,
    /// Stops the service, and a worker spawned with it, when cancelled.
    pub stop: CancellationToken,
}

impl Service {
    pub async fn start(config: &ServeConfig) -> Result<Service, BoxError> {
        let app = Application::build(config).await?;
        let address = format!("http://127.0.0.1:{}", app.port());
        let state = app.state.clone();
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(app.run_until(async move { until.cancelled().await }));
        Ok(Service {
            address,
            state,
            http: reqwest::Client::new(),
            stop,
        })
    }

    /// The API alone, with its PostgREST calls going to `rest_url` (the stack's
    /// PostgREST, or a proxy in front of it) whatever the key mode, and these
    /// operations settings.
    pub async fn api_via(stack: &Stack, rest_url: &str, ops: OpsConfig) -> Service {
        let mut config = serve_config(stack);
        config.supabase.postgrest_url = Some(Url::parse(rest_url).expect("a PostgREST URL"));
        config.ops = ops;
        Service::start(&config).await.expect("start the service")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
