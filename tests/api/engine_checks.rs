//! Engines written behind the service's back (issue #12): inserted through
//! PostgREST as an admin, the same wire as the seed's supabase-js code, and checked
//! by the service within seconds; a broken engine is never handed to a user.

use crate::kit::answers::{assert_api_error, assert_rest_error};
use crate::kit::app::{spawn_app_with, TestApp};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{finished, start_book, wait_until};
use crate::kit::mock_llm::Mocks;
use crate::kit::seed::TestUser;
use crate::kit::stack::Stack;
use bookengine::worker::WorkerConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A worker (and so the engine checker) polling quickly, with mock providers.
async fn app_with_checker() -> (TestApp, Mocks) {
    let mocks = Mocks::start().await;
    let worker = WorkerConfig {
        poll_interval_ms: 100,
        backoff_ms: 20,
        check_interval_ms: 100,
        ..Default::default()
    };
    let app = spawn_app_with(Some((worker, mocks.providers()))).await;
    (app, mocks)
}

/// The seed's `deployEngine`: an insert of the whole engine through PostgREST.
async fn insert_engine(
    st: &Stack,
    admin: &TestUser,
    name: &str,
    flow_config: Value,
) -> (u16, Value) {
    st.post(
        "ai_engines",
        &admin.token,
        json!({"name": name, "description": "from the React app", "flow_config": flow_config,
                    "models": [], "execution_mode": "sequential", "tier": "pro", "active": true,
                    "created_by": admin.id}),
    )
    .await
}

