//! Database-advisor lints (in the spirit of Supabase's splinter, written for this
//! project) over bookengine's own objects:
//!
//! * `auth_rls_initplan`: a policy calls auth.uid()/auth.jwt()/auth.role()/
//!   is_engine_admin() bare, so Postgres calls it once per row instead of once per query;
//! * `multiple_permissive_policies`: two permissive policies for the same role and
//!   action, each evaluated for every row;
//! * `function_search_path_mutable`: a function without its own search_path resolves
//!   names through the caller's;
//! * `rls_disabled_in_public`: a table PostgREST exposes without row-level security.
//!
//! The policies of sql/V1 are the product specification's, verbatim, and cannot be
//! changed: they are reported as known (info), with the reason, not as to do.

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;
use std::collections::BTreeMap;

const SPECIFIED_REASON: &str = "These policies are the product specification's, applied verbatim \
    by sql/V1; they cannot change. bookengine keeps their cost off the hot paths instead: \
    resolution (my_engines, resolve_engine) runs as its definer with an explicit caller filter \
    and an index (see benches/README.md).";

/// Functions whose bare call in a policy is evaluated per row.
const PER_ROW_CALLS: [&str; 5] = [
    "auth.uid()",
    "auth.jwt()",
    "auth.role()",
    "auth.email()",
    "is_engine_admin()",
];

struct Policy {
    table: String,
    name: String,
    permissive: bool,
    command: String,
    roles: Vec<String>,
    using: Option<String>,
    check: Option<String>,
}

pub async fn check(cx: &Context) -> Result<Vec<Finding>> {
    let tables: Vec<String> = cx.owned.tables.iter().cloned().collect();
    let rows = cx
        .client
        .query(
            "SELECT c.relname::text, p.polname::text, p.polpermissive, \
                    CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' \
                                  WHEN 'd' THEN 'DELETE' ELSE 'ALL' END, \
                    ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)::text END \
                          FROM unnest(p.polroles) r), \
                    pg_catalog.pg_get_expr(p.polqual, p.polrelid), \
                    pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) \
             FROM pg_catalog.pg_policy p \
             JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname = ANY ($1) AND c.relrowsecurity \
             ORDER BY 1, 2",
            &[&tables],
        )
        .await
        .map_err(cx.err("reading policies"))?;
    let policies: Vec<Policy> = rows
        .iter()
        .map(|r| Policy {
            table: r.get(0),
            name: r.get(1),
            permissive: r.get(2),
            command: r.get(3),
            roles: r.get(4),
            using: r.get(5),
            check: r.get(6),
        })
        .collect();
    let mut findings = Vec::new();
    findings.extend(initplan(cx, &policies));
    findings.extend(multiple_permissive(cx, &policies));
    findings.extend(search_path_mutable(cx).await?);
    findings.extend(rls_disabled(cx).await?);
    Ok(findings)
}

