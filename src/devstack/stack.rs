//! `bookengine local up | down | status`.

use super::gateway::{self, GatewayConfig};
use super::ports;
use super::{
    apply_baseline, create_database, ensure_server, find_or_install_postgrest, local_api_keys,
    local_jwt_secret, local_keys, spawn_postgrest, stop_private_cluster, wait_ready, write_private,
    HomeArgs, PostgrestOptions,
};
use crate::error::{Error, Result};
use crate::migrate;
use crate::secret::Secret;
use std::path::Path;
use std::time::Duration;

/// What a client of the local stack needs, as Supabase names it.
pub struct StackEnv {
    pub database_url: Secret,
    pub postgrest_url: String,
    pub jwt_secret: Secret,
    pub anon_key: Secret,
    pub service_role_key: Secret,
    /// The local development gateway: answers where a Supabase project does.
    pub supabase_url: String,
    pub publishable_key: Secret,
    pub secret_key: Secret,
}

impl StackEnv {
    /// `export` lines for a shell (`eval "$(bookengine local up)"`).
    pub fn exports(&self) -> String {
        format!(
            "export DATABASE_URL='{}'\nexport POSTGREST_URL='{}'\nexport SUPABASE_JWT_SECRET='{}'\n\
             export SUPABASE_ANON_KEY='{}'\nexport SUPABASE_SERVICE_ROLE_KEY='{}'\n\
             export SUPABASE_URL='{}'\nexport SUPABASE_PUBLISHABLE_KEY='{}'\n\
             export SUPABASE_SECRET_KEY='{}'\n",
            self.database_url.expose(),
            self.postgrest_url,
            self.jwt_secret.expose(),
            self.anon_key.expose(),
            self.service_role_key.expose(),
            self.supabase_url,
            self.publishable_key.expose(),
            self.secret_key.expose(),
        )
    }
}

/// Create the database if needed, apply the baseline and the migrations, and tell a
/// running PostgREST to reload its schema cache.
pub async fn prepare_database(
    config: &tokio_postgres::Config,
) -> Result<Vec<migrate::MigrationState>> {
    create_database(config).await?;
    apply_baseline(config).await?;
    let mut client = migrate::connect(config).await?;
    let applied = migrate::run(&mut client).await?;
    let _ = client.batch_execute("NOTIFY pgrst, 'reload schema'").await;
    Ok(applied)
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn read_pid(dir: &Path, name: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A password-less connection string for `config` (the local, trust-auth server).
pub fn url_for(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("bookengine");
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Bring the stack up (idempotent: a running PostgREST is reused).
pub async fn up(
    home: &HomeArgs,
    database_url: &Secret,
    db: &tokio_postgres::Config,
    port: u16,
    gateway_port: Option<u16>,
) -> Result<StackEnv> {
    let gateway_port = gateway_port.unwrap_or_else(|| default_gateway_port(port));
    let dir = home.home.clone();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    // Another checkout's stack on our ports would answer with its own JWT secret (every
    // token of ours "invalid"): refuse before touching anything.
    for (name, p) in [("postgrest", port), ("gateway", gateway_port)] {
        if read_pid(&dir, name).filter(|pid| pid_alive(*pid)).is_none() {
            ports::ensure_free(p, &dir)?;
        }
    }
    let server = ensure_server(db, Some(&dir.join("postgres"))).await?;
    let database_url = if migrate::describe_host(&server) == migrate::describe_host(db) {
        database_url.clone()
    } else {
        Secret::new(url_for(&server))
    };
    prepare_database(&server).await?;

    let jwt_secret = local_jwt_secret(&dir)?;
    let keys = local_keys(&jwt_secret)?;
    let postgrest_url = format!("http://127.0.0.1:{port}");

    let running = read_pid(&dir, "postgrest").filter(|pid| pid_alive(*pid));
    let reuse = match running {
        Some(_) => wait_ready(&postgrest_url, Duration::from_secs(2))
            .await
            .is_ok(),
        None => false,
    };
    if !reuse {
        if let Some(pid) = running {
            kill(pid);
        }
        let bin = find_or_install_postgrest(&dir, home.postgrest_bin.as_deref())?;
        let child = spawn_postgrest(&PostgrestOptions {
            bin: &bin,
            db: &server,
            port,
            jwt_secret: &jwt_secret,
            pool: 10,
            log: &dir.join("postgrest.log"),
        })?;
        std::fs::write(dir.join("postgrest.pid"), child.id().to_string())
            .map_err(|e| Error::internal(format!("writing pid file: {e}")))?;
        ports::claim(port, &dir);
        wait_ready(&postgrest_url, Duration::from_secs(20))
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "{}; see {}",
                    e.message,
                    dir.join("postgrest.log").display()
                ))
            })?;
    }

    let (publishable_key, secret_key) = local_api_keys(&dir)?;
    let supabase_url = format!("http://127.0.0.1:{gateway_port}");
    ensure_gateway(&dir, port, gateway_port, &supabase_url, !reuse).await?;

    let env = StackEnv {
        database_url,
        postgrest_url,
        jwt_secret,
        anon_key: keys.anon_key,
        service_role_key: keys.service_role_key,
        supabase_url,
        publishable_key,
        secret_key,
    };
    write_private(&dir.join("env"), &env.exports())?;
    Ok(env)
}

/// The gateway's port when BOOKENGINE_GATEWAY_PORT is not set: the PostgREST port + 1.
pub fn default_gateway_port(postgrest_port: u16) -> u16 {
    postgrest_port.checked_add(1).unwrap_or(postgrest_port - 1)
}

