//! The JavaScript/TypeScript pieces under supabase/, run against the real service so
//! `cargo test` covers them: the browser/Node client's `node --test` suite
//! (supabase/client/) and the Edge Function's `deno test` suite (supabase/functions/,
//! with the Deno binary pinned by supabase/functions/package-lock.json).

use crate::kit::app::spawn_offline_app;
use crate::kit::http::JsonCalls;
use crate::kit::node::{ensure_node_modules, run_suite};
use serde_json::json;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_suite_passes() {
    let app = spawn_offline_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let hobby = app.stack.user(Some("hobby"), false).await;

    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "supabase/client/"])
        .env("BOOKENGINE_URL", &app.address)
        .env("ADMIN_TOKEN", &admin.token)
        .env("PRO_TOKEN", &pro.token)
        .env("HOBBY_TOKEN", &hobby.token)
        .env("PRO_USER_ID", pro.id.to_string())
        .env(
            "EXAMPLE_FLOW_PATH",
            repo().join("examples").join("book-flow.json"),
        )
        .env("NO_COLOR", "1");
    let out = run_suite("node --test supabase/client/", &repo(), cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("# fail 0"),
        "node reported failures:\n{stdout}"
    );
    assert!(
        !stdout.contains("# pass 0\n"),
        "node ran no test:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_function_suite_passes() {
    let deno = deno_binary().await;
    let app = spawn_offline_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    // The integration test requests a book without naming an engine: give pro one.
    let engine = app.deploy_example(&admin).await;
    let (status, body) = app
        .post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": engine, "tier": "pro"}),
        )
        .await;
    assert_eq!(status, 200, "assign the example engine to pro: {body}");

    let deno_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deno-dir");
    let mut cmd = tokio::process::Command::new(&deno);
    cmd.args([
        "test",
        "--no-remote",
        "--no-npm",
        "--no-lock",
        "--allow-net",
        "--allow-env",
        "--allow-read",
        "supabase/functions/",
    ])
    .env("BOOKENGINE_URL", &app.address)
    .env("PRO_TOKEN", &pro.token)
    .env("DENO_NO_UPDATE_CHECK", "1")
    .env("DENO_NO_PROMPT", "1")
    .env("DENO_DIR", deno_dir)
    .env("NO_COLOR", "1");
    let out = run_suite("deno test supabase/functions/", &repo(), cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(" 0 failed") && !stdout.contains("ok | 0 passed"),
        "deno ran no test or reported failures:\n{stdout}"
    );
}

/// The Deno binary pinned by supabase/functions/package-lock.json, installed with
/// `npm ci` when missing or stale. The install runs once per process and, across
/// processes, in a scratch folder moved into place with a rename, so concurrent
/// installers never see a half-written node_modules (as src/devstack/postgrest.rs does).
async fn deno_binary() -> PathBuf {
    static INSTALL: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    INSTALL
        .get_or_init(|| async {
            tokio::task::spawn_blocking(install_deno)
                .await
                .expect("install task")
        })
        .await
        .clone()
}

fn install_deno() -> PathBuf {
    let functions = repo().join("supabase").join("functions");
    // Deno's package fetches its binary in an install script.
    let bin = ensure_node_modules(&functions, "deno", true)
        .join(".bin")
        .join("deno");
    assert!(
        bin.exists(),
        "npm ci finished but {} is missing",
        bin.display()
    );
    bin
}
