//! Issue: assignments, bulk, conflicts, precedence and visibility.

use crate::kit::answers::assert_api_error;
use crate::kit::app::spawn_app;
use crate::kit::http::JsonCalls;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn the_superadmin_story_tier_and_user_assignment() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let hobby = app.stack.user(Some("hobby"), false).await;
    let chosen = app.stack.user(Some("hobby"), false).await;
    let id = app.deploy_example(&admin).await;
    let (s, a) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": id, "tier": "pro", "priority": 5}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        (a["assignment_type"].clone(), a["tier"].clone()),
        (json!("tier"), json!("pro"))
    );
    let (s, a) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": id, "user_id": chosen.id}),
        )
        .await;
    assert_eq!(
        (s, a["assignment_type"].clone()),
        (200, json!("user")),
        "{a}"
    );

    let (s, e) = app.get("/v1/me/engine", &pro.token).await;
    assert_eq!(
        (s, e["id"].clone(), e["assignment_type"].clone()),
        (200, json!(id), json!("tier")),
        "{e}"
    );
    let (s, e) = app.get("/v1/me/engine", &chosen.token).await;
    assert_eq!(
        (s, e["id"].clone(), e["assignment_type"].clone()),
        (200, json!(id), json!("user")),
        "{e}"
    );
    let (s, b) = app.get("/v1/me/engine", &hobby.token).await;
    assert_api_error(s, &b, 404, "no_engine_assigned");
    // A hobby user gets 404 for the pro engine's id; after an upgrade, they see it.
    let (s, _) = app.get(&format!("/v1/engines/{id}"), &hobby.token).await;
    assert_eq!(s, 404);
    app.stack.set_tier(hobby.id, "pro").await;
    let (s, _) = app.get(&format!("/v1/engines/{id}"), &hobby.token).await;
    assert_eq!(s, 200);
    // Users see only their own assignments.
    let (_, mine) = app.get("/v1/assignments", &pro.token).await;
    assert_eq!(mine.as_array().map(Vec::len), Some(1), "{mine}");
    let (_, all) = app.get("/v1/assignments", &admin.token).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
}

#[tokio::test]
async fn assigning_twice_updates_instead_of_duplicating() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let user = app.stack.user(Some("pro"), false).await;
    let id = app.deploy_example(&admin).await;
    for body in [
        json!({"engine_id": id, "tier": "pro"}),
        json!({"engine_id": id, "user_id": user.id}),
    ] {
        let (_, first) = app
            .post("/v1/assignments", &admin.token, body.clone())
            .await;
        let mut again = body.clone();
        again["priority"] = json!(42);
        let (s, second) = app.post("/v1/assignments", &admin.token, again).await;
        assert_eq!(s, 200, "{second}");
        assert_eq!(first["id"], second["id"], "a second row was created");
        assert_eq!(second["priority"], 42);
    }
    let (_, all) = app.get("/v1/assignments", &admin.token).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn bulk_is_all_or_nothing() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let user = app.stack.user(Some("hobby"), false).await;
    let a = app.deploy_example(&admin).await;
    let b = app.deploy_example(&admin).await;
    let (s, body) = app
        .post(
            "/v1/assignments/bulk",
            &admin.token,
            json!({"engine_ids": [a, b], "tiers": ["pro", "enterprise"], "user_ids": [user.id, Uuid::new_v4()]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_reference");
    assert_eq!(body["error"]["details"]["path"], "user_id");
    let (_, all) = app.get("/v1/assignments", &admin.token).await;
    assert_eq!(all, json!([]), "a failed bulk call wrote rows");
    let (s, body) = app
        .post(
            "/v1/assignments/bulk",
            &admin.token,
            json!({"engine_ids": [a, b], "tiers": ["pro", "enterprise"], "user_ids": [user.id], "priority": 3}),
        )
        .await;
    assert_eq!((s, body.as_array().map(Vec::len)), (200, Some(6)), "{body}");
    let pro = app.stack.user(Some("pro"), false).await;
    let (s, body) = app
        .post(
            "/v1/assignments/bulk",
            &pro.token,
            json!({"engine_ids": [a], "tiers": ["hobby"]}),
        )
        .await;
    assert_api_error(s, &body, 403, "permission_denied");
    let (s, body) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": Uuid::new_v4(), "tier": "pro"}),
        )
        .await;
    assert_eq!(
        (s, body["error"]["details"]["path"].clone()),
        (400, json!("engine_id")),
        "{body}"
    );
    let (s, body) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": a, "tier": "pro", "user_id": user.id}),
        )
        .await;
    assert_api_error(s, &body, 400, "invalid_assignment");
    let (s, body) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": a, "tier": "platinum"}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
}

