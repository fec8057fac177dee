//! A statement_timeout for the roles PostgREST runs people's queries as. Without one,
//! any signed-in user can keep a connection busy for as long as a query takes
//! (hosted projects set 8s for authenticated and 3s for anon; a restore or a hand-made
//! role may not have it).

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;

/// What the fix sets, as hosted Supabase does.
fn suggested(role: &str) -> &'static str {
    if role == "anon" {
        "3s"
    } else {
        "8s"
    }
}

pub async fn check(cx: &Context) -> Result<Vec<Finding>> {
    let mut missing = Vec::new();
    for role in &cx.api_roles {
        // The role's own setting (in this database or all), else the database's.
        let row = cx
            .client
            .query_one(
                "SELECT (SELECT split_part(c, '=', 2) \
                           FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c \
                          WHERE c LIKE 'statement_timeout=%' \
                            AND ((s.setrole = r.oid AND s.setdatabase IN (0, d.oid)) \
                              OR (s.setrole = 0 AND s.setdatabase = d.oid)) \
                          ORDER BY s.setrole DESC, s.setdatabase DESC LIMIT 1) \
                 FROM pg_catalog.pg_roles r, pg_catalog.pg_database d \
                 WHERE r.rolname = $1 AND d.datname = current_database()",
                &[role],
            )
            .await
            .map_err(cx.err("reading role settings"))?;
        let value: Option<String> = row.get(0);
        let unlimited = value
            .as_deref()
            .map(|v| v.trim_matches('\'').trim() == "0")
            .unwrap_or(true);
        if unlimited {
            missing.push(role.clone());
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let fix = missing
        .iter()
        .map(|r| format!("ALTER ROLE {r} SET statement_timeout = '{}';", suggested(r)))
        .chain(["NOTIFY pgrst, 'reload config';".to_owned()])
        .collect::<Vec<_>>()
        .join("\n");
    Ok(vec![Finding::new(
        "statement_timeout_missing",
        Severity::Warning,
        format!("no statement_timeout for {}", missing.join(", ")),
    )
    .objects(missing.iter().map(|r| format!("role {r}")))
    .why(
        "PostgREST applies the role's settings to each request. With no timeout one user's slow \
         query (an unfiltered list under per-row policies, a huge RPC input) holds a connection \
         from the pool until it ends, and enough of them stall every user.",
    )
    .fix(fix)])
}
