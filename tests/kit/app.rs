//! The service under test, bound to a free port in this process, in front of its own
//! stack, with a worker when asked; and the API calls the tests make through it.

use super::flows::example_flow;
use super::http::JsonCalls;
use super::mock_llm::Mocks;
use super::seed::TestUser;
use super::service::{serve_config, Service};
use super::stack::Stack;
use bookengine::http::ServeConfig;
use bookengine::secret::Secret;
use serde_json::Value;
use uuid::Uuid;

pub struct TestApp {
    // First, so that it stops (with the worker) before the stack goes.
    service: Service,
    pub stack: Stack,
    pub address: String,
    pub http: reqwest::Client,
}

pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

pub async fn spawn_app() -> TestApp {
    spawn_app_with(None).await
}

/// With `worker`, a worker runs in the app's process with those providers.
pub type WorkerSetup = (
    bookengine::worker::WorkerConfig,
    bookengine::providers::ProvidersConfig,
);

pub async fn spawn_app_with(worker: Option<WorkerSetup>) -> TestApp {
    spawn_app_on(Stack::start().await, worker).await
}

/// The app in front of a stack the caller built.
pub async fn spawn_app_on(stack: Stack, worker: Option<WorkerSetup>) -> TestApp {
    let config = ServeConfig {
        webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
        no_worker: worker.is_none(),
        ..serve_config(&stack)
    };
    let service = Service::start(&config).await.expect("build app");
    if let Some((worker_config, providers)) = worker {
        bookengine::worker::spawn(
            &config.supabase,
            &worker_config,
            &providers,
            service.state.wake.clone(),
            service.stop.clone(),
        )
        .await
        .expect("spawn worker");
    }
    TestApp {
        address: service.address.clone(),
        http: service.http.clone(),
        service,
        stack,
    }
}

/// Calls to the service.
impl JsonCalls for TestApp {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.address, path))
    }
}

impl TestApp {
    /// Deploy a flow document as `admin` through the API; returns the engine id.
    pub async fn deploy(&self, admin: &TestUser, doc: Value) -> Uuid {
        let (s, body) = self.post("/v1/engines", &admin.token, doc).await;
        assert_eq!(s, 201, "deploy: {body}");
        body["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("engine id")
    }

    /// Deploy the repository's example book flow as `admin`; returns the engine id.
    pub async fn deploy_example(&self, admin: &TestUser) -> Uuid {
        self.deploy(admin, example_flow()).await
    }

    /// Assign `engine` to `tier` through the API as `admin`.
    pub async fn assign_tier(&self, admin: &TestUser, engine: Uuid, tier: &str) {
        let (s, b) = self
            .post(
                "/v1/assignments",
                &admin.token,
                serde_json::json!({"engine_id": engine, "tier": tier}),
            )
            .await;
        assert_eq!(s, 200, "assign to {tier}: {b}");
    }

    /// A Database Webhook delivery of `body` to the service, with `auth` as its
    /// Authorization header.
    pub async fn deliver_webhook(&self, auth: Option<&str>, body: String) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}/webhooks/generation", self.address))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.expect("webhook delivery")
    }
}

/// The service with an in-process worker answering every model with the offline
/// provider (no network; what the JavaScript suites run against).
pub async fn spawn_offline_app() -> TestApp {
    let providers = bookengine::providers::ProvidersConfig {
        offline_fallback: true,
        provider_concurrency: 8,
        openai_base_url: String::new(),
        anthropic_base_url: String::new(),
        gemini_base_url: String::new(),
        ..Default::default()
    };
    let worker = bookengine::worker::WorkerConfig {
        poll_interval_ms: 200,
        ..Default::default()
    };
    spawn_app_with(Some((worker, providers))).await
}

/// A worker that polls every 100 ms and retries after 20 ms.
pub fn fast_worker() -> bookengine::worker::WorkerConfig {
    bookengine::worker::WorkerConfig {
        poll_interval_ms: 100,
        backoff_ms: 20,
        lease_seconds: 30,
        ..Default::default()
    }
}

/// The service with a [`fast_worker`] calling the three mock providers.
pub async fn app_with_mocks() -> (TestApp, Mocks) {
    let mocks = Mocks::start().await;
    let app = spawn_app_with(Some((fast_worker(), mocks.providers()))).await;
    (app, mocks)
}

/// Admin, a pro user with the example engine assigned to their tier.
pub async fn book_setup(app: &TestApp) -> (TestUser, TestUser, Uuid) {
    let (admin, engine) = example_engine_for(app, "pro").await;
    let pro = app.stack.user(Some("pro"), false).await;
    (admin, pro, engine)
}

/// An admin who deployed the example engine and assigned it to `tier`.
pub async fn example_engine_for(app: &TestApp, tier: &str) -> (TestUser, Uuid) {
    let admin = app.stack.admin().await;
    let engine = app.deploy_example(&admin).await;
    app.assign_tier(&admin, engine, tier).await;
    (admin, engine)
}
