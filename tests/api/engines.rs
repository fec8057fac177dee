//! Issue: engine deployment through the HTTP API, with the caller's JWT.

use crate::kit::answers::assert_api_error;
use crate::kit::app::spawn_app;
use crate::kit::flows::example_flow;
use crate::kit::http::JsonCalls;
use reqwest::Method;
use serde_json::{json, Value};

fn issue<'a>(body: &'a Value, code: &str) -> Option<&'a Value> {
    body["error"]["details"]["issues"]
        .as_array()?
        .iter()
        .find(|i| i["code"] == code)
}

#[tokio::test]
async fn admin_deploys_the_example_flow_and_the_row_matches_the_conversion() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let (s, e) = app.post("/v1/engines", &admin.token, example_flow()).await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["name"], example_flow()["name"]);
    assert_eq!(e["created_by"], json!(admin.id));
    assert_eq!(e["active"], json!(true));
    assert_eq!(e["execution_mode"], example_flow()["execution_mode"]);
    assert_eq!(e["tier"], example_flow()["tier"]);
    let step_ids: Vec<&str> = e["flow_config"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(step_ids, ["outline", "chapters", "edit"]);
    assert_eq!(e["flow_config"]["type"], example_flow()["type"]);
    // models: the distinct provider/model pairs, with the steps using each.
    let models = e["models"].as_array().unwrap();
    let find = |p: &str| {
        models
            .iter()
            .find(|m| m["provider"] == p)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("openai")["steps"], json!(["outline"]));
    assert_eq!(find("openai")["fallback_for"], json!(["chapters"]));
    assert_eq!(find("anthropic")["steps"], json!(["chapters"]));
    assert_eq!(find("gemini")["steps"], json!(["edit"]));
    // The row in the database is the one returned.
    let (s, got) = app
        .get(
            &format!("/v1/engines/{}", e["id"].as_str().unwrap()),
            &admin.token,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(got["flow_config"], e["flow_config"]);
}

#[tokio::test]
async fn a_non_admin_cannot_deploy_update_or_delete() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let (s, b) = app.post("/v1/engines", &pro.token, example_flow()).await;
    assert_api_error(s, &b, 403, "permission_denied");
    let id = app.deploy_example(&admin).await;
    app.post(
        "/v1/assignments",
        &admin.token,
        json!({"engine_id": id, "tier": "pro"}),
    )
    .await;
    // The pro user can see it, so they get 403, not 404.
    let (s, b) = app
        .patch(
            &format!("/v1/engines/{id}"),
            &pro.token,
            json!({"name": "mine"}),
        )
        .await;
    assert_api_error(s, &b, 403, "permission_denied");
    let (s, b) = app.delete(&format!("/v1/engines/{id}"), &pro.token).await;
    assert_eq!(s, 403, "{b}");
    let (s, e) = app.get(&format!("/v1/engines/{id}"), &admin.token).await;
    assert_eq!(
        (s, e["name"].clone()),
        (200, example_flow()["name"].clone())
    );
}

