//! Can a signed-in (or anonymous) user write the columns the specified policies trust?
//!
//! The admin policies on `ai_engines` and `engine_assignments` trust `profiles.role =
//! 'admin'`, and the tier policies trust `user_credits.tier`. A generic linter sees a
//! policy "users can update their own profile" and is content; here we ask, for each
//! path a request can take, whether it lets a user set *that* column to the value that
//! is trusted:
//!
//! * direct writes through PostgREST: the role's column privilege, and the table's
//!   policies evaluated for a real (or made-up) user on their own row with the column
//!   changed, as Postgres would (permissive ones OR-ed, restrictive ones AND-ed);
//! * SECURITY DEFINER functions the role may execute that write the table;
//! * views over the table that run as their owner and let the role write.
//!
//! Policies are evaluated in a READ ONLY transaction as the API role, with the JWT
//! claims PostgREST would set; nothing is written.

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;
use serde_json::{json, Value};

/// A column whose value decides what a user may do.
pub struct TrustedColumn {
    pub finding: &'static str,
    pub table: &'static str,
    pub column: &'static str,
    /// The column that says whose row it is.
    pub owner: &'static str,
    /// The value a user would like to write.
    pub escalated: &'static str,
    pub why: &'static str,
    /// Installed by supabase/hardening: when present and enabled, the column is guarded.
    pub guard: Option<(&'static str, &'static str)>,
}

/// `profiles.role`: the key to every engine, assignment and job.
pub const PROFILES_ROLE: TrustedColumn = TrustedColumn {
    finding: "profiles_role_writable",
    table: "profiles",
    column: "role",
    owner: "id",
    escalated: "admin",
    why:
        "The specified admin policies (\"Admins can manage all engines\", \"Admins can manage all \
          assignments\") and bookengine's is_engine_admin() trust profiles.role = 'admin'. A user \
          who can write their own role becomes an admin of every engine, assignment and generation \
          job, through PostgREST as much as through bookengine. The specified policies cannot \
          change, so the host must keep role out of users' reach.",
    guard: Some(("bookengine", "profiles_role_guard")),
};

/// `user_credits.tier`: which tier assignments (paid engines) a user gets.
pub const CREDITS_TIER: TrustedColumn = TrustedColumn {
    finding: "user_credits_tier_writable",
    table: "user_credits",
    column: "tier",
    owner: "user_id",
    escalated: "enterprise",
    why: "The specified policies and resolution give a user the engines assigned to the tier in \
          their user_credits row. A user who can write their own tier gets every paid tier's \
          engines without paying.",
    guard: None,
};

/// One way a role can write the column, and the statement that closes it.
struct Way {
    object: String,
    fix: String,
}