async fn insert_engine_ok(st: &Stack, admin: &TestUser, name: &str, flow_config: Value) -> Uuid {
    let (s, b) = insert_engine(st, admin, name, flow_config).await;
    assert_eq!(s, 201, "{b}");
    b[0]["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .expect("engine id")
}

async fn assign_tier(st: &Stack, admin: &TestUser, engine: Uuid, tier: &str, priority: i32) {
    let assignment = json!({"engine_id": engine, "assignment_type": "tier", "tier": tier,
        "priority": priority});
    let (s, b) = st
        .post("engine_assignments", &admin.token, assignment)
        .await;
    assert_eq!(s, 201, "{b}");
}

/// The engine's check as `token` reads it through PostgREST, once it is not pending.
async fn checked(st: &Stack, token: &str, engine: Uuid) -> Value {
    let start = Instant::now();
    loop {
        let (s, b) = st
            .get(&format!("engine_checks?engine_id=eq.{engine}"), token)
            .await;
        assert_eq!(s, 200, "{b}");
        if b[0]["state"].as_str().is_some_and(|s| s != "pending") {
            return b[0].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still pending: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step(id: &str, configuration: Value) -> Value {
    json!({"id": id, "name": id, "configuration": configuration})
}

/// The engine of issue #12, as a React playground's state writes it.
fn react_flow() -> Value {
    json!({"type": "full", "steps": [
        step("outline", json!({"provider": "openai", "model": "gpt-4o-mini", "maxTokens": 800,
            "systemPrompt": "You plan books.", "outputFormat": "json",
            "prompt": "Plan a book about {{topic}} with chapters."})),
        step("write", json!({"provider": "anthropic", "model": "claude-3-5-haiku-latest", "maxTokens": 1200,
            "forEach": "steps.outline.output.chapters",
            "prompt": "Write chapter {{ item_number }}, {{ item.title }}, of the book planned as {{outline}}."})),
        step("edit", json!({"provider": "openai", "model": "gpt-4o-mini", "systemPrompt": "You edit books.",
            "prompt": "Edit this book about {{topic}}: {{ steps.write.outputs }}"}))]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_react_shaped_engine_is_checked_with_notes_and_a_users_book_is_generated() {
    let (app, _mocks) = app_with_checker().await;
    let st = &app.stack;
    let admin = st.admin().await;
    let pro = st.user(Some("pro"), false).await;
    let engine = insert_engine_ok(st, &admin, "React engine", react_flow()).await;
    assign_tier(st, &admin, engine, "pro", 0).await;

    let check = checked(st, &admin.token, engine).await;
    assert_eq!(check["state"], "runnable", "{check}");
    assert_eq!(check["issues"], json!([]));
    let notes = check["notes"].as_array().cloned().unwrap_or_default();
    let has = |path: &str, from: &str, to: &str| {
        notes
            .iter()
            .any(|n| n["path"] == path && n["from"] == from && n["to"] == to)
    };
    assert!(
        has(
            "steps[0].configuration.maxTokens",
            "maxTokens",
            "max_tokens"
        ),
        "{check}"
    );
    assert!(
        has(
            "steps[0].configuration.systemPrompt",
            "systemPrompt",
            "system"
        ),
        "{check}"
    );
    assert!(
        has(
            "steps[0].configuration.prompt",
            "{{topic}}",
            "{{ input.topic }}"
        ),
        "{check}"
    );
    assert!(
        has(
            "steps[1].configuration.for_each",
            "steps.outline.output.chapters",
            "outline.chapters"
        ),
        "{check}"
    );
    assert!(
        has(
            "steps[1].configuration.prompt",
            "{{outline}}",
            "{{ steps.outline.output }}"
        ),
        "{check}"
    );
    // The row itself is left as the React app wrote it.
    let (_, row) = st
        .get(&format!("ai_engines?id=eq.{engine}"), &admin.token)
        .await;
    assert_eq!(
        row[0]["flow_config"]["steps"][0]["configuration"]["maxTokens"],
        800
    );

    // The assigned user reads the same check (RLS: they can see the engine)...
    let mine = checked(st, &pro.token, engine).await;
    assert_eq!(mine["state"], "runnable");
    // ...and so does the API, next to the engine.
    let (s, e) = app.get(&format!("/v1/engines/{engine}"), &pro.token).await;
    assert_eq!(
        (s, e["check"]["state"].clone()),
        (200, json!("runnable")),
        "{e}"
    );
    // A user with no assignment sees neither.
    let hobby = st.user(Some("hobby"), false).await;
    let (_, none) = st
        .get(
            &format!("engine_checks?engine_id=eq.{engine}"),
            &hobby.token,
        )
        .await;
    assert_eq!(none, json!([]));

    // my_engines says it will run; the book is written through supabase-js's rpc.
    let (_, mine) = st.post("rpc/my_engines", &pro.token, json!({})).await;
    assert_eq!(
        (mine[0]["runnable"].clone(), mine[0]["check_state"].clone()),
        (json!(true), json!("runnable"))
    );
    let (s, job) = request_generation(st, &pro, json!({"input": {"topic": "bees"}})).await;
    assert_eq!(s, 200, "{job}");
    let id = job["id"].as_str().expect("job id").to_owned();
    let done = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // Every step ran with the canonical settings: the chapters fanned out.
    let writes = done["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step_id"] == "write" && s["item_index"].as_i64().is_some_and(|i| i >= 0))
        .count();
    assert!(writes >= 2, "{done}");
}

/// A flow where `{{outline}}` could be the step or the input field input.outline.
fn ambiguous_flow() -> Value {
    json!({"type": "full", "steps": [
        step("outline", json!({"provider": "openai", "model": "gpt-4o-mini",
            "prompt": "Plan a book from this outline: {{ input.outline }}"})),
        step("write", json!({"provider": "openai", "model": "gpt-4o-mini",
            "prompt": "Write the book from {{outline}}."}))]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_engine_is_not_runnable_and_never_handed_to_a_user() {
    let (app, _mocks) = app_with_checker().await;
    let st = &app.stack;
    let admin = st.admin().await;
    let pro = st.user(Some("pro"), false).await;
    // The good engine, deployed through the API, comes second in precedence.
    let good = app.deploy_example(&admin).await;
    let (s, b) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": good, "tier": "pro", "priority": 1}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let bad = insert_engine_ok(st, &admin, "Ambiguous", ambiguous_flow()).await;
    assign_tier(st, &admin, bad, "pro", 10).await;

    let check = checked(st, &admin.token, bad).await;
    assert_eq!(check["state"], "not_runnable", "{check}");
    let issue = &check["issues"][0];
    assert_eq!(issue["path"], "steps[1].configuration.prompt", "{check}");
    assert_eq!(issue["code"], "ambiguous_reference", "{check}");
    let message = issue["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("steps.outline.output") && message.contains("input.outline"),
        "{message}"
    );

    // my_engines lists both, in precedence, and says why the first is skipped.
    let (_, mine) = st.post("rpc/my_engines", &pro.token, json!({})).await;
    assert_eq!(mine[0]["id"], json!(bad), "{mine}");
    assert_eq!(
        (mine[0]["runnable"].clone(), mine[0]["check_state"].clone()),
        (json!(false), json!("not_runnable"))
    );
    assert_eq!(mine[0]["check_issues"][0]["code"], "ambiguous_reference");
    assert_eq!(
        (mine[1]["id"].clone(), mine[1]["runnable"].clone()),
        (json!(good), json!(true))
    );
    // Resolution falls to the next engine, in SQL and through the API.
    let (_, resolved) = st.post("rpc/resolve_engine", &pro.token, json!({})).await;
    assert_eq!(resolved["id"], json!(good), "{resolved}");
    let (s, me) = app.get("/v1/me/engine", &pro.token).await;
    assert_eq!((s, me["id"].clone()), (200, json!(good)), "{me}");
    let id = start_book(&app, &pro, "t").await;
    let done = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // Naming the broken engine is refused before any job exists.
    let (s, b) =
        request_generation(st, &pro, json!({"input": {"topic": "t"}, "engine_id": bad})).await;
    assert_rest_error(s, &b, 422, "engine_not_runnable");
    let msg = b["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("Ambiguous") && msg.contains("steps[1].configuration.prompt"),
        "{msg}"
    );
    let hinted: Value =
        serde_json::from_str(b["hint"].as_str().unwrap_or("null")).unwrap_or_default();
    assert_eq!(hinted[0]["code"], "ambiguous_reference", "{b}");
    let (s, b) = app
        .post(
            "/v1/generations",
            &pro.token,
            json!({"input": {"topic": "t"}, "engine_id": bad}),
        )
        .await;
    assert_api_error(s, &b, 400, "engine_not_runnable");
    assert_eq!(
        b["error"]["details"]["issues"][0]["path"], "steps[1].configuration.prompt",
        "{b}"
    );
    // An admin naming it gets the same answer.
    let (s, b) = app
        .post(
            "/v1/generations",
            &admin.token,
            json!({"input": {"topic": "t"}, "engine_id": bad}),
        )
        .await;
    assert_api_error(s, &b, 400, "engine_not_runnable");
    let jobs: i64 = st
        .count(
            "SELECT count(*) FROM generation_jobs WHERE engine_id = $1",
            &[&bad],
        )
        .await;
    assert_eq!(jobs, 0);

    // With only broken engines left, the user is told why, not sent a failing job.
    st.pg
        .execute(
            "UPDATE engine_assignments SET active = false WHERE engine_id = $1",
            &[&good],
        )
        .await
        .expect("deactivate");
    let (s, b) = app
        .post("/v1/generations", &pro.token, json!({"input": {}}))
        .await;
    assert_api_error(s, &b, 400, "engine_not_runnable");
    let (s, b) = app.get("/v1/me/engine", &pro.token).await;
    assert_api_error(s, &b, 400, "engine_not_runnable");

    // Fixed by the admin through PostgREST: checked again and used again.
    let mut fixed = ambiguous_flow();
    fixed["steps"][1]["configuration"]["prompt"] =
        json!("Write the book from {{ steps.outline.output }}.");
    let (s, b) = patch_row(st, &admin, bad, json!({"flow_config": fixed})).await;
    assert_eq!(s, 200, "{b}");
    let check = checked(st, &admin.token, bad).await;
    assert_eq!(check["state"], "runnable", "{check}");
    let (s, me) = app.get("/v1/me/engine", &pro.token).await;
    assert_eq!((s, me["id"].clone()), (200, json!(bad)), "{me}");
}

#[tokio::test]
async fn an_insert_missing_what_sql_can_check_is_refused_naming_the_field() {
    let st = Stack::start().await;
    let admin = st.admin().await;
    let pro = st.user(Some("pro"), false).await;
    let mut flow = react_flow();
    flow["steps"][1]["configuration"]
        .as_object_mut()
        .map(|c| c.remove("model"));
    let (s, b) = insert_engine(&st, &admin, "No model", flow).await;
    assert_rest_error(s, &b, 400, "invalid_flow");
    assert_eq!(
        b["message"], "flow_config.steps[1].configuration.model is required",
        "{b}"
    );

    for (flow, message) in [
        (json!({"type": "full"}), "flow_config.steps is required"),
        (
            json!({"type": "full", "steps": []}),
            "flow_config.steps must not be empty",
        ),
        (
            json!({"type": "full", "steps": {"a": 1}}),
            "flow_config.steps must be an array of steps",
        ),
        (json!([]), "flow_config must be a JSON object"),
        (
            json!({"steps": [step("a", json!({"provider": "openai", "model": "m", "prompt": "p"})),
                             step("a", json!({"provider": "openai", "model": "m", "prompt": " "}))]}),
            "flow_config.steps[1].id \"a\" is already used by steps[0] (and 1 more)",
        ),
        (
            json!({"steps": [{"name": "x", "configuration": {"provider": "openai", "model": "m", "prompt": "p"}}]}),
            "flow_config.steps[0].id is required",
        ),
        (
            json!({"steps": [{"id": "a"}]}),
            "flow_config.steps[0].configuration is required",
        ),
    ] {
        let (s, b) = insert_engine(&st, &admin, "Bad", flow.clone()).await;
        assert_eq!(
            (s, b["message"].clone()),
            (400, json!(message)),
            "{flow}: {b}"
        );
    }
    // Every problem is in the hint.
    let (_, b) = insert_engine(
        &st,
        &admin,
        "Bad",
        json!({"steps": [{"id": "a", "configuration": {}}]}),
    )
    .await;
    assert_eq!(
        b["hint"],
        "flow_config.steps[0].configuration.provider is required; flow_config.steps[0].configuration.model is required; flow_config.steps[0].configuration.prompt is required"
    );

    // An update that breaks a stored engine is refused the same way, and changes nothing.
    let id = insert_engine_ok(&st, &admin, "Good", react_flow()).await;
    let mut broken = react_flow();
    broken["steps"][0]["configuration"]["prompt"] = json!("");
    let (s, b) = patch_row(&st, &admin, id, json!({"flow_config": broken})).await;
    assert_eq!(
        (s, b["message"].clone()),
        (
            400,
            json!("flow_config.steps[0].configuration.prompt is required")
        ),
        "{b}"
    );
    // A non-admin still gets the policy's answer, not the flow's.
    let (s, b) = insert_engine(&st, &pro, "Mine", json!({"steps": []})).await;
    assert_eq!(s, 403, "{b}");

    // The service's client turns the database's answer into the API's error code.
    let rest = bookengine::rest::Rest::new(&st.supabase_config()).expect("rest");
    let caller =
        bookengine::rest::Caller::User(bookengine::secret::Secret::new(admin.token.clone()));
    let builder = rest
        .table(&caller, "ai_engines")
        .expect("builder")
        .insert(json!({"name": "x", "flow_config": {"steps": []}, "models": []}).to_string());
    let err = rest.send::<Value>(builder).await.expect_err("refused");
    assert_eq!(
        (err.code.as_str(), err.message.as_str()),
        ("invalid_flow", "flow_config.steps must not be empty")
    );
}

#[tokio::test]
async fn a_pending_engine_waits_for_its_check_and_a_stale_result_is_not_saved() {
    // No service running: nothing checks the engine until the test does.
    let st = Stack::start().await;
    let admin = st.admin().await;
    let pro = st.user(Some("pro"), false).await;
    let engine = insert_engine_ok(&st, &admin, "React engine", react_flow()).await;
    assign_tier(&st, &admin, engine, "pro", 0).await;
    let (_, mine) = st.post("rpc/my_engines", &pro.token, json!({})).await;
    assert_eq!(
        (mine[0]["check_state"].clone(), mine[0]["runnable"].clone()),
        (json!("pending"), Value::Null)
    );

    let (s, b) = request_generation(&st, &pro, json!({"input": {"topic": "t"}})).await;
    assert_rest_error(s, &b, 409, "engine_check_pending");
    assert!(
        b["hint"]
            .as_str()
            .is_some_and(|h| h.contains("few seconds")),
        "{b}"
    );

    // A result for another version of the engine is dropped.
    let service = st.service_key.expose().to_owned();
    let (s, saved) = st
        .post(
            "rpc/engine_check_save",
            &service,
            json!({"engine_id": engine, "flow_hash": "stale", "runnable": true}),
        )
        .await;
    assert_eq!((s, saved), (200, json!(false)));
    // Users cannot write a check.
    let (s, _) = st
        .post(
            "rpc/engine_check_save",
            &admin.token,
            json!({"engine_id": engine, "flow_hash": "x", "runnable": true}),
        )
        .await;
    assert!(s == 401 || s == 403 || s == 404, "{s}");

    let rest = bookengine::rest::Rest::new(&st.supabase_config()).expect("rest");
    let n = bookengine::engines::check::run_pending(&rest, None)
        .await
        .expect("check round");
    assert_eq!(n, 1);
    let (s, b) = request_generation(&st, &pro, json!({"input": {"topic": "t"}})).await;
    assert_eq!((s, b["engine_id"].clone()), (200, json!(engine)), "{b}");

    // Changing only what the flow does not depend on keeps the check...
    patch_row(
        &st,
        &admin,
        engine,
        json!({"description": "new words", "active": true}),
    )
    .await;
    let state: String = st
        .pg
        .query_one(
            "SELECT state FROM engine_checks WHERE engine_id = $1",
            &[&engine],
        )
        .await
        .expect("check row")
        .get(0);
    assert_eq!(state, "runnable");
    // ...changing the flow asks for a new one.
    let mut flow = react_flow();
    flow["steps"][2]["configuration"]["prompt"] = json!("Edit: {{ steps.write.outputs }}");
    patch_row(&st, &admin, engine, json!({"flow_config": flow})).await;
    let (state, notes): (String, Value) = st
        .pg
        .query_one(
            "SELECT state, notes FROM engine_checks WHERE engine_id = $1",
            &[&engine],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("check row");
    assert_eq!((state.as_str(), notes), ("pending", json!([])));
}

#[tokio::test]
async fn for_each_is_read_as_a_template_path_or_a_step_path() {
    let app = crate::kit::app::spawn_app().await;
    let admin = app.stack.admin().await;
    let flow = |for_each: &str, extra: Option<Value>| {
        let mut steps = vec![
            step(
                "outline",
                json!({"provider": "openai", "model": "m", "prompt": "Plan.", "output": "json"}),
            ),
            step(
                "chapters",
                json!({"provider": "openai", "model": "m", "prompt": "Write {{ item.title }}.",
                                    "for_each": for_each}),
            ),
        ];
        steps.extend(extra);
        json!({"name": "Fan-out", "type": "full", "steps": steps})
    };
    for (given, note) in [
        ("outline.chapters", false),
        ("steps.outline.output.chapters", true),
        ("{{ steps.outline.output.chapters }}", true),
        ("{{outline.chapters}}", true),
    ] {
        let (s, e) = app
            .post("/v1/engines", &admin.token, flow(given, None))
            .await;
        assert_eq!(s, 201, "{given}: {e}");
        assert_eq!(
            e["flow_config"]["steps"][1]["configuration"]["for_each"], "outline.chapters",
            "{given}"
        );
        assert_eq!(e["check"]["state"], "runnable", "{given}: {e}");
        let noted = e["notes"].as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["from"] == given && n["to"] == "outline.chapters")
        });
        assert_eq!(noted, note, "{given}: {e}");
    }
    // The whole outline (an array) as `steps.<id>.output`.
    let (s, e) = app
        .post(
            "/v1/engines",
            &admin.token,
            flow("steps.outline.output", None),
        )
        .await;
    assert_eq!(
        (
            s,
            e["flow_config"]["steps"][1]["configuration"]["for_each"].clone()
        ),
        (201, json!("outline"))
    );
    // With a step called "steps", the template path has two readings: refused, both named.
    let other = step(
        "steps",
        json!({"provider": "openai", "model": "m", "prompt": "p", "output": "json"}),
    );
    let (s, e) = app
        .post(
            "/v1/engines",
            &admin.token,
            flow("steps.outline.output.chapters", Some(other)),
        )
        .await;
    assert_api_error(s, &e, 400, "invalid_flow");
    let issue = &e["error"]["details"]["issues"][0];
    assert_eq!(issue["path"], "steps[1].configuration.for_each");
    assert_eq!(issue["code"], "ambiguous_reference");
    let m = issue["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("the step \"steps\"") && m.contains("the step \"outline\""),
        "{m}"
    );
    // A camelCase deploy through the API is stored canonical and says how it was read.
    let mut doc = flow("outline.chapters", None);
    doc["steps"][0]["configuration"]["maxTokens"] = json!(300);
    let (s, e) = app.post("/v1/engines", &admin.token, doc).await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(
        e["flow_config"]["steps"][0]["configuration"]["max_tokens"],
        300
    );
    assert_eq!(
        e["notes"][0],
        json!({"path": "steps[0].configuration.maxTokens", "from": "maxTokens", "to": "max_tokens"})
    );
    // Listing shows every engine's check.
    let (_, all) = app.get("/v1/engines", &admin.token).await;
    assert!(
        all.as_array()
            .is_some_and(|a| a.len() == 6 && a.iter().all(|e| e["check"]["state"] == "runnable")),
        "{all}"
    );
}

#[tokio::test]
async fn assignment_type_is_accepted_when_it_agrees_and_refused_when_it_contradicts() {
    let app = crate::kit::app::spawn_app().await;
    let admin = app.stack.admin().await;
    let user = app.stack.user(Some("pro"), false).await;
    let engine = app.deploy_example(&admin).await;
    let (s, b) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": engine, "assignment_type": "tier", "tier": "pro"}),
        )
        .await;
    assert_eq!(
        (s, b["assignment_type"].clone(), b["tier"].clone()),
        (200, json!("tier"), json!("pro")),
        "{b}"
    );
    let (s, b) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": engine, "assignment_type": "user", "user_id": user.id}),
        )
        .await;
    assert_eq!(
        (s, b["assignment_type"].clone()),
        (200, json!("user")),
        "{b}"
    );
    for body in [
        json!({"engine_id": engine, "assignment_type": "user", "tier": "pro"}),
        json!({"engine_id": engine, "assignment_type": "tier", "user_id": user.id}),
        json!({"engine_id": engine, "assignment_type": "group", "tier": "pro"}),
    ] {
        let (s, b) = app
            .post("/v1/assignments", &admin.token, body.clone())
            .await;
        assert_eq!(
            (s, b["error"]["code"].clone()),
            (400, json!("invalid_assignment")),
            "{body}: {b}"
        );
        assert_eq!(b["error"]["details"]["path"], "assignment_type", "{b}");
    }
    let (s, b) = app
        .post(
            "/v1/assignments/bulk",
            &admin.token,
            json!({"engine_ids": [engine], "assignment_type": "user", "tiers": ["pro"]}),
        )
        .await;
    assert_api_error(s, &b, 400, "invalid_assignment");
    let (s, b) = app
        .post(
            "/v1/assignments/bulk",
            &admin.token,
            json!({"engine_ids": [engine], "assignment_type": "tier", "tiers": ["hobby", "enterprise"]}),
        )
        .await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(2)), "{b}");
}

/// `user` requests a generation through PostgREST, as supabase-js's rpc() does.
async fn request_generation(st: &Stack, user: &TestUser, body: Value) -> (u16, Value) {
    st.post("rpc/request_generation", &user.token, body).await
}

/// `admin` changes the engine's row through PostgREST.
async fn patch_row(st: &Stack, admin: &TestUser, engine: Uuid, body: Value) -> (u16, Value) {
    st.patch(&format!("ai_engines?id=eq.{engine}"), &admin.token, body)
        .await
}
