//! One `user_credits` row per user: the specified tier test is a scalar subquery
//! (`tier = (SELECT tier FROM user_credits WHERE user_id = auth.uid())`), which fails
//! for a user with two rows, and with it every engine and assignment query they make.

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;

/// How many of the users with duplicates are named in the finding.
const SHOWN: i64 = 20;

pub async fn check(cx: &Context) -> Result<Vec<Finding>> {
    let exists: bool = cx
        .client
        .query_one(
            "SELECT pg_catalog.to_regclass('public.user_credits') IS NOT NULL",
            &[],
        )
        .await
        .map_err(cx.err("looking for user_credits"))?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let mut findings = Vec::new();
    let rows = cx
        .client
        .query(
            "SELECT user_id::text, count(*), count(*) OVER () \
             FROM public.user_credits GROUP BY user_id HAVING count(*) > 1 \
             ORDER BY count(*) DESC, user_id LIMIT $1",
            &[&SHOWN],
        )
        .await
        .map_err(cx.err("counting user_credits rows per user"))?;
    if let Some(first) = rows.first() {
        let users: i64 = first.get(2);
        let ids: Vec<String> = rows
            .iter()
            .map(|r| {
                r.get::<_, Option<String>>(0)
                    .unwrap_or_else(|| "NULL".into())
            })
            .collect();
        let objects = rows.iter().map(|r| {
            let id: Option<String> = r.get(0);
            let n: i64 = r.get(1);
            format!(
                "public.user_credits user_id {}: {n} rows",
                id.unwrap_or_else(|| "NULL".into())
            )
        });
        let list = ids
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ");
        findings.push(
            Finding::new(
                "user_credits_duplicate_rows",
                Severity::Warning,
                format!("{users} user(s) have more than one user_credits row"),
            )
            .objects(objects)
            .why(
                "The specified policies read a user's tier with a scalar subquery; with two rows it \
                 fails (\"more than one row returned by a subquery\"), so these users cannot list, \
                 resolve or use any engine until one row is left.",
            )
            .fix(format!(
                "-- review, merge the credits by hand and keep one row per user:\n\
                 SELECT * FROM public.user_credits WHERE user_id IN ({list}) ORDER BY user_id;\n\
                 -- then make it impossible again:\n\
                 CREATE UNIQUE INDEX CONCURRENTLY user_credits_user_id_key ON public.user_credits (user_id);"
            )),
        );
    }
    let unique: bool = cx
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
              WHERE i.indrelid = 'public.user_credits'::regclass AND i.indisunique \
                AND i.indpred IS NULL AND i.indnkeyatts = 1 AND a.attname = 'user_id')",
            &[],
        )
        .await
        .map_err(cx.err("reading user_credits indexes"))?
        .get(0);
    if !unique {
        findings.push(
            Finding::new(
                "user_credits_user_id_not_unique",
                Severity::Warning,
                "nothing keeps user_credits to one row per user",
            )
            .objects(["public.user_credits (user_id)".to_owned()])
            .why(
                "No primary key or unique index on user_credits(user_id): a second row for a user \
                 (a retried signup hook, a plan change written as an insert) breaks the specified \
                 tier subquery for that user.",
            )
            .fix("CREATE UNIQUE INDEX CONCURRENTLY user_credits_user_id_key ON public.user_credits (user_id);"),
        );
    }
    Ok(findings)
}