/// Each bare per-row call in `expr`, and the expression with every one wrapped in
/// `(select …)`, which Postgres evaluates once per statement (an initplan).
pub fn bare_calls(expr: &str) -> (Vec<&'static str>, String) {
    let mut found = Vec::new();
    let mut out = expr.to_owned();
    for call in PER_ROW_CALLS {
        let mut rewritten = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(call) {
            // `public.is_engine_admin()` is one call: wrap the qualified name.
            let start = if rest[..at].ends_with("public.") {
                at - "public.".len()
            } else {
                at
            };
            let before = rest[..start].trim_end();
            let wrapped = before.to_ascii_uppercase().ends_with("SELECT");
            // auth.uid() is also the tail of e.g. myauth.uid(): only whole names count.
            let whole = rest[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
            rewritten.push_str(&rest[..start]);
            let name = &rest[start..at + call.len()];
            if wrapped || !whole {
                rewritten.push_str(name);
            } else {
                if !found.contains(&call) {
                    found.push(call);
                }
                rewritten.push_str(&format!("(select {name})"));
            }
            rest = &rest[at + call.len()..];
        }
        rewritten.push_str(rest);
        out = rewritten;
    }
    (found, out)
}

fn initplan(cx: &Context, policies: &[Policy]) -> Vec<Finding> {
    let mut known = Vec::new();
    let mut todo = Vec::new();
    let mut fixes = Vec::new();
    for p in policies {
        let (in_using, using) = p.using.as_deref().map(bare_calls).unwrap_or_default();
        let (in_check, check) = p.check.as_deref().map(bare_calls).unwrap_or_default();
        let mut calls = in_using.clone();
        calls.extend(in_check.iter().filter(|c| !in_using.contains(c)));
        if calls.is_empty() {
            continue;
        }
        let object = format!(
            "policy \"{}\" on public.{}: {}",
            p.name,
            p.table,
            calls.join(", ")
        );
        if cx.owned.is_specified_policy(&p.table, &p.name) {
            known.push(object);
            continue;
        }
        todo.push(object);
        let mut fix = format!(
            "ALTER POLICY \"{}\" ON public.{}",
            p.name.replace('"', "\"\""),
            p.table
        );
        if !in_using.is_empty() {
            fix.push_str(&format!(" USING ({using})"));
        }
        if !in_check.is_empty() {
            fix.push_str(&format!(" WITH CHECK ({check})"));
        }
        fixes.push(format!("{fix};"));
    }
    let why = "A bare call in a policy is evaluated for every row the query reads: a list over \
               many rows pays it per row (issue #13 measured seconds at 500,000 jobs). Wrapped in \
               (select …) it runs once per statement.";
    let mut findings = Vec::new();
    if !todo.is_empty() {
        findings.push(
            Finding::new(
                "auth_rls_initplan",
                Severity::Warning,
                format!(
                    "{} bookengine policies call auth functions per row",
                    todo.len()
                ),
            )
            .objects(todo)
            .why(why)
            .fix(format!(
                "-- in a new migration (applied ones are never edited):\n{}",
                fixes.join("\n")
            )),
        );
    }
    if !known.is_empty() {
        findings.push(
            Finding::new(
                "auth_rls_initplan",
                Severity::Info,
                format!(
                    "{} specified policies call auth functions per row (known)",
                    known.len()
                ),
            )
            .objects(known)
            .why(format!("{why} {SPECIFIED_REASON}"))
            .fix("-- none: specified verbatim"),
        );
    }
    findings
}

fn multiple_permissive(cx: &Context, policies: &[Policy]) -> Vec<Finding> {
    // (table, role, action) -> the permissive policies that apply.
    let mut groups: BTreeMap<(String, String, &str), Vec<&Policy>> = BTreeMap::new();
    for p in policies.iter().filter(|p| p.permissive) {
        let actions: &[&str] = match p.command.as_str() {
            "ALL" => &["SELECT", "INSERT", "UPDATE", "DELETE"],
            "SELECT" => &["SELECT"],
            "INSERT" => &["INSERT"],
            "UPDATE" => &["UPDATE"],
            _ => &["DELETE"],
        };
        for role in &cx.api_roles {
            if !p.roles.iter().any(|r| r == "public" || r == role) {
                continue;
            }
            for action in actions {
                groups
                    .entry((p.table.clone(), role.clone(), action))
                    .or_default()
                    .push(p);
            }
        }
    }
    let mut known = Vec::new();
    let mut todo = Vec::new();
    for ((table, role, action), ps) in groups.into_iter().filter(|(_, ps)| ps.len() > 1) {
        let names: Vec<String> = ps.iter().map(|p| format!("\"{}\"", p.name)).collect();
        let object = format!("public.{table} {action} as {role}: {}", names.join(", "));
        if ps
            .iter()
            .all(|p| cx.owned.is_specified_policy(&p.table, &p.name))
        {
            known.push(object);
        } else {
            todo.push(object);
        }
    }
    let why = "Postgres evaluates every permissive policy for each row and ORs them; two policies \
               for one role and action cost two evaluations per row and defeat index use on \
               either condition.";
    let mut findings = Vec::new();
    if !todo.is_empty() {
        findings.push(
            Finding::new("multiple_permissive_policies", Severity::Warning, format!("{} table/role/action(s) with more than one permissive bookengine policy", todo.len()))
                .objects(todo)
                .why(why)
                .fix("-- in a new migration: replace the policies of each group by one permissive policy\n\
                      -- whose USING is their conditions OR-ed, each call wrapped in (select …)."),
        );
    }
    if !known.is_empty() {
        findings.push(
            Finding::new(
                "multiple_permissive_policies",
                Severity::Info,
                format!(
                    "{} table/role/action(s) with several specified permissive policies (known)",
                    known.len()
                ),
            )
            .objects(known)
            .why(format!("{why} {SPECIFIED_REASON}"))
            .fix("-- none: specified verbatim"),
        );
    }
    findings
}

async fn search_path_mutable(cx: &Context) -> Result<Vec<Finding>> {
    let functions: Vec<String> = cx.owned.functions.iter().cloned().collect();
    let rows = cx
        .client
        .query(
            "SELECT p.oid::regprocedure::text, p.prosecdef \
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE ((n.nspname = 'public' AND p.proname = ANY ($1)) OR n.nspname = 'bookengine') \
               AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c \
                               WHERE c LIKE 'search_path=%') \
             ORDER BY 1",
            &[&functions],
        )
        .await
        .map_err(cx.err("reading functions"))?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let definer = rows.iter().any(|r| r.get::<_, bool>(1));
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let fix = names
        .iter()
        .map(|f| format!("ALTER FUNCTION {f} SET search_path = pg_catalog, public;"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(vec![Finding::new(
        "function_search_path_mutable",
        if definer {
            Severity::Security
        } else {
            Severity::Warning
        },
        format!(
            "{} bookengine function(s) without their own search_path",
            names.len()
        ),
    )
    .objects(names)
    .why(
        "A function without SET search_path resolves unqualified names through the caller's \
         search_path; a caller who can create objects in a schema earlier on that path can make it \
         call theirs (with the owner's rights, for SECURITY DEFINER functions).",
    )
    .fix(fix)])
}

async fn rls_disabled(cx: &Context) -> Result<Vec<Finding>> {
    // bookengine's tables, and the app's two that the specified policies read.
    let mut tables: Vec<String> = cx.owned.tables.iter().cloned().collect();
    tables.extend(["profiles".to_owned(), "user_credits".to_owned()]);
    let rows = cx
        .client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), \
                    EXISTS (SELECT 1 FROM unnest($2::text[]) r \
                            WHERE pg_catalog.has_table_privilege(r, c.oid, 'SELECT, INSERT, UPDATE, DELETE')) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relname = ANY ($1) AND c.relkind IN ('r', 'p') \
               AND NOT c.relrowsecurity \
             ORDER BY 1",
            &[&tables, &cx.api_roles],
        )
        .await
        .map_err(cx.err("reading tables"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let table: String = r.get(0);
            let exposed: bool = r.get(1);
            Finding::new(
                "rls_disabled_in_public",
                if exposed { Severity::Security } else { Severity::Warning },
                format!("row-level security is off on {table}"),
            )
            .objects([table.clone()])
            .why(if exposed {
                "PostgREST exposes public; without RLS every anon or signed-in user reads and writes \
                 every row their privileges allow, whatever the policies say."
            } else {
                "No API role holds a privilege on it today, but a default-privilege grant would \
                 expose every row at once."
            })
            .fix(format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;"))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_calls_are_found_and_wrapped_once() {
        let (found, fixed) = bare_calls("(user_id = auth.uid())");
        assert_eq!(found, ["auth.uid()"]);
        assert_eq!(fixed, "(user_id = (select auth.uid()))");

        let (found, fixed) =
            bare_calls("( SELECT auth.uid() AS uid) = user_id OR public.is_engine_admin()");
        assert_eq!(found, ["is_engine_admin()"]);
        assert_eq!(
            fixed,
            "( SELECT auth.uid() AS uid) = user_id OR (select public.is_engine_admin())"
        );

        let (found, _) = bare_calls("( SELECT is_engine_admin() AS is_engine_admin)");
        assert!(found.is_empty());
        let (found, _) = bare_calls("myauth.uid() = id");
        assert!(found.is_empty());
    }
}