pub async fn check(cx: &Context, col: &TrustedColumn) -> Result<Vec<Finding>> {
    let Some(table) = cx
        .client
        .query_opt(
            "SELECT c.oid, c.relrowsecurity, format('%I.%I', n.nspname, c.relname) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped \
             WHERE n.nspname = 'public' AND c.relname = $1 AND c.relkind IN ('r', 'p')",
            &[&col.table, &col.column],
        )
        .await
        .map_err(cx.err("reading the table"))?
    else {
        return Ok(Vec::new());
    };
    let oid: u32 = table.get(0);
    let rls: bool = table.get(1);
    let qualified: String = table.get(2);
    if let Some((schema, function)) = col.guard {
        if guard_installed(cx, oid, schema, function).await? {
            return Ok(Vec::new());
        }
    }

    let mut ways = Vec::new();
    let sample = sample_row(cx, col, &qualified).await?;
    for role in &cx.api_roles {
        let row = cx
            .client
            .query_one(
                "SELECT pg_catalog.has_column_privilege($1, $2::oid, $3, 'UPDATE'), \
                        pg_catalog.has_column_privilege($1, $2::oid, $3, 'INSERT'), \
                        r.rolbypassrls \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[role, &oid, &col.column],
            )
            .await
            .map_err(cx.err("reading privileges"))?;
        let (can_update, can_insert, bypass): (bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        for (command, allowed) in [("UPDATE", can_update), ("INSERT", can_insert)] {
            if !allowed {
                continue;
            }
            let revoke = format!(
                "REVOKE {command} ON {qualified} FROM {role};  -- then GRANT {command} (<the columns users may edit>) ON {qualified} TO {role};"
            );
            if !rls || bypass {
                let reason = if bypass {
                    "the role bypasses RLS"
                } else {
                    "RLS is disabled"
                };
                ways.push(Way {
                    object: format!("{command} {qualified}.{} as {role}: {reason}", col.column),
                    fix: if bypass {
                        format!("ALTER ROLE {role} NOBYPASSRLS;")
                    } else {
                        format!("ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY;")
                    },
                });
                continue;
            }
            if let Some(through) =
                policies_let_through(cx, col, oid, role, command, &sample).await?
            {
                ways.push(Way {
                    object: format!(
                        "{command} {qualified}.{} = '{}' as {role} on their own row: {through} and the {command} privilege",
                        col.column, col.escalated
                    ),
                    fix: revoke,
                });
            }
        }
    }
    ways.extend(definer_functions(cx, col).await?);
    ways.extend(owner_views(cx, col, oid).await?);
    if ways.is_empty() {
        return Ok(Vec::new());
    }

    let mut fix = String::new();
    if col.guard.is_some() {
        fix.push_str(
            "-- Either apply the opt-in guard (only service_role or an existing admin may change role):\n\
             --   psql \"$DATABASE_URL\" -f supabase/hardening/profiles_role_guard.sql\n\
             -- or close each way:\n",
        );
    }
    let columns = editable_columns(cx, oid, col).await?;
    for way in &ways {
        let line = way.fix.replace("<the columns users may edit>", &columns);
        if !fix.contains(&line) {
            fix.push_str(&line);
            fix.push('\n');
        }
    }
    Ok(vec![Finding::new(
        col.finding,
        Severity::Security,
        format!(
            "users can set {qualified}.{} to '{}' ({} way{})",
            col.column,
            col.escalated,
            ways.len(),
            if ways.len() == 1 { "" } else { "s" }
        ),
    )
    .objects(ways.into_iter().map(|w| w.object))
    .why(col.why)
    .fix(fix.trim_end().to_owned())])
}

async fn guard_installed(cx: &Context, table: u32, schema: &str, function: &str) -> Result<bool> {
    let row = cx
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
               JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
              WHERE t.tgrelid = $1::oid AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                AND n.nspname = $2 AND p.proname = $3)",
            &[&table, &schema, &function],
        )
        .await
        .map_err(cx.err("reading triggers"))?;
    Ok(row.get(0))
}

/// A user's row as JSON (one whose column is not the escalated value), or a made-up one.
async fn sample_row(cx: &Context, col: &TrustedColumn, qualified: &str) -> Result<Value> {
    let sql = format!(
        "SELECT to_jsonb(t) FROM {qualified} t WHERE t.{}::text IS DISTINCT FROM $1::text LIMIT 1",
        col.column
    );
    let row = cx
        .client
        .query_opt(&sql, &[&col.escalated])
        .await
        .map_err(cx.err("reading a sample row"))?;
    let mut sample = row
        .map(|r| r.get::<_, Value>(0))
        .unwrap_or_else(|| json!({}));
    if sample.get(col.owner).and_then(Value::as_str).is_none() {
        sample[col.owner] = json!(uuid::Uuid::new_v4());
    }
    Ok(sample)
}

struct Policy {
    name: String,
    permissive: bool,
    using: Option<String>,
    check: Option<String>,
}

