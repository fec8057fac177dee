//! Issue: the specified tables, applied by refinery, proven through a real
//! PostgREST with real JWTs.

use crate::kit::http::JsonCalls;
use crate::kit::seed::TestUser;
use crate::kit::stack::Stack;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use uuid::Uuid;

fn ids(body: &Value) -> BTreeSet<String> {
    body.as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn migrate_twice_is_a_no_op_and_status_lists_all() {
    let stack = Stack::start().await;
    let mut client = bookengine::migrate::connect(&stack.db).await.unwrap();
    let again = bookengine::migrate::run(&mut client).await.unwrap();
    assert!(again.is_empty(), "second run applied {again:?}");
    let status = bookengine::migrate::status(&mut client).await.unwrap();
    assert!(status.len() >= 3);
    assert!(status.iter().all(|m| m.applied));
    // The history table is not in an exposed schema.
    let exposed: i64 = stack.count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name LIKE '%schema_history%'", &[]).await;
    assert_eq!(exposed, 0);
}

/// The service's own connections (migrate, LISTEN) use TLS whenever the server
/// offers it (rustls, the chain not checked: see `bookengine::pgtls`).
#[tokio::test]
async fn the_service_connects_to_postgres_over_tls_when_offered() {
    let stack = Stack::start().await;
    let client = bookengine::migrate::connect(&stack.db).await.unwrap();
    let offered: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let tcp = matches!(
        stack.db.get_hosts().first(),
        Some(tokio_postgres::config::Host::Tcp(_))
    );
    assert_eq!(
        encrypted,
        tcp && offered == "on",
        "ssl={offered}, tcp={tcp}"
    );
}

struct World {
    hobby_engine: Uuid,
    pro_engine: Uuid,
    ent_engine: Uuid,
    user_engine: Uuid,
    lonely_engine: Uuid,
    hobby: TestUser,
    pro: TestUser,
    ent: TestUser,
    direct: TestUser,
    other_direct: TestUser,
    admin: TestUser,
    no_credits: TestUser,
}

async fn world(stack: &Stack) -> World {
    let hobby_engine = stack.engine_fixture("hobby engine", true).await;
    let pro_engine = stack.engine_fixture("pro engine", true).await;
    let ent_engine = stack.engine_fixture("enterprise engine", true).await;
    let user_engine = stack.engine_fixture("direct engine", true).await;
    let lonely_engine = stack.engine_fixture("unassigned engine", true).await;
    let direct = stack.user(Some("hobby"), false).await;
    let other_direct = stack.user(Some("hobby"), false).await;
    stack
        .assign_fixture(hobby_engine, Some("hobby"), None, 0, true)
        .await;
    stack
        .assign_fixture(pro_engine, Some("pro"), None, 0, true)
        .await;
    stack
        .assign_fixture(ent_engine, Some("enterprise"), None, 0, true)
        .await;
    stack
        .assign_fixture(user_engine, None, Some(direct.id), 0, true)
        .await;
    World {
        hobby_engine,
        pro_engine,
        ent_engine,
        user_engine,
        lonely_engine,
        hobby: stack.user(Some("hobby"), false).await,
        pro: stack.user(Some("pro"), false).await,
        ent: stack.user(Some("enterprise"), false).await,
        direct,
        other_direct,
        admin: stack.admin().await,
        no_credits: stack.user(None, false).await,
    }
}

fn set(ids: &[Uuid]) -> BTreeSet<String> {
    ids.iter().map(|i| i.to_string()).collect()
}

#[tokio::test]
async fn rls_select_matrix_over_both_tables() {
    let stack = Stack::start().await;
    let w = world(&stack).await;
    let anon = stack.anon_key.expose().to_owned();
    let service = stack.service_key.expose().to_owned();
    let all = set(&[
        w.hobby_engine,
        w.pro_engine,
        w.ent_engine,
        w.user_engine,
        w.lonely_engine,
    ]);
    let cases: Vec<(&str, &str, BTreeSet<String>, usize)> = vec![
        ("anon", anon.as_str(), BTreeSet::new(), 0),
        ("hobby", &w.hobby.token, set(&[w.hobby_engine]), 1),
        ("pro", &w.pro.token, set(&[w.pro_engine]), 1),
        ("enterprise", &w.ent.token, set(&[w.ent_engine]), 1),
        (
            "direct user",
            &w.direct.token,
            set(&[w.hobby_engine, w.user_engine]),
            2,
        ),
        (
            "other direct-tier user",
            &w.other_direct.token,
            set(&[w.hobby_engine]),
            1,
        ),
        ("no credits row", &w.no_credits.token, BTreeSet::new(), 0),
        ("admin", &w.admin.token, all.clone(), 4),
        ("service_role", service.as_str(), all.clone(), 4),
    ];
    for (who, token, engines, assignments) in cases {
        let (status, body) = stack.get("ai_engines?select=id", token).await;
        assert_eq!(status, 200, "{who}: {body}");
        assert_eq!(ids(&body), engines, "{who} sees the wrong engines");
        let (status, body) = stack.get("engine_assignments?select=*", token).await;
        assert_eq!(status, 200, "{who}: {body}");
        assert_eq!(
            body.as_array().map(Vec::len),
            Some(assignments),
            "{who}: {body}"
        );
    }
    // A user never sees another user's direct assignment.
    let (_, body) = stack
        .get(
            "engine_assignments?assignment_type=eq.user",
            &w.other_direct.token,
        )
        .await;
    assert_eq!(body, json!([]));
}

#[tokio::test]
async fn non_admins_cannot_write_engines_or_assignments() {
    let stack = Stack::start().await;
    let w = world(&stack).await;
    let anon = stack.anon_key.expose().to_owned();
    let engine = json!({"name": "x", "flow_config": {"steps": []}, "models": []});
    let assignment = json!({"engine_id": w.pro_engine, "assignment_type": "tier", "tier": "hobby"});
    for (who, token, denied) in [
        ("anon", anon.as_str(), 401),
        ("hobby", w.hobby.token.as_str(), 403),
        ("pro", w.pro.token.as_str(), 403),
        ("enterprise", w.ent.token.as_str(), 403),
        ("direct user", w.direct.token.as_str(), 403),
    ] {
        let (s, b) = stack.post("ai_engines", token, engine.clone()).await;
        assert_eq!(s, denied, "{who} insert engine: {b}");
        let (s, b) = stack
            .post("engine_assignments", token, assignment.clone())
            .await;
        assert_eq!(s, denied, "{who} insert assignment: {b}");
        // Filtered updates and deletes are not errors: 200 with no rows, and nothing changes.
        let path = format!("ai_engines?id=eq.{}", w.pro_engine);
        let (s, b) = stack.patch(&path, token, json!({"name": "pwned"})).await;
        assert!(s == 200 || s == denied, "{who} update engine: {s} {b}");
        if s == 200 {
            assert_eq!(b, json!([]), "{who} update engine changed rows");
        }
        let (s, b) = stack.delete(&path, token).await;
        assert!(s == 200 || s == denied, "{who} delete engine: {s} {b}");
        if s == 200 {
            assert_eq!(b, json!([]), "{who} delete engine removed rows");
        }
        let path = format!("engine_assignments?engine_id=eq.{}", w.hobby_engine);
        let (s, b) = stack.patch(&path, token, json!({"priority": 99})).await;
        assert!(s == 200 || s == denied, "{who} update assignment: {s} {b}");
        if s == 200 {
            assert_eq!(b, json!([]), "{who} update assignment changed rows");
        }
        let (s, b) = stack.delete(&path, token).await;
        assert!(s == 200 || s == denied, "{who} delete assignment: {s} {b}");
        if s == 200 {
            assert_eq!(b, json!([]), "{who} delete assignment removed rows");
        }
    }
    let row = stack
        .pg
        .query_one(
            "SELECT name FROM ai_engines WHERE id = $1",
            &[&w.pro_engine],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pro engine");
    let n: i64 = stack
        .count(
            "SELECT count(*) FROM engine_assignments WHERE priority = 99",
            &[],
        )
        .await;
    assert_eq!(n, 0);
    let n: i64 = stack
        .count("SELECT count(*) FROM engine_assignments", &[])
        .await;
    assert_eq!(n, 4, "an assignment was deleted by a non-admin");
}

#[tokio::test]
async fn admins_and_service_role_can_write_all_four_operations() {
    let stack = Stack::start().await;
    let w = world(&stack).await;
    let service = stack.service_key.expose().to_owned();
    for (who, token) in [
        ("admin", w.admin.token.as_str()),
        ("service_role", service.as_str()),
    ] {
        let (s, b) = stack
            .post("ai_engines", token, json!({"name": format!("{who} engine"), "flow_config": crate::kit::flows::one_step_flow_config(), "models": []}))
            .await;
        assert_eq!(s, 201, "{who}: {b}");
        let id = b[0]["id"].as_str().unwrap().to_owned();
        let (s, b) = stack
            .post(
                "engine_assignments",
                token,
                json!({"engine_id": id, "assignment_type": "tier", "tier": "pro", "priority": 3}),
            )
            .await;
        assert_eq!(s, 201, "{who}: {b}");
        let aid = b[0]["id"].as_str().unwrap().to_owned();
        let (s, b) = stack
            .patch(
                &format!("engine_assignments?id=eq.{aid}"),
                token,
                json!({"priority": 9}),
            )
            .await;
        assert_eq!((s, b[0]["priority"].clone()), (200, json!(9)), "{who}");
        let (s, b) = stack
            .patch(
                &format!("ai_engines?id=eq.{id}"),
                token,
                json!({"active": false}),
            )
            .await;
        assert_eq!((s, b[0]["active"].clone()), (200, json!(false)), "{who}");
        let (s, b) = stack
            .delete(&format!("engine_assignments?id=eq.{aid}"), token)
            .await;
        assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(1)), "{who}");
        let (s, b) = stack.delete(&format!("ai_engines?id=eq.{id}"), token).await;
        assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(1)), "{who}");
    }
}

