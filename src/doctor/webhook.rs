//! The generation webhook: pg_net, and one trigger on generation_jobs that wakes the
//! workers (bookengine's supabase/webhook.sql, or a Dashboard Database Webhook).
//! Optional, since workers poll, so these findings are informational unless the
//! setup is inconsistent.

use super::context::Context;
use super::finding::{Finding, Severity};
use crate::error::Result;

pub async fn check(cx: &Context) -> Result<Vec<Finding>> {
    let row = cx
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_net'), \
                    pg_catalog.to_regclass('public.generation_jobs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(cx.err("reading extensions"))?;
    let (pg_net, jobs): (bool, bool) = (row.get(0), row.get(1));
    let mut findings = Vec::new();
    if !pg_net {
        findings.push(
            Finding::new("pg_net_missing", Severity::Info, "the pg_net extension is not installed")
                .objects(["extension pg_net".to_owned()])
                .why(
                    "Both supabase/webhook.sql and Dashboard webhooks send HTTP from the database \
                     with pg_net. Without it new jobs wait for a worker's poll \
                     (BOOKENGINE_POLL_INTERVAL_MS) instead of starting at once.",
                )
                .fix("CREATE EXTENSION IF NOT EXISTS pg_net;  -- hosted: Dashboard -> Database -> Extensions"),
        );
    }
    if !jobs {
        return Ok(findings); // the migrations are pending; that finding says so
    }
    let triggers = cx
        .client
        .query(
            "SELECT t.tgname::text, n.nspname = 'bookengine' \
             FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE t.tgrelid = 'public.generation_jobs'::regclass AND NOT t.tgisinternal \
               AND t.tgenabled <> 'D' \
               AND ((n.nspname = 'bookengine' AND p.proname = 'generation_webhook') \
                 OR (n.nspname = 'supabase_functions' AND p.proname = 'http_request' \
                     AND encode(t.tgargs, 'escape') LIKE '%/webhooks/generation%')) \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(cx.err("reading triggers on generation_jobs"))?;
    let ours: Vec<String> = triggers
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    let dashboard: Vec<String> = triggers
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if ours.is_empty() && dashboard.is_empty() {
        findings.push(
            Finding::new(
                "webhook_missing",
                Severity::Info,
                "no webhook wakes the workers when a generation is requested",
            )
            .objects(["public.generation_jobs (no enabled webhook trigger)".to_owned()])
            .why("Workers poll, so jobs still run; the webhook only removes the wait.")
            .fix(
                "-- not SQL: set WEBHOOK_SECRET on the service, then either\n\
                 --   psql \"$DATABASE_URL\" -f supabase/webhook.sql   (needs pg_net; see supabase/README.md)\n\
                 -- or Dashboard -> Database -> Webhooks -> table generation_jobs, INSERT, \
                 POST https://<bookengine>/webhooks/generation",
            ),
        );
    }
    if !ours.is_empty() && !dashboard.is_empty() {
        findings.push(
            Finding::new(
                "webhook_duplicated",
                Severity::Warning,
                "both supabase/webhook.sql and a Dashboard webhook announce each job",
            )
            .objects(ours.iter().chain(&dashboard).map(|t| format!("trigger {t} on public.generation_jobs")))
            .why("Every job is delivered twice: harmless, but twice the requests.")
            .fix(format!(
                "DROP TRIGGER IF EXISTS {} ON public.generation_jobs;  -- or delete the Dashboard webhook",
                ours[0]
            )),
        );
    }
    if !ours.is_empty() && !webhook_configured(cx).await? {
        findings.push(
            Finding::new(
                "webhook_unconfigured",
                Severity::Warning,
                "the webhook trigger has no URL or secret to send to",
            )
            .objects(ours.iter().map(|t| format!("trigger {t} on public.generation_jobs")))
            .why(
                "supabase/webhook.sql reads the URL and the secret on each insert (Vault secrets \
                 bookengine_webhook_url / bookengine_webhook_secret, or app.* settings); with \
                 neither it logs a WARNING per job and sends nothing.",
            )
            .fix(
                "SELECT vault.create_secret('https://<bookengine>/webhooks/generation', 'bookengine_webhook_url');\n\
                 SELECT vault.create_secret('<WEBHOOK_SECRET>', 'bookengine_webhook_secret');",
            ),
        );
    }
    Ok(findings)
}

/// Vault holds both secrets, or the database or a role has both settings.
async fn webhook_configured(cx: &Context) -> Result<bool> {
    let row = cx
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c \
                            WHERE c LIKE 'app.bookengine_webhook_url=%') \
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c \
                            WHERE c LIKE 'app.bookengine_webhook_secret=%'), \
                    pg_catalog.to_regclass('vault.secrets') IS NOT NULL",
            &[],
        )
        .await
        .map_err(cx.err("reading webhook settings"))?;
    let (settings, vault): (bool, bool) = (row.get(0), row.get(1));
    if settings || !vault {
        return Ok(settings);
    }
    let n: i64 = cx
        .client
        .query_one(
            "SELECT count(DISTINCT name) FROM vault.secrets \
             WHERE name IN ('bookengine_webhook_url', 'bookengine_webhook_secret')",
            &[],
        )
        .await
        .map_err(cx.err("reading Vault secret names"))?
        .get(0);
    Ok(n == 2)
}
