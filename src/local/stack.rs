//! `bookengine local up | down | status`.

use super::{
    apply_baseline, create_database, ensure_server, find_or_install_postgrest, local_jwt_secret,
    local_keys, spawn_postgrest, state_dir, stop_private_cluster, wait_ready, write_private,
    PostgrestOptions,
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
}

impl StackEnv {
    /// `export` lines for a shell (`eval "$(bookengine local up)"`).
    pub fn exports(&self) -> String {
        format!(
            "export DATABASE_URL='{}'\nexport POSTGREST_URL='{}'\nexport SUPABASE_JWT_SECRET='{}'\n\
             export SUPABASE_ANON_KEY='{}'\nexport SUPABASE_SERVICE_ROLE_KEY='{}'\n",
            self.database_url.expose(),
            self.postgrest_url,
            self.jwt_secret.expose(),
            self.anon_key.expose(),
            self.service_role_key.expose(),
        )
    }

    /// Set these variables in this process (the demo runs in-process).
    pub fn apply_to_process(&self) {
        std::env::set_var("DATABASE_URL", self.database_url.expose());
        std::env::set_var("POSTGREST_URL", &self.postgrest_url);
        std::env::set_var("SUPABASE_JWT_SECRET", self.jwt_secret.expose());
        std::env::set_var("SUPABASE_ANON_KEY", self.anon_key.expose());
        std::env::set_var("SUPABASE_SERVICE_ROLE_KEY", self.service_role_key.expose());
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

fn read_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("postgrest.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn url_for(config: &tokio_postgres::Config) -> String {
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
pub async fn up(database_url: &Secret, db: &tokio_postgres::Config, port: u16) -> Result<StackEnv> {
    let dir = state_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
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

    let running = read_pid(&dir).filter(|pid| pid_alive(*pid));
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
        let bin = find_or_install_postgrest(&dir)?;
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

    let env = StackEnv {
        database_url,
        postgrest_url,
        jwt_secret,
        anon_key: keys.anon_key,
        service_role_key: keys.service_role_key,
    };
    write_private(&dir.join("env"), &env.exports())?;
    Ok(env)
}

fn kill(pid: i32) {
    let _ = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status();
}

/// Stop what `up` started. Returns a line per thing stopped.
pub fn down() -> Result<Vec<String>> {
    let dir = state_dir();
    let mut done = Vec::new();
    if let Some(pid) = read_pid(&dir) {
        if pid_alive(pid) {
            kill(pid);
            done.push(format!("stopped PostgREST (pid {pid})"));
        }
        let _ = std::fs::remove_file(dir.join("postgrest.pid"));
    }
    if stop_private_cluster(&dir.join("postgres"))? {
        done.push("stopped the private Postgres cluster".into());
    }
    Ok(done)
}

/// One line on what runs.
pub async fn status(port: u16) -> String {
    let dir = state_dir();
    let url = format!("http://127.0.0.1:{port}");
    match read_pid(&dir).filter(|p| pid_alive(*p)) {
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