#[tokio::test]
async fn a_tier_change_takes_effect_on_the_next_request() {
    let stack = Stack::start().await;
    let w = world(&stack).await;
    let (_, before) = stack.get("ai_engines?select=id", &w.hobby.token).await;
    assert_eq!(ids(&before), set(&[w.hobby_engine]));
    stack.set_tier(w.hobby.id, "pro").await;
    let (_, after) = stack.get("ai_engines?select=id", &w.hobby.token).await;
    assert_eq!(ids(&after), set(&[w.pro_engine]));
}

#[tokio::test]
async fn valid_assignment_check_rejects_mixed_targets() {
    let stack = Stack::start().await;
    let w = world(&stack).await;
    for (body, what) in [
        (
            json!({"engine_id": w.pro_engine, "assignment_type": "tier", "tier": "pro", "user_id": w.pro.id}),
            "tier row with a user_id",
        ),
        (
            json!({"engine_id": w.pro_engine, "assignment_type": "user", "user_id": w.pro.id, "tier": "pro"}),
            "user row with a tier",
        ),
        (
            json!({"engine_id": w.pro_engine, "assignment_type": "tier"}),
            "tier row without a tier",
        ),
        (
            json!({"engine_id": w.pro_engine, "assignment_type": "user"}),
            "user row without a user",
        ),
    ] {
        let (s, b) = stack.post("engine_assignments", &w.admin.token, body).await;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(b["code"], "23514", "{what}: {b}");
        assert!(
            b["message"]
                .as_str()
                .unwrap_or_default()
                .contains("valid_assignment"),
            "{what}: {b}"
        );
    }
}