/// Whether the table's policies let `role` write the escalated value into the
/// user's own row; `Some(the policies that let it through)` when they do.
async fn policies_let_through(
    cx: &Context,
    col: &TrustedColumn,
    table: u32,
    role: &str,
    command: &str,
    sample: &Value,
) -> Result<Option<String>> {
    let rows = cx
        .client
        .query(
            "SELECT p.polname::text, p.polpermissive, \
                    pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                    pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
             FROM pg_catalog.pg_policy p \
             WHERE p.polrelid = $1::oid \
               AND p.polcmd::text IN ($2, '*') \
               AND (0::oid = ANY (p.polroles) \
                    OR EXISTS (SELECT 1 FROM unnest(p.polroles) r \
                               WHERE pg_catalog.pg_has_role($3, r, 'MEMBER'))) \
             ORDER BY p.polname",
            &[&table, &command_char(command), &role],
        )
        .await
        .map_err(cx.err("reading policies"))?;
    let policies: Vec<Policy> = rows
        .iter()
        .map(|r| Policy {
            name: r.get(0),
            permissive: r.get(1),
            using: r.get(2),
            check: r.get(3),
        })
        .collect();
    if !policies.iter().any(|p| p.permissive) {
        return Ok(None);
    }
    let uid = sample
        .get(col.owner)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut old = sample.clone();
    let mut new = sample.clone();
    new[col.column] = json!(col.escalated);
    if command == "INSERT" {
        old = Value::Null;
        new[col.owner] = json!(uid);
    }
    let claims = if role == "anon" {
        json!({"role": role})
    } else {
        json!({"sub": uid, "role": role, "aud": role})
    };
    let eval = Evaluator {
        cx,
        role,
        qualified: format!("public.{}", col.table),
        claims,
        failures: Default::default(),
    };

    // The row as it is must pass USING (not asked of INSERT) ...
    let mut through = Vec::new();
    if command == "UPDATE" {
        let mut any = false;
        for p in policies.iter().filter(|p| p.permissive) {
            if let Some(using) = &p.using {
                if eval.holds(using, &old).await? {
                    any = true;
                    through.push(p.name.clone());
                }
            }
        }
        for p in policies.iter().filter(|p| !p.permissive) {
            if let Some(using) = &p.using {
                if !eval.holds(using, &old).await? {
                    return Ok(None);
                }
            }
        }
        if !any {
            return Ok(None);
        }
    }
    // ... and the changed row WITH CHECK (USING where a policy has none).
    let mut any = false;
    for p in policies.iter().filter(|p| p.permissive) {
        if let Some(check) = p.check.as_ref().or(p.using.as_ref()) {
            if eval.holds(check, &new).await? {
                any = true;
                if !through.contains(&p.name) {
                    through.push(p.name.clone());
                }
            }
        }
    }
    for p in policies.iter().filter(|p| !p.permissive) {
        if let Some(check) = p.check.as_ref().or(p.using.as_ref()) {
            if !eval.holds(check, &new).await? {
                return Ok(None);
            }
        }
    }
    if !any {
        return Ok(None);
    }
    let mut names = through
        .iter()
        .map(|n| format!("policy \"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(first) = eval.failures.lock().ok().and_then(|f| f.first().cloned()) {
        names.push_str(&format!(
            " (an expression could not be evaluated and counts as allowing: {first})"
        ));
    }
    Ok(Some(names))
}

fn command_char(command: &str) -> &'static str {
    match command {
        "SELECT" => "r",
        "INSERT" => "a",
        "UPDATE" => "w",
        "DELETE" => "d",
        _ => "*",
    }
}

/// Evaluates a policy expression on a given row, as the API role with its claims.
struct Evaluator<'a> {
    cx: &'a Context,
    role: &'a str,
    qualified: String,
    claims: Value,
    /// Errors of expressions that could not be evaluated (counted as holding).
    failures: std::sync::Mutex<Vec<String>>,
}

impl Evaluator<'_> {
    /// True when `expr` holds for `row`; an expression that cannot be evaluated counts
    /// as holding (a false alarm is cheaper than a missed hole).
    async fn holds(&self, expr: &str, row: &Value) -> Result<bool> {
        let client = &self.cx.client;
        client
            .batch_execute("BEGIN READ ONLY")
            .await
            .map_err(self.cx.err("starting a read-only transaction"))?;
        let outcome = self.evaluate(expr, row).await;
        let _ = client.batch_execute("ROLLBACK").await;
        match outcome {
            Ok(holds) => Ok(holds),
            Err(e) => {
                tracing::debug!(error = %e, expr, "policy expression not evaluated");
                if let Ok(mut failures) = self.failures.lock() {
                    failures.push(
                        e.as_db_error()
                            .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
                    );
                }
                Ok(true)
            }
        }
    }

    async fn evaluate(&self, expr: &str, row: &Value) -> Result<bool, tokio_postgres::Error> {
        let client = &self.cx.client;
        let sub = self.claims.get("sub").and_then(Value::as_str).unwrap_or("");
        client
            .execute(
                "SELECT pg_catalog.set_config('request.jwt.claims', $1, true), \
                        pg_catalog.set_config('request.jwt.claim.sub', $2, true), \
                        pg_catalog.set_config('request.jwt.claim.role', $3, true)",
                &[&self.claims.to_string(), &sub, &self.role],
            )
            .await?;
        // As PostgREST does, so that subqueries in the expression see what the role
        // sees. Where the connecting role may not switch to it, evaluate as ourselves.
        client.batch_execute("SAVEPOINT doctor_role").await?;
        let switched = client
            .execute(
                "SELECT pg_catalog.set_config('role', $1, true)",
                &[&self.role],
            )
            .await;
        if switched.is_err() {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT doctor_role")
                .await?;
        }
        // The row is built from JSON with the table's own row type and given the
        // table's name, so the expression's column references resolve as in a policy.
        let table = self.qualified.rsplit('.').next().unwrap_or_default();
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.jsonb_populate_record(NULL::{q}, $1::jsonb) AS {table} WHERE ({expr}))",
            q = self.qualified
        );
        let row = client.query_one(&sql, &[row]).await?;
        Ok(row.get(0))
    }
}