#[tokio::test]
async fn precedence_user_beats_tier_then_priority_then_newest() {
    let app = spawn_app().await;
    let st = &app.stack;
    let admin = st.admin().await;
    // Each case: assignments as (engine name, via, priority, engine active, assignment active); expected winner.
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str, i32, bool, bool)>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "user beats tier",
            vec![
                ("tierhi", "tier", 100, true, true),
                ("direct", "user", 0, true, true),
            ],
            Some("direct"),
        ),
        (
            "higher priority wins",
            vec![
                ("low", "tier", 1, true, true),
                ("high", "tier", 5, true, true),
            ],
            Some("high"),
        ),
        (
            "newest wins a tie",
            vec![
                ("older", "tier", 0, true, true),
                ("newer", "tier", 0, true, true),
            ],
            Some("newer"),
        ),
        (
            "inactive engine skipped",
            vec![
                ("off", "user", 9, false, true),
                ("on", "tier", 0, true, true),
            ],
            Some("on"),
        ),
        (
            "inactive assignment skipped",
            vec![
                ("off", "user", 9, true, false),
                ("on", "tier", 0, true, true),
            ],
            Some("on"),
        ),
        ("nothing assigned", vec![], None),
        ("only inactive", vec![("off", "tier", 0, true, false)], None),
    ];
    for (what, assignments, expected) in cases {
        // Tier assignments are shared by every pro user: start each case clean.
        st.pg
            .execute("DELETE FROM engine_assignments", &[])
            .await
            .unwrap();
        let user = st.user(Some("pro"), false).await;
        let mut names = std::collections::HashMap::new();
        for (name, via, priority, engine_active, active) in assignments {
            let engine = st
                .engine_fixture(&format!("{what}/{name}"), engine_active)
                .await;
            names.insert(engine.to_string(), name);
            match via {
                "tier" => {
                    st.assign_fixture(engine, Some("pro"), None, priority, active)
                        .await
                }
                _ => {
                    st.assign_fixture(engine, None, Some(user.id), priority, active)
                        .await
                }
            };
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (s, b) = app.get("/v1/me/engine", &user.token).await;
        match expected {
            Some(name) => {
                assert_eq!(s, 200, "{what}: {b}");
                let got = b["id"].as_str().and_then(|id| names.get(id)).copied();
                assert_eq!(got, Some(name), "{what}: {b}");
                let (_, all) = app.get("/v1/me/engines", &user.token).await;
                assert_eq!(
                    all[0]["id"], b["id"],
                    "{what}: my_engines disagrees with resolve"
                );
            }
            None => assert_eq!(
                (s, b["error"]["code"].clone()),
                (404, json!("no_engine_assigned")),
                "{what}: {b}"
            ),
        }
    }
    let _ = admin;
}

#[tokio::test]
async fn update_and_remove_assignments() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let id = app.deploy_example(&admin).await;
    let (_, a) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": id, "tier": "pro"}),
        )
        .await;
    let aid = a["id"].as_str().unwrap().to_owned();
    let (s, b) = app
        .patch(
            &format!("/v1/assignments/{aid}"),
            &pro.token,
            json!({"priority": 9}),
        )
        .await;
    assert_api_error(s, &b, 403, "permission_denied");
    let (s, b) = app
        .patch(
            &format!("/v1/assignments/{aid}"),
            &admin.token,
            json!({"priority": 9, "active": false}),
        )
        .await;
    assert_eq!(
        (s, b["priority"].clone(), b["active"].clone()),
        (200, json!(9), json!(false)),
        "{b}"
    );
    let (s, _) = app
        .delete(&format!("/v1/assignments/{aid}"), &pro.token)
        .await;
    // RLS lets a pro user see their tier's assignment (even inactive), so this is 403.
    assert_eq!(s, 403);
    let (s, _) = app
        .delete(&format!("/v1/assignments/{aid}"), &admin.token)
        .await;
    assert_eq!(s, 204);
    let (s, b) = app
        .delete(&format!("/v1/assignments/{aid}"), &admin.token)
        .await;
    assert_api_error(s, &b, 404, "assignment_not_found");
}
