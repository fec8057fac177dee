//! Engines with a history (issue #17): versions written whatever the client,
//! rollback, jobs naming their version, and a gradual rollout decided in SQL.

use crate::kit::answers::assert_api_error;
use crate::kit::app::{app_with_mocks, spawn_app, TestApp};
use crate::kit::cli::Cli;
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{finished, generate, start_book, wait_until};
use crate::kit::mock_llm::Fault;
use crate::kit::seed::TestUser;
use crate::kit::stack::Stack;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

/// A one-step flow document whose only step uses `provider`/`model`.
fn flow(provider: &str, model: &str, temperature: f64) -> Value {
    json!({"name": "Versioned", "type": "full", "execution_mode": "sequential", "tier": "pro",
        "steps": [{"id": "write", "name": "Write", "configuration": {
            "provider": provider, "model": model, "temperature": temperature,
            "prompt": "Write a short book about {{ input.topic }}."}}]})
}

fn numbers(h: &Value) -> Vec<i64> {
    h["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["version"].as_i64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_change_through_any_client_writes_exactly_one_version() {
    let app = spawn_app().await;
    let as_admin = EngineAsAdmin::deploy(&app).await;
    let (st, admin, engine) = (&app.stack, &as_admin.admin, as_admin.id);
    let pro = st.user(Some("pro"), false).await;
    let cli = Cli { stack: st };
    let h = as_admin.history().await;
    assert_eq!(numbers(&h), vec![1]);
    assert_eq!(h["versions"][0]["origin"], "deploy");
    assert_eq!(h["versions"][0]["current"], true);
    assert_eq!(h["versions"][0]["created_by"], json!(admin.id));
    assert_eq!(h["versions"][0]["check_state"], "runnable", "{h}");
    assert_eq!(h["current_version"], 1);

    // Unrelated changes: name, description, active, tier.
    for patch in [
        json!({"name": "Renamed"}),
        json!({"description": "new words"}),
        json!({"active": false}),
        json!({"active": true}),
        json!({"tier": "enterprise"}),
    ] {
        let (s, b) = as_admin.patch(patch).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, _) = as_admin
        .patch_row(json!({"name": "Renamed through PostgREST", "active": true}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(as_admin.stored_versions().await, 1);

    // The API's redeploy.
    let (s, b) = as_admin
        .patch(json!({"flow": flow("openai", "gpt-4o-mini", 0.9)}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(as_admin.stored_versions().await, 2);

    // supabase-js's updateEngine: a PATCH of ai_engines straight through PostgREST.
    let mut cfg = b["flow_config"].clone();
    cfg["steps"][0]["configuration"]["model"] = json!("gpt-4.1-mini");
    let (s, b) = as_admin
        .patch_row(json!({"flow_config": cfg, "execution_mode": "parallel"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(as_admin.stored_versions().await, 3);
    // models alone is one of the three columns too.
    let (s, _) = as_admin
        .patch_row(json!({"models": [{"provider": "openai", "model": "gpt-4.1-mini"}]}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(as_admin.stored_versions().await, 4);

    // The CLI.
    let file = std::env::temp_dir().join(format!("versions-{}.json", Uuid::new_v4()));
    std::fs::write(
        &file,
        flow("anthropic", "claude-3-5-haiku-latest", 0.9).to_string(),
    )
    .expect("write flow");
    let path = file.to_string_lossy().into_owned();
    cli.json(
        admin,
        &["engines", "update", &engine.to_string(), "--flow", &path],
    );
    let _ = std::fs::remove_file(&file);
    let h = as_admin.history().await;
    assert_eq!(numbers(&h), vec![5, 4, 3, 2, 1]);
    let origins: Vec<&str> = h["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["origin"].as_str())
        .collect();
    assert_eq!(origins, ["update", "update", "update", "update", "deploy"]);
    assert_eq!(h["current_version"], 5);

    // The diff names the step and the fields, old → new.
    let (s, d) = as_admin.get("/versions/1/diff/5").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["added"], json!([]));
    assert_eq!(d["removed"], json!([]));
    assert_eq!(d["changed"][0]["id"], "write");
    let fields: BTreeMap<String, (Value, Value)> = d["changed"][0]["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["field"].as_str().unwrap_or("").to_owned(),
                (f["from"].clone(), f["to"].clone()),
            )
        })
        .collect();
    assert_eq!(
        fields.get("configuration.provider"),
        Some(&(json!("openai"), json!("anthropic"))),
        "{d}"
    );
    assert_eq!(
        fields.get("configuration.temperature"),
        Some(&(json!(0.5), json!(0.9)))
    );
    let (s, q) = as_admin.get("/diff?from=1&to=5").await;
    assert_eq!((s, &q), (200, &d));
    let out = cli.json(admin, &["engines", "diff", &engine.to_string(), "2", "3"]);
    assert!(out["flow"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f["field"] == "execution_mode" && f["to"] == "parallel"));

    // Rollback: version 1's flow, current as version 6.
    let (s, v) = as_admin
        .post(
            "/rollback",
            json!({"version": 1, "note": "the new model writes worse books"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["version"].clone(),
            v["origin"].clone(),
            v["restored_from"].clone()
        ),
        (json!(6), json!("rollback"), json!(1))
    );
    assert_eq!(v["note"], "the new model writes worse books");
    let (_, e) = as_admin.get("").await;
    let (_, one) = as_admin.get("/versions/1").await;
    assert_eq!(e["flow_config"], one["flow_config"]);
    assert_eq!(e["execution_mode"], one["execution_mode"]);
    let (s, b) = as_admin.post("/rollback", json!({"version": 1})).await;
    assert_api_error(s, &b, 409, "version_is_current");
    let (s, b) = as_admin.post("/rollback", json!({"version": 99})).await;
    assert_api_error(s, &b, 404, "version_not_found");
    // The CLI's rollback is the same function.
    let out = cli.json(
        admin,
        &[
            "engines",
            "rollback",
            &engine.to_string(),
            "2",
            "--note",
            "cli",
        ],
    );
    assert_eq!(
        (out["version"].clone(), out["restored_from"].clone()),
        (json!(7), json!(2))
    );
    assert_eq!(as_admin.stored_versions().await, 7);

    // Append-only: an admin can neither change nor delete a version.
    let (s, b) = st
        .patch(
            &format!("engine_versions?engine_id=eq.{engine}&version=eq.1"),
            &admin.token,
            json!({"note": "rewritten"}),
        )
        .await;
    assert!(matches!(s, 401 | 403), "{s} {b}");
    let (s, b) = st
        .delete(
            &format!("engine_versions?engine_id=eq.{engine}"),
            &admin.token,
        )
        .await;
    assert!(matches!(s, 401 | 403), "{s} {b}");
    assert_eq!(as_admin.stored_versions().await, 7);
    // Not even the service role rewrites what a version is.
    let err = st
        .pg
        .execute(
            "UPDATE public.engine_versions SET flow_config = '{}' WHERE engine_id = $1",
            &[&engine],
        )
        .await;
    assert!(err.is_err(), "a version's flow was rewritten");

    // Users see no versions (RLS), and the API says why.
    let (s, b) = st
        .get(
            &format!("engine_versions?engine_id=eq.{engine}"),
            &pro.token,
        )
        .await;
    assert_eq!((s, b), (200, json!([])));
    let (s, b) = app
        .get(&format!("/v1/engines/{engine}/versions"), &pro.token)
        .await;
    assert_api_error(s, &b, 403, "permission_denied");
    let (s, b) = app
        .post(
            &format!("/v1/engines/{engine}/rollback"),
            &pro.token,
            json!({"version": 1}),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    let (s, b) = as_admin.get("/versions/abc").await;
    assert_api_error(s, &b, 400, "invalid_request");
    let (s, _) = app
        .get(
            &format!("/v1/engines/{}/versions", Uuid::new_v4()),
            &admin.token,
        )
        .await;
    assert_eq!(s, 404);
}

/// A book's JSON without the mocks' "[call N] " marks (a streamed answer carries the
/// number of the call that wrote it, which differs between two runs of one flow).
fn unnumbered(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("[call ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "[call ".len()..];
        let digits = after.chars().take_while(|c| c.is_ascii_digit()).count();
        match after[digits..].strip_prefix("] ") {
            Some(tail) if digits > 0 => rest = tail,
            _ => {
                out.push_str("[call ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_change_fails_books_and_a_rollback_restores_them() {
    let (app, mocks) = app_with_mocks().await;
    let as_admin = EngineAsAdmin::deploy(&app).await;
    let (admin, engine) = (&as_admin.admin, as_admin.id);
    let pro = app.stack.user(Some("pro"), false).await;
    app.assign_tier(admin, engine, "pro").await;
    // The bad change: a provider that refuses every call.
    mocks.anthropic.always(Some(Fault::Status(400)));

    let before = generate(&app, &pro, "lighthouses", Duration::from_secs(30)).await;
    assert_eq!(before["status"], "succeeded", "{before}");
    assert_eq!(before["engine_version"], 1);

    let (s, b) = as_admin
        .patch(json!({"flow": flow("anthropic", "claude-3-5-haiku-latest", 0.5)}))
        .await;
    assert_eq!(s, 200, "{b}");
    let bad = generate(&app, &pro, "lighthouses", Duration::from_secs(30)).await;
    assert_eq!(bad["status"], "failed", "{bad}");
    assert_eq!(bad["engine_version"], 2);

    let (s, v) = as_admin.post("/rollback", json!({"version": 1})).await;
    assert_eq!(s, 201, "{v}");
    let after = generate(&app, &pro, "lighthouses", Duration::from_secs(30)).await;
    assert_eq!(after["status"], "succeeded", "{after}");
    assert_eq!(after["engine_version"], 3);
    assert_eq!(
        unnumbered(&after["result"]),
        unnumbered(&before["result"]),
        "the rollback wrote another book"
    );

    // A job in flight keeps its snapshot and version when the engine changes under it.
    mocks.openai.latency(Duration::from_millis(1500));
    let id = start_book(&app, &pro, "lighthouses").await;
    wait_until(&app, &pro.token, &id, Duration::from_secs(10), |j| {
        j["status"] != "queued"
    })
    .await;
    let (s, b) = as_admin
        .patch(json!({"flow": flow("anthropic", "claude-3-5-haiku-latest", 0.7)}))
        .await;
    assert_eq!(s, 200, "{b}");
    let inflight = wait_until(&app, &pro.token, &id, Duration::from_secs(30), finished).await;
    assert_eq!(inflight["status"], "succeeded", "{inflight}");
    assert_eq!(inflight["engine_version"], 3);
    assert_eq!(inflight["steps"][0]["provider"], "openai", "{inflight}");
    mocks.openai.latency(Duration::ZERO);

    // The numbers per version say which one failed.
    let h = as_admin.history().await;
    let stats: BTreeMap<i64, Value> = h["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["version"].as_i64()?, v["stats"].clone())))
        .collect();
    assert_eq!(stats[&1]["jobs"], 1);
    assert_eq!(stats[&1]["succeeded_share"], 1.0);
    assert_eq!(stats[&2]["failed_share"], 1.0, "{h}");
    assert_eq!(stats[&3]["jobs"], 2);
    assert!(stats[&3]["median_wall_ms"].as_f64().is_some(), "{h}");
    assert!(
        stats[&3]["tokens_per_job"].as_f64().unwrap_or(0.0) > 0.0,
        "{h}"
    );
    assert_eq!(stats[&4]["jobs"], 0);
}

/// resolve_engine() as each synthetic user, in one round trip: user → (version, rollout).
async fn resolve_all_in_sql(st: &Stack) -> BTreeMap<Uuid, (i32, bool)> {
    st.pg
        .batch_execute(
            "DROP TABLE IF EXISTS pg_temp.probe;
             CREATE TEMP TABLE probe (user_id uuid, version integer, rollout boolean);
             DO $$
             DECLARE u uuid; c public.engine_choice;
             BEGIN
               FOR u IN SELECT id FROM auth.users WHERE email LIKE 'synthetic-%' LOOP
                 PERFORM set_config('request.jwt.claims',
                                    json_build_object('sub', u, 'role', 'authenticated')::text, true);
                 c := public.resolve_engine();
                 INSERT INTO probe VALUES (u, c.version, c.rollout);
               END LOOP;
             END $$;",
        )
        .await
        .expect("resolve as every user");
    st.pg
        .query("SELECT user_id, version, rollout FROM probe", &[])
        .await
        .expect("probe")
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

fn on_candidate(all: &BTreeMap<Uuid, (i32, bool)>) -> BTreeSet<Uuid> {
    all.iter()
        .filter(|(_, (_, rollout))| *rollout)
        .map(|(u, _)| *u)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_percent_rollout_over_ten_thousand_users() {
    let app = spawn_app().await;
    let as_admin = EngineAsAdmin::deploy(&app).await;
    let (st, admin, engine) = (&app.stack, &as_admin.admin, as_admin.id);
    app.assign_tier(admin, engine, "pro").await;
    st.pg
        .batch_execute(
            "INSERT INTO auth.users (id, email)
               SELECT gen_random_uuid(), 'synthetic-' || g || '@example.test' FROM generate_series(1, 10000) g;
             INSERT INTO public.user_credits (user_id, tier)
               SELECT id, 'pro' FROM auth.users WHERE email LIKE 'synthetic-%';",
        )
        .await
        .expect("seed users");

    // A candidate: proposed, checked, not current.
    let (s, v) = as_admin.post("/versions", json!({"flow": flow("anthropic", "claude-3-5-haiku-latest", 0.5), "note": "try Claude"}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (
            v["version"].clone(),
            v["origin"].clone(),
            v["check_state"].clone(),
            v["current"].clone()
        ),
        (json!(2), json!("proposal"), json!("runnable"), json!(false))
    );
    let before = resolve_all_in_sql(st).await;
    assert_eq!(before.len(), 10_000);
    assert!(before.values().all(|(v, r)| *v == 1 && !r));

    let (s, r) = as_admin
        .post("/rollout", json!({"version": 2, "percent": 10}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["rollout"]["version"], 2);
    assert_eq!(r["rollout"]["percent"], 10.0);
    let first = resolve_all_in_sql(st).await;
    let chosen = on_candidate(&first);
    assert!(
        (8_500..=11_500).contains(&(chosen.len() * 10)),
        "{} of 10000 on the candidate",
        chosen.len()
    );
    assert!(first
        .iter()
        .all(|(u, (v, _))| *v == if chosen.contains(u) { 2 } else { 1 }));
    // The same users on every call.
    assert_eq!(on_candidate(&resolve_all_in_sql(st).await), chosen);

    // PostgREST's resolve_engine and the service's /v1/me/engine agree with the SQL for
    // a sample of users from both sides (10k HTTP round trips each would prove the same
    // function again, slowly: the SQL above ran resolve_engine as every one of them).
    let sample: Vec<Uuid> = chosen
        .iter()
        .take(100)
        .chain(first.keys().filter(|u| !chosen.contains(u)).take(200))
        .copied()
        .collect();
    for u in &sample {
        let token = st.token_for(*u);
        let (s, direct) = st.post("rpc/resolve_engine", &token, json!({})).await;
        assert_eq!(s, 200, "{direct}");
        let (s, service) = app.get("/v1/me/engine", &token).await;
        assert_eq!(s, 200, "{service}");
        let expected = first[u].0;
        assert_eq!(direct["version"], expected, "PostgREST for {u}");
        assert_eq!(service["version"], expected, "the service for {u}");
        assert_eq!(direct["flow_config"], service["flow_config"]);
    }
    // A candidate user's job runs the candidate, snapshot and version.
    let lucky = *chosen.iter().next().expect("a candidate user");
    let (s, job) = app
        .post(
            "/v1/generations",
            &st.token_for(lucky),
            json!({"input": {"topic": "owls"}}),
        )
        .await;
    assert_eq!((s, job["engine_version"].clone()), (202, json!(2)), "{job}");
    let snapshot: Value = st
        .pg
        .query_one(
            "SELECT engine_snapshot FROM public.generation_jobs WHERE engine_version = 2",
            &[],
        )
        .await
        .expect("job")
        .get(0);
    assert_eq!(
        snapshot["flow_config"]["steps"][0]["configuration"]["provider"],
        "anthropic"
    );

    // Growing the share only moves users onto the candidate.
    let (s, r) = as_admin
        .post("/rollout", json!({"version": 2, "percent": 30}))
        .await;
    assert_eq!(s, 200, "{r}");
    let wider = on_candidate(&resolve_all_in_sql(st).await);
    assert!(chosen.is_subset(&wider));
    assert!((2_700..=3_300).contains(&wider.len()), "{}", wider.len());

    // Abort: nobody on the candidate.
    let (s, r) = as_admin.post("/rollout/abort", json!({})).await;
    assert_eq!((s, r["rollout"].clone()), (200, Value::Null), "{r}");
    let after = resolve_all_in_sql(st).await;
    assert!(after.values().all(|(v, r)| *v == 1 && !r));
    let (s, b) = as_admin.post("/rollout/abort", json!({})).await;
    assert_api_error(s, &b, 409, "no_rollout");

    // A candidate the service finds broken is refused; one not yet checked (proposed
    // through supabase-js's rpc() with no checker running) is handed to nobody.
    let broken = json!({"steps": [{"id": "w", "configuration": {"provider": "nope", "model": "m", "prompt": "p"}}]});
    let (s, p) = st
        .post(
            "rpc/engine_version_propose",
            &admin.token,
            json!({"engine_id": engine, "flow_config": broken}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["version"].clone(), p["check_state"].clone()),
        (json!(3), json!("pending"))
    );
    let (s, r) = st
        .post(
            "rpc/engine_rollout_start",
            &admin.token,
            json!({"engine_id": engine, "version": 3, "percent": 100}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let pending = resolve_all_in_sql(st).await;
    assert!(pending.values().all(|(v, r)| *v == 1 && !r));
    let (s, b) = as_admin
        .post("/rollout", json!({"version": 3, "percent": 100}))
        .await;
    assert_api_error(s, &b, 400, "version_not_runnable");
    let (s, b) = as_admin.post("/rollout/promote", json!({})).await;
    assert_api_error(s, &b, 400, "version_not_runnable");
    let (s, _) = as_admin.post("/rollout/abort", json!({})).await;
    assert_eq!(s, 200);

    // Promote: the candidate becomes current under its own number, for everyone.
    let (s, r) = as_admin
        .post("/rollout", json!({"version": 2, "percent": 10}))
        .await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = as_admin.post("/rollout/promote", json!({})).await;
    assert_eq!(
        (s, r["current_version"].clone(), r["rollout"].clone()),
        (200, json!(2), Value::Null),
        "{r}"
    );
    let (_, e) = as_admin.get("").await;
    assert_eq!(
        e["flow_config"]["steps"][0]["configuration"]["provider"],
        "anthropic"
    );
    assert_eq!(as_admin.stored_versions().await, 3);
    // The engine changed, so it is checked again before anyone resolves it (the API
    // checked it while answering).
    let promoted = resolve_all_in_sql(st).await;
    assert!(promoted.values().all(|(v, r)| *v == 2 && !r));
    let (s, state) = as_admin.get("/rollout").await;
    assert_eq!((s, state["current_version"].clone()), (200, json!(2)));
}

/// An admin's calls to the engine they deployed: its API routes
/// (`/v1/engines/<id><route>`), its row through PostgREST, and its versions.
struct EngineAsAdmin<'a> {
    app: &'a TestApp,
    admin: TestUser,
    id: Uuid,
}

impl<'a> EngineAsAdmin<'a> {
    /// A new admin deploys the one-step openai flow: version 1.
    async fn deploy(app: &'a TestApp) -> Self {
        let admin = app.stack.admin().await;
        let id = app.deploy(&admin, flow("openai", "gpt-4o-mini", 0.5)).await;
        EngineAsAdmin { app, admin, id }
    }

    async fn get(&self, route: &str) -> (u16, Value) {
        let path = format!("/v1/engines/{}{route}", self.id);
        self.app.get(&path, &self.admin.token).await
    }

    async fn post(&self, route: &str, body: Value) -> (u16, Value) {
        let path = format!("/v1/engines/{}{route}", self.id);
        self.app.post(&path, &self.admin.token, body).await
    }

    /// The API's PATCH of the engine.
    async fn patch(&self, body: Value) -> (u16, Value) {
        let path = format!("/v1/engines/{}", self.id);
        self.app.patch(&path, &self.admin.token, body).await
    }

    /// A PATCH of its ai_engines row straight through PostgREST (supabase-js's way).
    async fn patch_row(&self, body: Value) -> (u16, Value) {
        let path = format!("ai_engines?id=eq.{}", self.id);
        self.app.stack.patch(&path, &self.admin.token, body).await
    }

    /// The engine's history as the API returns it.
    async fn history(&self) -> Value {
        let (s, b) = self.get("/versions").await;
        assert_eq!(s, 200, "{b}");
        b
    }

    /// The rows of engine_versions, read past RLS.
    async fn stored_versions(&self) -> i64 {
        self.app
            .stack
            .count(
                "SELECT count(*) FROM public.engine_versions WHERE engine_id = $1",
                &[&self.id],
            )
            .await
    }
}
