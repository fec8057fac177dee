//! A stack of one's own: a database (baseline + migrations) on the test server and a
//! real PostgREST 12 on a free port, with the local development gateway in front of it.
//! Nothing is mocked. Dropping the stack stops PostgREST and drops the database.

use super::http::JsonCalls;
use bookengine::auth::{mint, MintRequest};
use bookengine::config::SupabaseConfig;
use bookengine::devstack::{self, PostgrestOptions};
use bookengine::secret::Secret;
use reqwest::Url;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Config;
use uuid::Uuid;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Stack {
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
    pub postgrest: Postgrest,
}

/// A stack's PostgREST process, and what it takes to start it again on its port.
pub struct Postgrest {
    pub bin: PathBuf,
    /// Its db-pool.
    pub pool: u16,
    port: u16,
    /// The HS256 secret, or a JWKS holding it.
    jwt_secret: Secret,
    log: PathBuf,
    /// `None` while killed.
    child: Option<Child>,
}

/// How a stack is made.
struct StackOptions {
    database: String,
    pool: u16,
    jwks: bool,
    /// Where PostgREST's log (`<database>-postgrest.log`) goes.
    logs: PathBuf,
}

pub fn repo_root() -> PathBuf {
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

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(false).await
    }

    /// With `jwks`, PostgREST verifies tokens against a JWKS holding both the HS256
    /// secret and the test ES256 key, as a project with asymmetric keys does.
    pub async fn start_with(jwks: bool) -> Stack {
        Self::start_on(server_config().await, jwks).await
    }

    /// A test's stack on the Postgres server `server` (e.g. a private cluster a test
    /// restarts): a database of its own, PostgREST with a pool of 4.
    pub async fn start_on(server: Config, jwks: bool) -> Stack {
        let options = StackOptions {
            database: format!("bookengine_test_{}", Uuid::new_v4().simple()),
            pool: 4,
            jwks,
            logs: std::env::temp_dir().join("bookengine-test-logs"),
        };
        Self::launch(server, options)
            .await
            .expect("start a test stack")
    }

    /// A benchmark's stack: database `bookengine_bench_<name>` (a leftover of an
    /// interrupted run is dropped first), PostgREST with a pool of `pool`, logging in `logs`.
    pub async fn bench(name: &str, pool: u16, logs: PathBuf) -> Result<Stack, BoxError> {
        let options = StackOptions {
            database: format!("bookengine_bench_{name}"),
            pool,
            jwks: false,
            logs,
        };
        let mut leftover = server_config().await;
        leftover.dbname(&options.database);
        devstack::drop_database(&leftover).await?;
        Self::launch(server_config().await, options).await
    }

    async fn launch(server: Config, options: StackOptions) -> Result<Stack, BoxError> {
        let mut db = server;
        db.dbname(&options.database);
        devstack::prepare_database(&db).await?;
        let pg = bookengine::migrate::connect(&db).await?;

        let jwt_secret = devstack::random_secret(40);
        let keys = devstack::local_keys(&jwt_secret)?;
        let postgrest_secret = if options.jwks {
            use base64::Engine as _;
            let mut set: Value = serde_json::from_str(include_str!("../fixtures/jwks-test.json"))?;
            let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jwt_secret.expose());
            if let Some(keys) = set["keys"].as_array_mut() {
                keys.push(serde_json::json!({"kty": "oct", "k": k, "alg": "HS256"}));
            }
            Secret::new(set.to_string())
        } else {
            jwt_secret.clone()
        };
        let _ = std::fs::create_dir_all(&options.logs);
        let port = devstack::free_port()?;
        let mut postgrest = Postgrest {
            bin: devstack::find_or_install_postgrest(
                &repo_root().join(".bookengine"),
                postgrest_bin().as_deref(),
            )?,
            pool: options.pool,
            port,
            jwt_secret: postgrest_secret,
            log: options
                .logs
                .join(format!("{}-postgrest.log", options.database)),
            child: None,
        };
        postgrest.run(&db).await?;
        let rest_url = format!("http://127.0.0.1:{port}");
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
            jwks_path: options.jwks.then(|| PathBuf::from(JWKS_PATH)),
            publishable_key: publishable_key.clone(),
            secret_key: secret_key.clone(),
            anon_key: keys.anon_key.clone(),
            service_role_key: keys.service_role_key.clone(),
        })
        .await?;
        Ok(Stack {
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
        })
    }

    /// The count `sql` selects (one bigint), read past RLS.
    pub async fn count(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> i64 {
        self.pg
            .query_one(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
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
        self.postgrest.kill();
    }

    /// Start PostgREST again on the same port (after an outage, or after bulk seeding
    /// so that its schema cache is fresh).
    pub async fn restart_postgrest(&mut self) {
        self.postgrest.kill();
        self.postgrest
            .run(&self.db)
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
                // Outlasts the longest benchmark.
                ttl: Duration::from_secs(6 * 3600),
                email: None,
            },
        )
        .expect("mint")
        .expose()
        .to_owned()
    }
}

/// Calls to this stack's PostgREST, which answers with the rows it wrote.
impl JsonCalls for Stack {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}/{}", self.rest_url, path.trim_start_matches('/')),
            )
            .header("Prefer", "return=representation")
    }
}

impl Postgrest {
    /// Start it and wait until it answers.
    async fn run(&mut self, db: &Config) -> Result<(), BoxError> {
        self.child = Some(devstack::spawn_postgrest(&PostgrestOptions {
            bin: &self.bin,
            db,
            port: self.port,
            jwt_secret: &self.jwt_secret,
            pool: self.pool,
            log: &self.log,
        })?);
        devstack::wait_ready(
            &format!("http://127.0.0.1:{}", self.port),
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Postgrest {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // PostgREST first: the database is dropped next.
        self.postgrest.kill();
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

/// The PostgREST binary the person named, as `bookengine local --postgrest-bin` reads it.
pub fn postgrest_bin() -> Option<PathBuf> {
    std::env::var_os("POSTGREST_BIN").map(PathBuf::from)
}
