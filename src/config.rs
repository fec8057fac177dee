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

    /// Publishable API key (sb_publishable_...): the `apikey` header of every call
    /// made for a person (whose own JWT is the bearer). Wins over SUPABASE_ANON_KEY.
    #[arg(long, env = "SUPABASE_PUBLISHABLE_KEY", hide_env_values = true)]
    pub publishable_key: Option<Secret>,

    /// Secret API key (sb_secret_...): the worker's queue calls only (work that belongs
    /// to no person); sent as `apikey` alone. Wins over SUPABASE_SERVICE_ROLE_KEY.
    #[arg(long, env = "SUPABASE_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<Secret>,

    /// Legacy anon key (a JWT), used when SUPABASE_PUBLISHABLE_KEY is not set.
    #[arg(long, env = "SUPABASE_ANON_KEY", hide_env_values = true)]
    pub anon_key: Option<Secret>,

    /// Legacy service role key (a JWT), used when SUPABASE_SECRET_KEY is not set.
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

    /// The project URL without a trailing slash, when SUPABASE_URL is set.
    pub fn project_url(&self) -> Option<String> {
        self.supabase_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
    }

    /// The key of the service's own calls (the job queue): the secret key, else the
    /// legacy service role key. Both unset stops the worker with this message.
    pub fn service_role_key(&self) -> Result<&Secret> {
        present(&self.secret_key)
            .or(present(&self.service_role_key))
            .ok_or_else(|| {
                Error::config(
                    "SUPABASE_SECRET_KEY (or the legacy SUPABASE_SERVICE_ROLE_KEY) must be set for the worker",
                )
            })
    }
}

/// A setting that is set and not empty.
pub fn present(value: &Option<Secret>) -> Option<&Secret> {
    value.as_ref().filter(|v| !v.expose().trim().is_empty())
}

/// How the HTTP API verifies the bearer JWTs it is given.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AuthConfig {
    /// Legacy HS256 secret of the Supabase project (Settings > API > JWT secret).
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS with the project's asymmetric signing keys (ES256/RS256): an http(s) URL or
    /// a file path. Default: $SUPABASE_URL/auth/v1/.well-known/jwks.json when SUPABASE_URL
    /// is set. With a JWKS, SUPABASE_JWT_SECRET is optional.
    #[arg(long, env = "SUPABASE_JWKS_URL")]
    pub jwks_url: Option<String>,
}

impl AuthConfig {
    /// The JWKS to verify with, and whether it was named explicitly (a default that
    /// cannot be loaded is not fatal when the HS256 secret is there).
    pub fn jwks(&self, supabase: &SupabaseConfig) -> Option<(String, bool)> {
        match self.jwks_url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => Some((url.to_owned(), true)),
            _ => supabase
                .project_url()
                .map(|base| (format!("{base}/auth/v1/.well-known/jwks.json"), false)),
        }
    }
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

/// Every boolean setting of `command` and its subcommands accepts 1/0, yes/no, on/off
/// and true/false (clap's own `bool` parser takes only true/false), flag or variable.
pub fn boolish(command: clap::Command) -> clap::Command {
    let plain_bool = clap::builder::ValueParser::bool().type_id();
    command
        .mut_args(|arg| {
            if arg.get_value_parser().type_id() == plain_bool {
                arg.value_parser(clap::builder::BoolishValueParser::new())
            } else {
                arg
            }
        })
        .mut_subcommands(boolish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[derive(clap::Parser, Debug)]
    struct Settings {
        #[arg(long)]
        flag: bool,
        #[arg(long)]
        active: Option<bool>,
    }

    fn parse(args: &[&str]) -> std::result::Result<Settings, clap::Error> {
        let command = boolish(Settings::augment_args(clap::Command::new("t")));
        let matches = command.try_get_matches_from(args)?;
        Settings::from_arg_matches(&matches)
    }

    #[test]
    fn booleans_take_the_usual_spellings() {
        for (word, expected) in [
            ("1", true),
            ("0", false),
            ("yes", true),
            ("no", false),
            ("on", true),
            ("off", false),
            ("true", true),
            ("false", false),
        ] {
            let s = parse(&["t", "--active", word]).expect(word);
            assert_eq!(s.active, Some(expected), "{word}");
        }
        assert!(parse(&["t", "--flag"]).expect("flag").flag);
        assert!(!parse(&["t"]).expect("none").flag);
        assert!(parse(&["t", "--active", "maybe"]).is_err());
    }

    /// Settings are clap fields read once at start-up; the few environment reads left
    /// in the code are the platform's, not settings of ours. A new read fails here.
    #[test]
    fn settings_are_read_only_through_the_command_line_config() {
        const ALLOWED: &[(&str, &str)] = &[
            // $XDG_CACHE_HOME, $HOME and SSL_CERT_FILE, as every tool honours them.
            ("providers/local/fetch.rs", "platform locations"),
            // $PATH, to find `postgrest` as a shell would.
            ("devstack/postgrest.rs", "PATH lookup"),
            // BOOKENGINE_FUZZ_CASES, in property tests only.
            ("flow/mod.rs", "test cases"),
            ("http/webhooks.rs", "test cases"),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src folder").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source file");
                    let name = path
                        .strip_prefix(&root)
                        .expect("below src")
                        .to_string_lossy()
                        .replace('\\', "/");
                    let reads = ["env::var(", "env::var_os(", "env::set_var("];
                    if name != "config.rs"
                        && reads.iter().any(|r| text.contains(r))
                        && !ALLOWED.iter().any(|(f, _)| *f == name)
                    {
                        found.push(name);
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "environment read outside the config: {found:?}"
        );
    }
}
