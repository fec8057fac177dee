//! `bookengine doctor`, the real binary, against a test database shaped like a host
//! project: what it reports, what it stays quiet about, and its exit code.

use crate::adversarial::profiles::{GUARD_SQL, STARTER_POLICIES};
use crate::kit::stack::Stack;
use serde_json::Value;
use tokio_postgres::config::Host;

/// The test database as a DATABASE_URL.
fn database_url(stack: &Stack) -> String {
    let db = &stack.db;
    let host = match db.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = db.get_ports().first().copied().unwrap_or(5432);
    let user = db.get_user().unwrap_or("postgres");
    let password = db
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let name = db.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{host}:{port}/{name}")
}

/// Run `bookengine --json doctor` with only DATABASE_URL (and `env`) set.
fn doctor(stack: &Stack, env: &[(&str, &str)]) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .args(["--json", "doctor"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url(stack))
        .envs(env.iter().copied())
        .output()
        .expect("run bookengine doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

fn findings<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["id"] == id).collect())
        .unwrap_or_default()
}

fn objects(finding: &Value) -> String {
    finding["objects"].to_string()
}

fn security(report: &Value) -> Vec<&Value> {
    report["findings"]
        .as_array()
        .map(|all| all.iter().filter(|f| f["severity"] == "security").collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_flags_the_starter_profile_policy_and_is_quiet_once_the_guard_is_applied() {
    let stack = Stack::start().await;
    stack.user(Some("pro"), false).await;
    stack.admin().await;

    // The baseline lets nobody write their role: no security finding, exit 0.
    let (code, report) = doctor(&stack, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert!(security(&report).is_empty(), "{report:#}");

    // The starter policy: flagged, with the policy and the role named, and exit 8.
    stack
        .pg
        .batch_execute(STARTER_POLICIES)
        .await
        .expect("starter policies");
    let (code, report) = doctor(&stack, &[]);
    assert_eq!(code, 8, "{report:#}");
    let found = findings(&report, "profiles_role_writable");
    assert_eq!(found.len(), 1, "{report:#}");
    let f = found[0];
    assert_eq!(f["severity"], "security");
    let named = objects(f);
    assert!(
        named.contains("UPDATE public.profiles.role = 'admin' as authenticated")
            && named.contains("Users can update own profile")
            && named.contains("INSERT")
            && named.contains("Users can insert their own profile"),
        "{named}"
    );
    assert!(
        !named.contains("as anon"),
        "anon has no uid, so no own row: {named}"
    );
    assert!(
        f["why"]
            .as_str()
            .unwrap_or("")
            .contains("profiles.role = 'admin'"),
        "{f:#}"
    );
    let fix = f["fix"].as_str().unwrap_or("");
    assert!(
        fix.contains("supabase/hardening/profiles_role_guard.sql")
            && fix.contains("REVOKE UPDATE ON public.profiles FROM authenticated")
            && fix.contains("GRANT UPDATE (email, full_name"),
        "{fix}"
    );

    // A SECURITY DEFINER function that writes role for its caller is another way in.
    stack
        .pg
        .batch_execute(
            "CREATE FUNCTION public.promote_me() RETURNS void LANGUAGE sql SECURITY DEFINER \
             SET search_path = public AS $$ UPDATE public.profiles SET role = 'admin' WHERE id = auth.uid() $$; \
             GRANT EXECUTE ON FUNCTION public.promote_me() TO authenticated;",
        )
        .await
        .expect("definer function");
    let (_, report) = doctor(&stack, &[]);
    let named = objects(findings(&report, "profiles_role_writable")[0]);
    assert!(
        named.contains("SECURITY DEFINER function promote_me()"),
        "{named}"
    );

    // A policy whose WITH CHECK keeps the role as it is closes the UPDATE way; doctor
    // evaluates it rather than trusting the policy's name.
    stack
        .pg
        .batch_execute(
            "DROP POLICY \"Users can update own profile\" ON public.profiles; \
             CREATE POLICY \"Users can update own profile\" ON public.profiles FOR UPDATE \
               USING (auth.uid() = id) \
               WITH CHECK (role = (SELECT p.role FROM public.profiles p WHERE p.id = auth.uid()));",
        )
        .await
        .expect("pinned role policy");
    let (_, report) = doctor(&stack, &[]);
    let named = objects(findings(&report, "profiles_role_writable")[0]);
    assert!(!named.contains("UPDATE public.profiles.role"), "{named}");
    assert!(named.contains("INSERT"), "{named}");

    // The guard: quiet on that finding (every way goes through the trigger), exit 0.
    stack
        .pg
        .batch_execute(GUARD_SQL)
        .await
        .expect("apply the guard");
    let (code, report) = doctor(&stack, &[]);
    assert!(
        findings(&report, "profiles_role_writable").is_empty(),
        "{report:#}"
    );
    assert!(security(&report).is_empty(), "{report:#}");
    assert_eq!(code, 0, "{report:#}");

    // A disabled guard guards nothing.
    stack
        .pg
        .batch_execute("ALTER TABLE public.profiles DISABLE TRIGGER bookengine_profiles_role_guard")
        .await
        .expect("disable");
    let (code, report) = doctor(&stack, &[]);
    assert_eq!(code, 8, "{report:#}");
    assert_eq!(findings(&report, "profiles_role_writable").len(), 1);

    // The same reasoning for the tier the specified policies trust.
    stack
        .pg
        .batch_execute(
            "CREATE POLICY \"Users can update own credits\" ON public.user_credits FOR UPDATE \
             USING (user_id = auth.uid());",
        )
        .await
        .expect("credits policy");
    let (_, report) = doctor(&stack, &[]);
    let found = findings(&report, "user_credits_tier_writable");
    assert_eq!(found.len(), 1, "{report:#}");
    assert!(objects(found[0]).contains("tier = 'enterprise' as authenticated"));

    // A policy doctor cannot evaluate as the user counts as letting them through, and says so.
    stack
        .pg
        .batch_execute(
            "CREATE FUNCTION public.opaque_check() RETURNS boolean LANGUAGE sql AS 'SELECT false'; \
             REVOKE EXECUTE ON FUNCTION public.opaque_check() FROM PUBLIC, anon, authenticated; \
             DROP POLICY \"Users can update own credits\" ON public.user_credits; \
             CREATE POLICY \"Opaque\" ON public.user_credits FOR UPDATE USING (public.opaque_check());",
        )
        .await
        .expect("opaque policy");
    let (_, report) = doctor(&stack, &[]);
    let found = findings(&report, "user_credits_tier_writable");
    assert_eq!(found.len(), 1, "{report:#}");
    let named = objects(found[0]);
    assert!(
        named.contains("policy \\\"Opaque\\\"") && named.contains("could not be evaluated"),
        "{named}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_duplicate_credits_timeouts_migrations_keys_and_lints() {
    let stack = Stack::start().await;
    let user = stack.user(Some("pro"), false).await;
    let db_name = stack.db.get_dbname().unwrap_or_default().to_owned();

    // A host whose user_credits has no unique user_id, with a second row for one user.
    stack
        .pg
        .batch_execute("ALTER TABLE public.user_credits DROP CONSTRAINT user_credits_pkey")
        .await
        .expect("drop pk");
    stack
        .pg
        .execute(
            "INSERT INTO public.user_credits (user_id, tier) VALUES ($1, 'hobby')",
            &[&user.id],
        )
        .await
        .expect("second row");
    // An applied migration forgotten by the history, a function and a table unhardened.
    stack
        .pg
        .batch_execute(
            "DELETE FROM bookengine.refinery_schema_history WHERE version = 4; \
             ALTER FUNCTION public.bookengine_touch_updated_at() RESET search_path; \
             ALTER TABLE public.generation_limits DISABLE ROW LEVEL SECURITY;",
        )
        .await
        .expect("break things");

    let legacy = stack.service_key.expose().to_owned();
    let (code, report) = doctor(&stack, &[("SUPABASE_SERVICE_ROLE_KEY", &legacy)]);
    assert_eq!(
        code, 8,
        "generation_limits without RLS is exposed: {report:#}"
    );
    let text = report.to_string();
    assert!(!text.contains(&legacy), "the key itself never appears");

    let dup = findings(&report, "user_credits_duplicate_rows");
    assert_eq!(dup.len(), 1, "{report:#}");
    assert!(objects(dup[0]).contains(&format!("user_id {}: 2 rows", user.id)));
    assert_eq!(
        findings(&report, "user_credits_user_id_not_unique").len(),
        1
    );

    let timeout = findings(&report, "statement_timeout_missing");
    assert_eq!(timeout.len(), 1, "{report:#}");
    assert!(objects(timeout[0]).contains("role authenticated"));

    let pending = findings(&report, "migrations_pending");
    assert_eq!(objects(pending[0]), r#"["V4__generation_limits"]"#);

    let keys = findings(&report, "legacy_api_keys");
    assert!(objects(keys[0])
        .contains("SUPABASE_SERVICE_ROLE_KEY (a legacy JWT key, role service_role)"));

    let mutable = findings(&report, "function_search_path_mutable");
    assert!(
        objects(mutable[0]).contains("bookengine_touch_updated_at()"),
        "{report:#}"
    );
    let rls = findings(&report, "rls_disabled_in_public");
    assert_eq!(rls[0]["severity"], "security");
    assert!(objects(rls[0]).contains("public.generation_limits"));

    // The specified V1 policies: known (info) with the reason, never "to do".
    let initplan = findings(&report, "auth_rls_initplan");
    let known = initplan
        .iter()
        .find(|f| f["severity"] == "info")
        .expect("known initplan");
    assert!(
        objects(known).contains("Admins can manage all engines"),
        "{known:#}"
    );
    assert!(known["why"].as_str().unwrap_or("").contains("verbatim"));
    for f in initplan.iter().filter(|f| f["severity"] != "info") {
        assert!(
            !objects(f).contains("Admins can manage all engines"),
            "{f:#}"
        );
    }
    let permissive = findings(&report, "multiple_permissive_policies");
    let known = permissive
        .iter()
        .find(|f| f["severity"] == "info")
        .expect("known permissive");
    assert!(
        objects(known).contains("public.ai_engines SELECT as authenticated"),
        "{known:#}"
    );

    // No pg_net on the test cluster, hence no webhook: informational.
    assert_eq!(findings(&report, "webhook_missing")[0]["severity"], "info");

    // Fixed: the timeout for this database's authenticated role, one credits row.
    stack
        .pg
        .batch_execute(&format!(
            "ALTER ROLE authenticated IN DATABASE \"{db_name}\" SET statement_timeout = '8s'; \
             DELETE FROM public.user_credits WHERE user_id = '{}' AND tier = 'hobby'; \
             ALTER TABLE public.generation_limits ENABLE ROW LEVEL SECURITY;",
            user.id
        ))
        .await
        .expect("fix");
    let (code, report) = doctor(&stack, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert!(findings(&report, "user_credits_duplicate_rows").is_empty());
    let timeout = findings(&report, "statement_timeout_missing");
    assert!(
        timeout
            .iter()
            .all(|f| !objects(f).contains("authenticated")),
        "{report:#}"
    );
    assert!(findings(&report, "legacy_api_keys").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_prints_a_table_and_fails_clearly_without_a_database() {
    let stack = Stack::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url(&stack))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("statement_timeout_missing") && text.contains("fix:"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .arg("doctor")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backend_unavailable"));
}