#[tokio::test]
async fn postgrest_refuses_bad_tokens() {
    let stack = Stack::start().await;
    let user = stack.user(Some("pro"), false).await;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| json!({"sub": user.id, "role": "authenticated", "exp": exp});
    let wrong_key = encode(
        &Header::default(),
        &claims(now + 600),
        &EncodingKey::from_secret(b"not-the-project-secret-not-the-project-secret"),
    )
    .unwrap();
    let expired = encode(
        &Header::default(),
        &claims(now - 3600),
        &EncodingKey::from_secret(stack.jwt_secret.expose().as_bytes()),
    )
    .unwrap();
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(now + 600))
    );
    for (what, token) in [
        ("wrong secret", wrong_key.as_str()),
        ("expired", expired.as_str()),
        ("alg none", alg_none.as_str()),
        ("malformed", "not.a.jwt"),
    ] {
        let (s, b) = stack.get("ai_engines", token).await;
        assert_eq!(s, 401, "{what}: {b}");
        assert_eq!(b["code"], "PGRST301", "{what}: {b}");
    }
    let unknown_role = encode(
        &Header::default(),
        &json!({"sub": user.id, "role": "superuser_please", "exp": now + 600}),
        &EncodingKey::from_secret(stack.jwt_secret.expose().as_bytes()),
    )
    .unwrap();
    let (s, b) = stack.get("ai_engines", &unknown_role).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["code"], "22023", "{b}");
}

