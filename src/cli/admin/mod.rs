//! `engines`, `assign`, `assignments`, `resolve`: the SuperAdmin's commands. They
//! call the same library as the HTTP API, with the token given, so RLS decides.
//!
//! - `engines`: deploy, list, show, update, delete; versions, diffs, rollouts.
//! - `assignments`: assign, list, update, remove; what a person resolves to.
//! - here: who the command acts as, and the output helpers both share.

mod assignments;
mod engines;

pub use assignments::{assign, assignments_cmd, resolve, AssignArgs, AssignmentsArgs, ResolveArgs};
pub use engines::{engines, EnginesArgs};

use crate::config::SupabaseConfig;
use crate::error::{codes, Error, Result};
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use clap::Args;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use uuid::Uuid;

/// Who the command acts as.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// The caller's access token (a Supabase session JWT; locally: `bookengine token`).
    #[arg(long, env = "BOOKENGINE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Secret>,
    #[command(flatten)]
    pub supabase: SupabaseConfig,
}

impl AuthArgs {
    fn connect(&self) -> Result<(Rest, Caller, Option<Uuid>)> {
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::unauthenticated(codes::MISSING_TOKEN, "pass --token or set BOOKENGINE_TOKEN")
            })?;
        let user = token_subject(&token);
        Ok((Rest::new(&self.supabase)?, Caller::User(token), user))
    }
}

/// The `sub` of a token, read without verification: PostgREST verifies it.
fn token_subject(token: &Secret) -> Option<Uuid> {
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(
        token.expose(),
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &validation,
    )
    .ok()?;
    data.claims["sub"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::invalid(codes::INVALID_REQUEST, format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                codes::INVALID_REQUEST,
                format!("reading {}: {e}", path.display()),
            )
        })?
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            codes::INVALID_JSON,
            format!("{} is not valid JSON: {e}", path.display()),
        )
    })
}

/// `--json`: the value as the API returns it; otherwise its text form.
fn show<T: Serialize>(json: bool, value: &T, text: impl FnOnce()) {
    if json {
        print_json(value);
    } else {
        text();
    }
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn models_summary(models: &Value) -> String {
    models
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["provider"].as_str().unwrap_or("?"),
                        m["model"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
