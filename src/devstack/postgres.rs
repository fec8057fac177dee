//! Postgres for the local stack: find the server, create a database, apply the
//! baseline and the migrations; or, when no server answers, run a private cluster.

use crate::error::{Error, Result};
use crate::migrate;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio_postgres::Config;

/// The Supabase-shaped baseline (roles, auth schema, profiles, user_credits).
pub const BASELINE_SQL: &str = include_str!("../../supabase/baseline.sql");

/// A `Config` for another database on the same server.
fn with_db(config: &Config, db: &str) -> Config {
    let mut c = config.clone();
    c.dbname(db);
    c
}

/// Make sure a server answers at `config`; if none does and `private_dir` is given,
/// start a private cluster there (as the `postgres` OS user when we are root, since
/// initdb refuses root) and return its config.
pub async fn ensure_server(config: &Config, private_dir: Option<&Path>) -> Result<Config> {
    let maintenance = with_db(config, "postgres");
    if migrate::connect(&maintenance).await.is_ok() {
        return Ok(config.clone());
    }
    let Some(dir) = private_dir else {
        return Err(Error::unavailable(format!(
            "no Postgres answers at {}",
            migrate::describe_host(config)
        )));
    };
    let port = 54329u16;
    eprintln!(
        "no Postgres answers at {}; starting a private cluster in {} on port {port}",
        migrate::describe_host(config),
        dir.display()
    );
    start_private_cluster(dir, port)?;
    let mut private = Config::new();
    private
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname(config.get_dbname().unwrap_or("bookengine"));
    for _ in 0..50 {
        if migrate::connect(&with_db(&private, "postgres"))
            .await
            .is_ok()
        {
            return Ok(private);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::unavailable(format!(
        "the private Postgres cluster in {} did not start; see its log there",
        dir.display()
    )))
}

fn start_private_cluster(dir: &Path, port: u16) -> Result<()> {
    let bin = find_pg_bin()?;
    let data = dir.join("pgdata");
    let as_postgres = is_root();
    let run = |program: &Path, args: &[&str]| -> Result<()> {
        let mut cmd = if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = cmd
            .args(args)
            .output()
            .map_err(|e| Error::internal(format!("running {}: {e}", program.display())))?;
        if !out.status.success() {
            return Err(Error::internal(format!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    if as_postgres {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
    }
    let data_s = data.display().to_string();
    if !data.join("PG_VERSION").exists() {
        run(
            &bin.join("initdb"),
            &["-D", &data_s, "-U", "postgres", "--auth=trust"],
        )?;
    }
    let log = dir.join("postgres.log").display().to_string();
    let opts = format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1");
    run(
        &bin.join("pg_ctl"),
        &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"],
    )
}

/// Stop the private cluster, if this state dir has one running.
pub fn stop_private_cluster(dir: &Path) -> Result<bool> {
    let data = dir.join("pgdata");
    if !data.join("postmaster.pid").exists() {
        return Ok(false);
    }
    let bin = find_pg_bin()?;
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
        c
    } else {
        Command::new(bin.join("pg_ctl"))
    };
    let status = cmd
        .args(["-D", &data.display().to_string(), "-m", "fast", "stop"])
        .status()
        .map_err(|e| Error::internal(format!("pg_ctl stop: {e}")))?;
    Ok(status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn find_pg_bin() -> Result<std::path::PathBuf> {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin"))
        .find(|b| b.join("initdb").exists())
        .ok_or_else(|| {
            Error::unavailable(
                "no Postgres answers at DATABASE_URL and no PostgreSQL server binaries were found \
                 under /usr/lib/postgresql (apt-get install postgresql)",
            )
        })
}

/// Create `config`'s database if it does not exist.
pub async fn create_database(config: &Config) -> Result<()> {
    let db = config.get_dbname().unwrap_or("bookengine").to_owned();
    let admin = migrate::connect(&with_db(config, "postgres")).await?;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await
        .map_err(|e| Error::internal(format!("checking database {db}: {e}")))?
        .is_some();
    if !exists {
        let ident = db.replace('"', "\"\"");
        if let Err(e) = admin
            .batch_execute(&format!("CREATE DATABASE \"{ident}\""))
            .await
        {
            // Lost a race with another creator: fine.
            if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                return Err(Error::internal(format!("creating database {db}: {e}")));
            }
        }
    }
    Ok(())
}

/// Drop `config`'s database (tests clean up after themselves).
pub async fn drop_database(config: &Config) -> Result<()> {
    let db = config.get_dbname().unwrap_or_default().replace('"', "\"\"");
    let admin = migrate::connect(&with_db(config, "postgres")).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await
        .map_err(|e| Error::internal(format!("dropping database {db}: {e}")))
}

/// Apply the local baseline. Roles are cluster-wide, so concurrent callers are
/// serialised with an advisory lock held on the maintenance database.
pub async fn apply_baseline(config: &Config) -> Result<()> {
    let admin = migrate::connect(&with_db(config, "postgres")).await?;
    admin
        .batch_execute("SELECT pg_advisory_lock(7311001)")
        .await
        .map_err(|e| Error::internal(format!("baseline lock: {e}")))?;
    let client = migrate::connect(config).await?;
    let result = client.batch_execute(BASELINE_SQL).await;
    let _ = admin
        .batch_execute("SELECT pg_advisory_unlock(7311001)")
        .await;
    result.map_err(|e| Error::internal(format!("applying supabase/baseline.sql: {e}")))
}