/// Is the gateway at `url` answering?
async fn gateway_ready(url: &str, timeout: Duration) -> bool {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let ok = http
            .get(format!("{url}/auth/v1/.well-known/jwks.json"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok || std::time::Instant::now() >= deadline {
            return ok;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a starting gateway may take to answer. Generous: on a busy 2-core machine a
/// debug binary can take seconds to start; the wait ends as soon as it answers.
const GATEWAY_START_WAIT: Duration = Duration::from_secs(30);

/// Start the local development gateway as a background process (`bookengine local
/// gateway`), or keep the running one when PostgREST was kept too.
async fn ensure_gateway(
    dir: &Path,
    postgrest_port: u16,
    gateway_port: u16,
    url: &str,
    restart: bool,
) -> Result<()> {
    let running = read_pid(dir, "gateway").filter(|pid| pid_alive(*pid));
    if let Some(pid) = running {
        if !restart && gateway_ready(url, Duration::from_secs(1)).await {
            return Ok(());
        }
        kill(pid);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::internal(format!("locating the bookengine binary: {e}")))?;
    let home = std::path::absolute(dir)
        .map_err(|e| Error::internal(format!("resolving {}: {e}", dir.display())))?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::internal(format!("opening {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::internal(format!("log handle: {e}")))?;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(exe)
        .arg("local")
        .arg("--home")
        .arg(&home)
        .args([
            "--port",
            &postgrest_port.to_string(),
            "--gateway-port",
            &gateway_port.to_string(),
            "gateway",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::unavailable(format!("starting the local gateway: {e}")))?;
    std::fs::write(dir.join("gateway.pid"), child.id().to_string())
        .map_err(|e| Error::internal(format!("writing pid file: {e}")))?;
    ports::claim(gateway_port, dir);
    if gateway_ready(url, GATEWAY_START_WAIT).await {
        return Ok(());
    }
    // Say why where it can be known: whether it exited, and the end of its log (the
    // caller's home may be a temporary directory that is gone by the time anyone looks).
    let state = match child.try_wait() {
        Ok(Some(status)) => format!("it exited ({status})"),
        _ => "it is still starting".to_owned(),
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    Err(Error::unavailable(format!(
        "the local gateway did not answer at {url} within {} s: {state}; see {}{}",
        GATEWAY_START_WAIT.as_secs(),
        log_path.display(),
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its last lines:\n{}", tail.join("\n"))
        }
    )))
}

/// The foreground of `bookengine local gateway`: serve the front over the local
/// PostgREST with the keys kept in the state directory, until stopped.
pub async fn run_gateway(
    home: &Path,
    postgrest_port: u16,
    gateway_port: u16,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let dir = home;
    let jwt_secret = local_jwt_secret(dir)?;
    let keys = local_keys(&jwt_secret)?;
    let (publishable_key, secret_key) = local_api_keys(dir)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", gateway_port))
        .await
        .map_err(|e| {
            Error::unavailable(format!(
                "the local gateway cannot listen on 127.0.0.1:{gateway_port}: {e}"
            ))
        })?;
    eprintln!(
        "local development gateway on http://127.0.0.1:{gateway_port} -> PostgREST on port {postgrest_port}"
    );
    gateway::serve(
        listener,
        GatewayConfig {
            postgrest_url: format!("http://127.0.0.1:{postgrest_port}"),
            jwt_secret,
            jwks_path: None,
            publishable_key,
            secret_key,
            anon_key: keys.anon_key,
            service_role_key: keys.service_role_key,
        },
        stop,
    )
    .await
}

fn kill(pid: i32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

/// Stop what `up` started. Returns a line per thing stopped.
pub fn down(home: &Path) -> Result<Vec<String>> {
    let dir = home;
    let mut done = Vec::new();
    for (name, label) in [("gateway", "the local gateway"), ("postgrest", "PostgREST")] {
        if let Some(pid) = read_pid(dir, name) {
            if pid_alive(pid) {
                kill(pid);
                done.push(format!("stopped {label} (pid {pid})"));
            }
            let _ = std::fs::remove_file(dir.join(format!("{name}.pid")));
        }
    }
    ports::release_all(dir);
    if stop_private_cluster(&dir.join("postgres"))? {
        done.push("stopped the private Postgres cluster".into());
    }
    Ok(done)
}

/// A line per process on what runs.
pub async fn status(home: &Path, port: u16, gateway_port: u16) -> String {
    let dir = home;
    let url = format!("http://127.0.0.1:{gateway_port}");
    let gateway = match read_pid(dir, "gateway").filter(|p| pid_alive(*p)) {
        Some(pid) => {
            let ready = gateway_ready(&url, Duration::from_millis(500)).await;
            format!(
                "local gateway (SUPABASE_URL) pid {pid} at {url}: {}",
                if ready { "ready" } else { "not answering" }
            )
        }
        None => "the local gateway is not running (bookengine local up)".into(),
    };
    let mut out = format!("{}\n{gateway}", postgrest_status(dir, port).await);
    let others = ports::others(dir);
    if !others.is_empty() {
        out.push_str("\nother local stacks on this machine:");
        for (p, home) in others {
            out.push_str(&format!(
                "\n  port {p}: {} (stop: BOOKENGINE_HOME={} bookengine local down)",
                home.display(),
                home.display()
            ));
        }
    }
    out
}

async fn postgrest_status(dir: &Path, port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}");
    match read_pid(dir, "postgrest").filter(|p| pid_alive(*p)) {
        Some(pid) => {
            let ready = wait_ready(&url, Duration::from_millis(500)).await.is_ok();
            format!(
                "PostgREST pid {pid} at {url}: {}",
                if ready { "ready" } else { "not answering" }
            )
        }
        None => "PostgREST is not running (bookengine local up)".into(),
    }
}
