//! The test harness: each test gets its own database (baseline + migrations) and
//! its own real PostgREST 12 process on a free port. Nothing is mocked.

use bookengine::auth::{mint, MintRequest};
use bookengine::config::SupabaseConfig;
use bookengine::devstack::{self, PostgrestOptions};
use bookengine::secret::Secret;
use reqwest::Url;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;
use tokio_postgres::Config;
use uuid::Uuid;

pub struct TestStack {
    pub db: Config,
    pub pg: tokio_postgres::Client,
    pub rest_url: String,
    pub jwt_secret: Secret,
    pub anon_key: Secret,
    pub service_key: Secret,
    /// The local development gateway in front of this stack's PostgREST (in-process):
    /// the project URL layout and the 2026 keys' rules.
    pub gateway: devstack::gateway::GatewayHandle,
    pub supabase_url: String,
    pub publishable_key: Secret,
    pub secret_key: Secret,
    pub http: reqwest::Client,
    postgrest: Child,
    postgrest_port: u16,
    postgrest_secret: Secret,
    postgrest_log: PathBuf,
}

/// A user of the test project, with a valid access token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: Uuid,
    #[allow(dead_code)]
    pub email: String,
    pub token: String,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Postgres server the tests create their databases on: BOOKENGINE_TEST_DATABASE_URL,
/// else the local server with trust auth, else (a fresh machine whose server asks for a
/// password) the same private cluster `bookengine local up` starts from the installed
/// server binaries.
async fn server_config() -> Config {
    static SERVER: tokio::sync::OnceCell<Config> = tokio::sync::OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let url = std::env::var("BOOKENGINE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let config: Config = url
                .parse()
                .expect("BOOKENGINE_TEST_DATABASE_URL must be a valid connection string");
            let private = repo_root().join(".bookengine").join("test-cluster");
            devstack::ensure_server(&config, Some(&private))
                .await
                .expect("a Postgres server for the tests")
        })
        .await
        .clone()
}

/// `BOOKENGINE_TEST_KEYS=new`: the service under test is configured as a current
/// Supabase project is, with only SUPABASE_URL (the gateway), the publishable and the
/// secret key (and the JWT secret); otherwise with PostgREST's URL and the legacy keys.
pub fn new_keys_mode() -> bool {
    std::env::var("BOOKENGINE_TEST_KEYS").is_ok_and(|v| v.trim() == "new")
}

/// A test-only ES256 key pair (tests/fixtures): the JWKS holds its public half.
pub const ES256_PRIVATE_PEM: &str = include_str!("../fixtures/es256-test-private.pem");
pub const JWKS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks-test.json");

impl TestStack {
    pub async fn start() -> TestStack {
        Self::start_with(false).await
    }

    /// With `jwks`, PostgREST verifies tokens against a JWKS holding both the HS256
    /// secret and the test ES256 key, as a project with asymmetric keys does.
    pub async fn start_with(jwks: bool) -> TestStack {
        Self::start_on(server_config().await, jwks).await
    }

