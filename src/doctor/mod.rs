//! `bookengine doctor`: reads the host Supabase project through DATABASE_URL and
//! reports what would let users past the specified policies, what breaks them, and
//! what is missing or slow, each finding with the SQL that fixes it. Read-only: the
//! session is READ ONLY, so not even a policy evaluated as a user can write.
//!
//! One file per group of checks: `trusted_columns` (who can write profiles.role and
//! user_credits.tier), `credits`, `migrations`, `webhook`, `keys`, `timeouts`, `lints`.

mod context;
mod credits;
mod finding;
mod keys;
mod lints;
mod migrations;
mod ownership;
mod timeouts;
mod trusted_columns;
mod webhook;

pub use context::Context;
pub use finding::{Finding, Severity};
pub use ownership::Ownership;

use crate::config::SupabaseConfig;
use crate::error::{Error, Result};

/// The exit code of `bookengine doctor` when it finds a security problem (README "CLI").
pub const EXIT_SECURITY_FINDING: i32 = 8;

/// The roles PostgREST runs people's requests as.
const API_ROLES: [&str; 2] = ["anon", "authenticated"];

/// Make the session read-only and gather what the checks share.
pub async fn context(client: tokio_postgres::Client, supabase: SupabaseConfig) -> Result<Context> {
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .map_err(|e| Error::internal(format!("doctor: making the session read-only: {e}")))?;
    let api_roles = client
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname = ANY ($1) ORDER BY rolname",
            &[&API_ROLES.to_vec()],
        )
        .await
        .map_err(|e| Error::internal(format!("doctor: reading roles: {e}")))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Context {
        client,
        api_roles,
        owned: Ownership::embedded(),
        supabase,
    })
}

/// Every check, security first.
pub async fn examine(cx: &Context) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    findings.extend(trusted_columns::check(cx, &trusted_columns::PROFILES_ROLE).await?);
    findings.extend(trusted_columns::check(cx, &trusted_columns::CREDITS_TIER).await?);
    findings.extend(credits::check(cx).await?);
    findings.extend(migrations::check(cx).await?);
    findings.extend(webhook::check(cx).await?);
    findings.extend(keys::check(&cx.supabase));
    findings.extend(timeouts::check(cx).await?);
    findings.extend(lints::check(cx).await?);
    findings.sort_by_key(|f| f.severity);
    Ok(findings)
}

/// 0 when nothing is a security problem, [`EXIT_SECURITY_FINDING`] otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    if findings.iter().any(|f| f.severity == Severity::Security) {
        EXIT_SECURITY_FINDING
    } else {
        0
    }
}
