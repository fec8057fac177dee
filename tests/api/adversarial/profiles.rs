//! #13 item 6: `profiles.role` is the key to everything. With the common Supabase
//! starter policy "Users can update own profile" (and the UPDATE privilege hosted
//! projects grant by default), any user makes themselves an admin with one PATCH;
//! the opt-in guard in supabase/hardening refuses it, on every path.

use crate::kit::http::JsonCalls;
use crate::kit::stack::Stack;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

pub const GUARD_SQL: &str = include_str!("../../../supabase/hardening/profiles_role_guard.sql");

/// The starter policies many Supabase projects have on profiles, and the privileges
/// hosted projects grant by default (the baseline's default privileges already do).
pub const STARTER_POLICIES: &str = r#"
CREATE POLICY "Users can update own profile" ON public.profiles FOR UPDATE USING (auth.uid() = id);
CREATE POLICY "Users can insert their own profile" ON public.profiles FOR INSERT WITH CHECK (auth.uid() = id);
GRANT SELECT, INSERT, UPDATE ON public.profiles TO authenticated;
"#;

async fn role_of(stack: &Stack, id: Uuid) -> Option<String> {
    stack
        .pg
        .query_opt("SELECT role FROM public.profiles WHERE id = $1", &[&id])
        .await
        .expect("read role")
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_edit_makes_an_admin_until_the_guard_refuses_it() {
    let stack = Stack::start().await;
    stack
        .pg
        .batch_execute(STARTER_POLICIES)
        .await
        .expect("starter policies");
    let user = stack.user(Some("hobby"), false).await;
    let engine = stack.engine_fixture("Not assigned to anyone", true).await;
    let me = format!("profiles?id=eq.{}", user.id);

    // Before: an ordinary user sees no engine.
    let (status, rows) = stack.get("ai_engines?select=id", &user.token).await;
    assert_eq!((status, rows), (200, json!([])));

    // The reproduction: one PATCH and the user is an admin of every engine.
    let (status, body) = stack
        .patch(&me, &user.token, json!({"role": "admin"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(role_of(&stack, user.id).await.as_deref(), Some("admin"));
    let (status, rows) = stack.get("ai_engines?select=id", &user.token).await;
    assert_eq!((status, rows), (200, json!([{"id": engine}])));

    // The guard: the same PATCH is refused and changes nothing; the rest of the
    // profile stays editable.
    demote(&stack, user.id).await.expect("demote");
    stack
        .pg
        .batch_execute(GUARD_SQL)
        .await
        .expect("apply the guard");
    stack
        .pg
        .batch_execute(GUARD_SQL)
        .await
        .expect("apply the guard again (idempotent)");
    let (status, body) = stack
        .patch(&me, &user.token, json!({"role": "admin"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["details"], "profile_role_change_refused", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("only an admin"),
        "{body}"
    );
    assert_eq!(role_of(&stack, user.id).await.as_deref(), Some("user"));
    let (status, body) = stack
        .patch(&me, &user.token, json!({"full_name": "Still Editable"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, rows) = stack.get("ai_engines?select=id", &user.token).await;
    assert_eq!((status, rows), (200, json!([])));

    // A new user cannot insert their profile as an admin, but can as a user.
    let newcomer = uuid::Uuid::new_v4();
    stack
        .pg
        .execute(
            "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
            &[&newcomer, &format!("{newcomer}@example.test")],
        )
        .await
        .expect("auth user");
    let token = stack.token_for(newcomer);
    let (status, body) = stack
        .post("profiles", &token, json!({"id": newcomer, "role": "admin"}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = stack
        .post("profiles", &token, json!({"id": newcomer, "role": "user"}))
        .await;
    assert_eq!(status, 201, "{body}");

    // Nor through a SECURITY DEFINER function that updates profiles for them.
    stack
        .pg
        .batch_execute(
            "CREATE FUNCTION public.set_my_role(new_role text) RETURNS void \
             LANGUAGE sql SECURITY DEFINER SET search_path = public AS \
             $$ UPDATE public.profiles SET role = new_role WHERE id = auth.uid() $$; \
             GRANT EXECUTE ON FUNCTION public.set_my_role(text) TO authenticated; \
             NOTIFY pgrst, 'reload schema';",
        )
        .await
        .expect("definer function");
    let mut answer = (404, json!(null));
    for _ in 0..100 {
        answer = stack
            .post("rpc/set_my_role", &user.token, json!({"new_role": "admin"}))
            .await;
        if answer.0 != 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer.0, 403, "{}", answer.1);
    assert_eq!(role_of(&stack, user.id).await.as_deref(), Some("user"));

    // Who may still change roles: an existing admin, the service role, the database itself.
    let admin = stack.admin().await;
    let (status, body) = stack
        .patch(
            &format!("profiles?id=eq.{}", admin.id),
            &admin.token,
            json!({"role": "editor"}),
        )
        .await;
    assert_eq!(status, 200, "an admin changes their own role: {body}");
    let (status, body) = stack
        .patch(&me, stack.service_key.expose(), json!({"role": "admin"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(role_of(&stack, user.id).await.as_deref(), Some("admin"));
    demote(&stack, user.id)
        .await
        .expect("a direct connection may");
}

/// Set the user's role back to `user` over the test's own connection (past RLS and
/// PostgREST).
async fn demote(stack: &Stack, user: Uuid) -> Result<u64, tokio_postgres::Error> {
    stack
        .pg
        .execute(
            "UPDATE public.profiles SET role = 'user' WHERE id = $1",
            &[&user],
        )
        .await
}