    /// A stack on the Postgres server `server` (e.g. a private cluster a test restarts).
    pub async fn start_on(server: Config, jwks: bool) -> TestStack {
        let mut db = server;
        let name = format!("bookengine_test_{}", Uuid::new_v4().simple());
        db.dbname(&name);
        devstack::prepare_database(&db)
            .await
            .expect("prepare test database");
        let pg = bookengine::migrate::connect(&db)
            .await
            .expect("connect to test database");

        let state = repo_root().join(".bookengine");
        let bin = devstack::find_or_install_postgrest(&state, postgrest_bin().as_deref())
            .expect("PostgREST binary");
        let jwt_secret = devstack::random_secret(40);
        let keys = devstack::local_keys(&jwt_secret).expect("keys");
        let port = devstack::free_port().expect("port");
        let postgrest_secret = if jwks {
            use base64::Engine as _;
            let mut set: Value =
                serde_json::from_str(include_str!("../fixtures/jwks-test.json")).expect("jwks");
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jwt_secret.expose());
            if let Some(keys) = set["keys"].as_array_mut() {
                keys.push(serde_json::json!({"kty": "oct", "k": k, "alg": "HS256"}));
            }
            Secret::new(set.to_string())
        } else {
            jwt_secret.clone()
        };
        let logs = std::env::temp_dir().join("bookengine-test-logs");
        let _ = std::fs::create_dir_all(&logs);
        let postgrest_log = logs.join(format!("{name}.log"));
        let postgrest = devstack::spawn_postgrest(&PostgrestOptions {
            bin: &bin,
            db: &db,
            port,
            jwt_secret: &postgrest_secret,
            pool: 4,
            log: &postgrest_log,
        })
        .expect("spawn PostgREST");
        let rest_url = format!("http://127.0.0.1:{port}");
        devstack::wait_ready(&rest_url, Duration::from_secs(20))
            .await
            .expect("PostgREST ready");
        let publishable_key = Secret::new(format!(
            "sb_publishable_{}",
            devstack::random_secret(32).expose()
        ));
        let secret_key = Secret::new(format!(
            "sb_secret_{}",
            devstack::random_secret(32).expose()
        ));
        let gateway = devstack::gateway::spawn(devstack::gateway::GatewayConfig {
            postgrest_url: rest_url.clone(),
            jwt_secret: jwt_secret.clone(),
            jwks_path: jwks.then(|| PathBuf::from(JWKS_PATH)),
            publishable_key: publishable_key.clone(),
            secret_key: secret_key.clone(),
            anon_key: keys.anon_key.clone(),
            service_role_key: keys.service_role_key.clone(),
        })
        .await
        .expect("start the local gateway");
        TestStack {
            supabase_url: gateway.url.clone(),
            gateway,
            publishable_key,
            secret_key,
            db,
            pg,
            rest_url,
            jwt_secret,
            anon_key: keys.anon_key,
            service_key: keys.service_role_key,
            http: reqwest::Client::new(),
            postgrest,
            postgrest_port: port,
            postgrest_secret,
            postgrest_log,
        }
    }

    /// Count jobs over a new connection (the stack's own may have died with the server).
    pub async fn count_jobs_fresh(&self) -> i64 {
        let client = bookengine::migrate::connect(&self.db)
            .await
            .expect("reconnect");
        client
            .query_one("SELECT count(*) FROM generation_jobs", &[])
            .await
            .expect("count")
            .get(0)
    }

    /// Kill PostgREST (an outage), as SIGKILL would.
    pub fn kill_postgrest(&mut self) {
        let _ = self.postgrest.kill();
        let _ = self.postgrest.wait();
    }

    /// Start PostgREST again on the same port.
    pub async fn restart_postgrest(&mut self) {
        let bin = devstack::find_or_install_postgrest(
            &repo_root().join(".bookengine"),
            postgrest_bin().as_deref(),
        )
        .expect("PostgREST binary");
        self.postgrest = devstack::spawn_postgrest(&PostgrestOptions {
            bin: &bin,
            db: &self.db,
            port: self.postgrest_port,
            jwt_secret: &self.postgrest_secret,
            pool: 4,
            log: &self.postgrest_log,
        })
        .expect("respawn PostgREST");
        devstack::wait_ready(&self.rest_url, Duration::from_secs(20))
            .await
            .expect("PostgREST ready again");
    }

    /// The service's settings in the suite's key mode (see [`new_keys_mode`]).
    pub fn supabase_config(&self) -> SupabaseConfig {
        if new_keys_mode() {
            self.supabase_config_new_keys()
        } else {
            SupabaseConfig {
                postgrest_url: Some(Url::parse(&self.rest_url).expect("url")),
                anon_key: Some(self.anon_key.clone()),
                service_role_key: Some(self.service_key.clone()),
                ..Default::default()
            }
        }
    }

    /// Only what a current Supabase project hands out: its URL (here the gateway) and
    /// the publishable and secret keys.
    pub fn supabase_config_new_keys(&self) -> SupabaseConfig {
        SupabaseConfig {
            supabase_url: Some(Url::parse(&self.supabase_url).expect("url")),
            publishable_key: Some(self.publishable_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            ..Default::default()
        }
    }

    pub fn token_for(&self, user: Uuid) -> String {
        mint(
            &self.jwt_secret,
            &MintRequest {
                user: Some(user),
                role: "authenticated".into(),
                ttl: Duration::from_secs(3600),
                email: None,
            },
        )
        .expect("mint")
        .expose()
        .to_owned()
    }

    /// A user with a profile (`role`) and, when `tier` is given, a user_credits row.
    pub async fn user(&self, tier: Option<&str>, admin: bool) -> TestUser {
        let id = Uuid::new_v4();
        let email = format!("{}@example.test", id.simple());
        self.pg
            .execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
                &[&id, &email],
            )
            .await
            .expect("insert user");
        let role = if admin { "admin" } else { "user" };
        self.pg
            .execute(
                "INSERT INTO public.profiles (id, email, role) VALUES ($1, $2, $3)",
                &[&id, &email, &role],
            )
            .await
            .expect("insert profile");
        if let Some(tier) = tier {
            self.pg
                .execute(
                    "INSERT INTO public.user_credits (user_id, tier) VALUES ($1, $2)",
                    &[&id, &tier],
                )
                .await
                .expect("insert credits");
        }
        TestUser {
            id,
            email,
            token: self.token_for(id),
        }
    }

    pub async fn admin(&self) -> TestUser {
        self.user(Some("enterprise"), true).await
    }

    pub async fn set_tier(&self, user: Uuid, tier: &str) {
        self.pg
            .execute(
                "UPDATE public.user_credits SET tier = $2 WHERE user_id = $1",
                &[&user, &tier],
            )
            .await
            .expect("update tier");
    }

    /// A raw PostgREST request with a bearer token; returns (status, JSON body).
    pub async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method,
                format!("{}/{}", self.rest_url, path.trim_start_matches('/')),
            )
            .header("Prefer", "return=representation");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("PostgREST request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Insert an engine straight into the database (bypassing RLS) for fixtures.
    pub async fn engine_fixture(&self, name: &str, active: bool) -> Uuid {
        let row = self
            .pg
            .query_one(
                "INSERT INTO public.ai_engines (name, flow_config, models, active) \
                 VALUES ($1, $3, '[]', $2) RETURNING id",
                &[&name, &active, &one_step_flow_config()],
            )
            .await
            .expect("insert engine");
        let id: Uuid = row.get(0);
        // The fixture's flow is valid by construction: record it as checked, as a running
        // service's checker would within a second (sql/V7), so tests without a worker can
        // request generations on it.
        self.pg
            .execute(
                "UPDATE public.engine_checks SET state = 'runnable', checked_at = now() \
                 WHERE engine_id = $1 AND state = 'pending'",
                &[&id],
            )
            .await
            .expect("mark the fixture engine checked");
        id
    }

    pub async fn assign_fixture(
        &self,
        engine: Uuid,
        tier: Option<&str>,
        user: Option<Uuid>,
        priority: i32,
        active: bool,
    ) -> Uuid {
        let kind = if tier.is_some() { "tier" } else { "user" };
        let row = self
            .pg
            .query_one(
                "INSERT INTO public.engine_assignments (engine_id, assignment_type, tier, user_id, priority, active) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[&engine, &kind, &tier, &user, &priority, &active],
            )
            .await
            .expect("insert assignment");
        row.get(0)
    }
}

