//! Configuration from the environment, with Supabase's own variable names.
//!
//! Each section is a clap `Args` struct: every field is both a flag and an
//! environment variable, and its doc comment is the `--help` text. Sections check
//! themselves with `validate`-style accessors that name the setting at fault.

use crate::error::{Error, Result};
use crate::secret::Secret;
use reqwest::Url;

/// Where PostgREST is and which keys to present to it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SupabaseConfig {
    /// Supabase project URL; PostgREST is reached at $SUPABASE_URL/rest/v1.
    #[arg(long, env = "SUPABASE_URL")]
    pub supabase_url: Option<Url>,

    /// PostgREST base URL, used as is (wins over SUPABASE_URL).
    #[arg(long, env = "POSTGREST_URL")]
    pub postgrest_url: Option<Url>,

    /// Anon key, sent as the `apikey` header that Supabase's API gateway requires.
    #[arg(long, env = "SUPABASE_ANON_KEY", hide_env_values = true)]
    pub anon_key: Option<Secret>,

    /// Service role key: used only for work that belongs to no person (the job queue).
    #[arg(long, env = "SUPABASE_SERVICE_ROLE_KEY", hide_env_values = true)]
    pub service_role_key: Option<Secret>,
}

impl SupabaseConfig {
    /// The PostgREST base URL, without a trailing slash.
    pub fn rest_url(&self) -> Result<Url> {
        let url = match (&self.postgrest_url, &self.supabase_url) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => {
                let joined = format!("{}/rest/v1", base.as_str().trim_end_matches('/'));
                Url::parse(&joined)
                    .map_err(|e| Error::config(format!("SUPABASE_URL: not a URL ({e})")))?
            }
            (None, None) => {
                return Err(Error::config(
                    "POSTGREST_URL or SUPABASE_URL must be set (run `bookengine local up` for a local stack)",
                ))
            }
        };
        match url.scheme() {
            "http" | "https" => Ok(url),
            other => Err(Error::config(format!(
                "POSTGREST_URL: scheme must be http or https, not {other}"
            ))),
        }
    }

    pub fn service_role_key(&self) -> Result<&Secret> {
        self.service_role_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::config("SUPABASE_SERVICE_ROLE_KEY must be set for the worker"))
    }
}

/// How the HTTP API verifies the bearer JWTs it is given.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthConfig {
    /// Legacy HS256 secret of the Supabase project (Settings > API > JWT secret).
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS with the project's asymmetric signing keys (ES256/RS256): an http(s) URL,
    /// e.g. https://<ref>.supabase.co/auth/v1/.well-known/jwks.json, or a file path.
    #[arg(long, env = "SUPABASE_JWKS_URL")]
    pub jwks_url: Option<String>,
}

/// Postgres, for `migrate` and `local` only: requests never touch it directly.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// Postgres connection string (add sslmode=require for a hosted project).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/bookengine",
        hide_env_values = true
    )]
    pub database_url: Secret,
}

impl DatabaseConfig {
    pub fn pg_config(&self) -> Result<tokio_postgres::Config> {
        self.database_url
            .expose()
            .parse::<tokio_postgres::Config>()
            .map_err(|e| {
                Error::config(format!("DATABASE_URL: not a valid connection string ({e})"))
            })
    }
}