/// The specification's SQL, kept in the repository (tests/fixtures/specified.sql says
/// where it comes from), as statements in its own order, without comments.
fn seed_statements() -> Vec<String> {
    let text = include_str!("../fixtures/specified.sql");
    text.split(';')
        .map(|stmt| {
            stmt.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test]
async fn specified_statements_are_in_v1_verbatim() {
    let v1 = include_str!("../../sql/V1__engine_tables.sql");
    let mut n = 0;
    for stmt in include_str!("../fixtures/specified.sql").split(';') {
        // Each statement, comments and spacing included, stands in V1 as written
        // (the leading comment lines may be separated by the reordering).
        let body: String = stmt
            .trim()
            .lines()
            .skip_while(|l| l.trim_start().starts_with("--") || l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if body.is_empty() {
            continue;
        }
        assert!(
            v1.contains(&body),
            "V1 lacks the specified statement:\n{body}"
        );
        n += 1;
    }
    assert_eq!(
        n, 11,
        "the seed has 2 tables, 2 RLS switches, 4 policies and 3 indexes"
    );
}

#[tokio::test]
async fn policies_and_indexes_match_the_specification_exactly() {
    let stack = Stack::start().await;
    // Apply the seed's own statements to a scratch database (tables, then policies,
    // then indexes: the only order in which they can run) and compare catalogues.
    let mut scratch = stack.db.clone();
    scratch.dbname(format!("{}_seed", stack.db.get_dbname().unwrap()));
    bookengine::devstack::create_database(&scratch)
        .await
        .unwrap();
    bookengine::devstack::apply_baseline(&scratch)
        .await
        .unwrap();
    let client = bookengine::migrate::connect(&scratch).await.unwrap();
    let stmts = seed_statements();
    let rank = |s: &str| {
        if s.starts_with("CREATE TABLE") || s.starts_with("ALTER TABLE") {
            0
        } else if s.starts_with("CREATE POLICY") {
            1
        } else {
            2
        }
    };
    let mut ordered = stmts.clone();
    ordered.sort_by_key(|s| rank(s));
    for s in &ordered {
        client
            .batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("seed statement failed: {e}\n{s}"));
    }
    let policies = "SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check \
                    FROM pg_policies WHERE tablename IN ('ai_engines', 'engine_assignments') ORDER BY 1, 2";
    let indexes =
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'engine_assignments' \
                   AND indexname LIKE 'idx_%' ORDER BY 1";
    let columns = "SELECT table_name, column_name, data_type, column_default, is_nullable \
                   FROM information_schema.columns WHERE table_name IN ('ai_engines', 'engine_assignments') ORDER BY 1, 2";
    let checks = "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint \
                  WHERE conrelid IN ('public.ai_engines'::regclass, 'public.engine_assignments'::regclass) ORDER BY 1, 2";
    for (what, q) in [
        ("policies", policies),
        ("indexes", indexes),
        ("columns", columns),
        ("constraints", checks),
    ] {
        let render = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| format!("{:?}", r.get::<_, Option<String>>(i)))
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .collect()
        };
        let expected = render(client.query(q, &[]).await.unwrap());
        let actual = render(stack.pg.query(q, &[]).await.unwrap());
        assert!(!expected.is_empty(), "{what}: nothing to compare");
        assert_eq!(actual, expected, "{what} differ from the specification");
    }
    drop(client);
    bookengine::devstack::drop_database(&scratch).await.unwrap();
}