/// SECURITY DEFINER functions an API role may call that write the table and name the column.
async fn definer_functions(cx: &Context, col: &TrustedColumn) -> Result<Vec<Way>> {
    let writes = format!(
        r#"(update|insert\s+into)\s+(only\s+)?("?public"?\.)?"?{}"?\M"#,
        col.table
    );
    let mentions = format!(r"\m{}\M", col.column);
    let rows = cx
        .client
        .query(
            "SELECT p.oid::regprocedure::text, \
                    array_to_string(ARRAY(SELECT r FROM unnest($1::text[]) r \
                      WHERE pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE')), ', ') \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE p.prosecdef AND p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND p.prosrc ~* $2 AND p.prosrc ~* $3 \
               AND EXISTS (SELECT 1 FROM unnest($1::text[]) r \
                           WHERE pg_catalog.has_function_privilege(r, p.oid, 'EXECUTE')) \
             ORDER BY 1",
            &[&cx.api_roles, &writes, &mentions],
        )
        .await
        .map_err(cx.err("reading SECURITY DEFINER functions"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let function: String = r.get(0);
            let roles: String = r.get(1);
            Way {
                object: format!(
                    "SECURITY DEFINER function {function}, executable by {roles}, writes public.{} and names {}",
                    col.table, col.column
                ),
                fix: format!(
                    "REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC, {};  -- or make it check the caller",
                    cx.api_roles.join(", ")
                ),
            }
        })
        .collect())
}

/// Views over the table that run with their owner's rights and that an API role may write.
async fn owner_views(cx: &Context, col: &TrustedColumn, table: u32) -> Result<Vec<Way>> {
    let rows = cx
        .client
        .query(
            "SELECT DISTINCT v.oid::regclass::text, \
                    array_to_string(ARRAY(SELECT r FROM unnest($2::text[]) r \
                      WHERE pg_catalog.has_table_privilege(r, v.oid, 'UPDATE, INSERT')), ', ') \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_rewrite w ON w.oid = d.objid \
             JOIN pg_catalog.pg_class v ON v.oid = w.ev_class AND v.relkind = 'v' \
             WHERE d.refobjid = $1::oid AND v.oid <> $1::oid \
               AND NOT coalesce(v.reloptions::text[] && ARRAY['security_invoker=true', 'security_invoker=on', 'security_invoker=1'], false) \
               AND EXISTS (SELECT 1 FROM unnest($2::text[]) r \
                           WHERE pg_catalog.has_table_privilege(r, v.oid, 'UPDATE, INSERT')) \
             ORDER BY 1",
            &[&table, &cx.api_roles],
        )
        .await
        .map_err(cx.err("reading views"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let view: String = r.get(0);
            let roles: String = r.get(1);
            Way {
                object: format!(
                    "view {view} over public.{} runs as its owner (no RLS) and {roles} may write it",
                    col.table
                ),
                fix: format!(
                    "ALTER VIEW {view} SET (security_invoker = on);  -- or REVOKE INSERT, UPDATE ON {view} FROM {};",
                    cx.api_roles.join(", ")
                ),
            }
        })
        .collect())
}

/// The table's other columns, for the column-level GRANT that replaces a table-level one.
async fn editable_columns(cx: &Context, table: u32, col: &TrustedColumn) -> Result<String> {
    let row = cx
        .client
        .query_one(
            "SELECT coalesce(string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum), '') \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attname NOT IN ($2, $3)",
            &[&table, &col.column, &col.owner],
        )
        .await
        .map_err(cx.err("reading columns"))?;
    Ok(row.get(0))
}