#[tokio::test]
async fn readiness_lists_every_unconfigured_step() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let mut flow = example_flow();
    flow["steps"][1]["configuration"]
        .as_object_mut()
        .unwrap()
        .remove("model");
    flow["steps"][2]["configuration"]["prompt"] = json!("");
    let (s, b) = app.post("/v1/engines", &admin.token, flow).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "flow_not_ready");
    let issues = b["error"]["details"]["issues"].as_array().unwrap();
    let paths: Vec<&str> = issues.iter().map(|i| i["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"steps[1].configuration.model"), "{b}");
    assert!(paths.contains(&"steps[2].configuration.prompt"), "{b}");
    let readiness = b["error"]["details"]["readiness"].as_i64().unwrap();
    assert!(readiness < 100, "{b}");
}

#[tokio::test]
async fn validation_errors_have_a_code_and_the_path_of_the_bad_field() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation, &str, &str, &str)> = vec![
        (
            "duplicate id",
            |f| f["steps"][1]["id"] = json!("outline"),
            "invalid_flow",
            "duplicate_step_id",
            "steps[1].id",
        ),
        (
            "unknown dependency",
            |f| f["steps"][2]["configuration"]["depends_on"] = json!(["nope"]),
            "invalid_flow",
            "unknown_step",
            "steps[2].configuration.depends_on[0]",
        ),
        (
            "unknown provider",
            |f| f["steps"][0]["configuration"]["provider"] = json!("skynet"),
            "invalid_flow",
            "unknown_provider",
            "steps[0].configuration.provider",
        ),
        (
            "temperature out of range",
            |f| f["steps"][0]["configuration"]["temperature"] = json!(7),
            "invalid_flow",
            "out_of_range",
            "steps[0].configuration.temperature",
        ),
        (
            "for_each over text",
            |f| f["steps"][0]["configuration"]["output"] = json!("text"),
            "invalid_flow",
            "for_each_not_json",
            "steps[1].configuration.for_each",
        ),
        (
            "cycle",
            |f| f["steps"][0]["configuration"]["depends_on"] = json!(["edit"]),
            "invalid_flow",
            "cycle",
            "",
        ),
        (
            "api key in config",
            |f| {
                f["steps"][0]["configuration"]["api_key"] =
                    json!("sk-abcdefghijklmnopqrstuvwxyz123456")
            },
            "secret_in_flow",
            "",
            "steps[0].configuration.api_key",
        ),
    ];
    for (what, mutate, code, issue_code, path) in cases {
        let mut flow = example_flow();
        mutate(&mut flow);
        let (s, b) = app.post("/v1/engines", &admin.token, flow).await;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(b["error"]["code"], code, "{what}: {b}");
        let issues = b["error"]["details"]["issues"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !issue_code.is_empty() {
            let i = issue(&b, issue_code)
                .unwrap_or_else(|| panic!("{what}: no {issue_code} issue in {b}"));
            if !path.is_empty() {
                assert_eq!(i["path"], path, "{what}: {b}");
            }
        } else {
            assert!(
                issues.iter().any(|i| i["path"] == path),
                "{what}: no issue at {path}: {b}"
            );
        }
        // Secrets are never echoed back.
        assert!(
            !b.to_string().contains("sk-abcdefghijklmnop"),
            "{what}: secret echoed: {b}"
        );
    }
    let (s, _) = app.get("/v1/engines", &admin.token).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let (s, b) = app.call(Method::GET, "/v1/engines", None, None).await;
    assert_api_error(s, &b, 401, "missing_token");
    let (s, b) = app
        .call(Method::GET, "/v1/engines", Some("garbage"), None)
        .await;
    assert_api_error(s, &b, 401, "invalid_token");
    let (s, b) = app.get("/v1/engines/not-a-uuid", &admin.token).await;
    assert_api_error(s, &b, 400, "invalid_request");
    let resp = app
        .http
        .post(format!("{}/v1/engines", app.address))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_json");
    let (s, b) = app
        .patch(
            &format!("/v1/engines/{}", uuid::Uuid::new_v4()),
            &admin.token,
            json!({"name": "x"}),
        )
        .await;
    assert_api_error(s, &b, 404, "engine_not_found");
    let (s, b) = app
        .patch(
            &format!("/v1/engines/{}", uuid::Uuid::new_v4()),
            &admin.token,
            json!({"colour": "x"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = app
        .http
        .post(format!("{}/v1/engines", app.address))
        .bearer_auth(&admin.token)
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{big}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
}

#[tokio::test]
async fn update_redeploy_deactivate_and_delete() {
    let app = spawn_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let id = app.deploy_example(&admin).await;
    let (s, a) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": id, "tier": "pro"}),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let (s, e) = app
        .patch(
            &format!("/v1/engines/{id}"),
            &admin.token,
            json!({"name": "Renamed", "description": null}),
        )
        .await;
    assert_eq!(
        (s, e["name"].clone(), e["description"].clone()),
        (200, json!("Renamed"), Value::Null),
        "{e}"
    );
    let mut flow = example_flow();
    flow["steps"][0]["configuration"]["model"] = json!("gpt-4.1-mini");
    let (s, e) = app
        .patch(
            &format!("/v1/engines/{id}"),
            &admin.token,
            json!({"flow": flow}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(
        e["flow_config"]["steps"][0]["configuration"]["model"],
        "gpt-4.1-mini"
    );
    // Deactivated: still listed for the admin, no longer resolved for users.
    let (s, _) = app
        .patch(
            &format!("/v1/engines/{id}"),
            &admin.token,
            json!({"active": false}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, b) = app.get("/v1/me/engine", &pro.token).await;
    assert_api_error(s, &b, 404, "no_engine_assigned");
    let (s, _) = app.delete(&format!("/v1/engines/{id}"), &admin.token).await;
    assert_eq!(s, 204);
    let (s, _) = app.get(&format!("/v1/engines/{id}"), &admin.token).await;
    assert_eq!(s, 404);
    let (_, list) = app.get("/v1/assignments", &admin.token).await;
    assert_eq!(list, json!([]), "assignments are removed with their engine");
}