impl Drop for TestStack {
    fn drop(&mut self) {
        let _ = self.postgrest.kill();
        let _ = self.postgrest.wait();
        let db = self.db.clone();
        // Drop the database from a fresh runtime: Drop cannot await.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(devstack::drop_database(&db));
            }
        })
        .join();
    }
}

/// The service under test, bound to a free port, in front of its own stack.
pub struct TestApp {
    pub stack: TestStack,
    pub address: String,
    pub http: reqwest::Client,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
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
    spawn_app_on(TestStack::start().await, worker).await
}

/// The app in front of a stack the caller built.
pub async fn spawn_app_on(stack: TestStack, worker: Option<WorkerSetup>) -> TestApp {
    let config = bookengine::http::ServeConfig {
        addr: "127.0.0.1:0".into(),
        webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
        supabase: stack.supabase_config(),
        auth: bookengine::config::AuthConfig {
            jwt_secret: Some(stack.jwt_secret.clone()),
            jwks_url: None,
        },
        no_worker: worker.is_none(),
        worker: Default::default(),
        providers: Default::default(),
        ops: Default::default(),
    };
    let app = bookengine::http::Application::build(&config)
        .await
        .expect("build app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = tokio_util::sync::CancellationToken::new();
    if let Some((worker_config, providers)) = worker {
        bookengine::worker::spawn(
            &config.supabase,
            &worker_config,
            &providers,
            app.state.wake.clone(),
            shutdown.clone(),
        )
        .await
        .expect("spawn worker");
    }
    let stop = shutdown.clone();
    tokio::spawn(app.run_until(async move { stop.cancelled().await }));
    TestApp {
        stack,
        address,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl TestApp {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.address, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

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
}

/// The smallest flow_config the database accepts (sql/V7: steps with id, provider,
/// model and prompt) and the service's check passes.
pub fn one_step_flow_config() -> Value {
    serde_json::json!({"type": "full", "steps": [{"id": "write", "name": "Write",
        "configuration": {"provider": "offline", "model": "fixture", "prompt": "Write a short book."}}]})
}

pub fn example_flow() -> Value {
    serde_json::from_str(include_str!("../../examples/book-flow.json"))
        .expect("example flow is JSON")
}

/// The PostgREST binary the person named, as `bookengine local --postgrest-bin` reads it.
pub fn postgrest_bin() -> Option<PathBuf> {
    std::env::var_os("POSTGREST_BIN").map(PathBuf::from)
}
