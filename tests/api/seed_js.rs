//! The seed's own React-side JavaScript (`EngineDeploymentService`, supabase-js inserts
//! and `rpc()` calls), unchanged in its logic, run with Node's test runner through the
//! real `@supabase/supabase-js` pinned by tests/seed-js/package-lock.json, against
//! this test's stack: PostgREST behind the local development gateway (SUPABASE_URL,
//! publishable key) and the service's worker answering every model offline.

use crate::js_clients::ensure_node_modules;
use crate::kit::app::spawn_app_with;
use bookengine::providers::ProvidersConfig;
use bookengine::worker::WorkerConfig;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

const SUITE_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_engine_service_deploys_assigns_and_gets_a_book_through_supabase_js() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let folder = repo.join("tests").join("seed-js");
    let install = folder.clone();
    tokio::task::spawn_blocking(move || ensure_node_modules(&install, "@supabase/supabase-js"))
        .await
        .expect("npm install task");

    let providers = ProvidersConfig {
        offline_fallback: true,
        provider_concurrency: 8,
        openai_base_url: String::new(),
        anthropic_base_url: String::new(),
        gemini_base_url: String::new(),
        ..Default::default()
    };
    let worker = WorkerConfig {
        poll_interval_ms: 200,
        ..Default::default()
    };
    let app = spawn_app_with(Some((worker, providers))).await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;

    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "engine-deployment.test.js"])
        .current_dir(&folder)
        .env("SUPABASE_URL", &app.stack.supabase_url)
        .env(
            "SUPABASE_PUBLISHABLE_KEY",
            app.stack.publishable_key.expose(),
        )
        .env("ADMIN_TOKEN", &admin.token)
        .env("ADMIN_USER_ID", admin.id.to_string())
        .env("PRO_TOKEN", &pro.token)
        .env("PRO_USER_ID", pro.id.to_string())
        .env(
            "EXAMPLE_FLOW_PATH",
            repo.join("examples").join("book-flow.json"),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("node could not start (install Node.js 20+)");
    let out = tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output())
        .await
        .expect("the seed-js suite is still running; killed")
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("# fail 0"),
        "node --test tests/seed-js failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("# pass 6"), "{stdout}");

    // supabase-js reached PostgREST only through the gateway, as the people themselves.
    let stats = &app.stack.gateway.stats;
    assert!(bookengine::devstack::gateway::GatewayStats::get(&stats.user_jwt) >= 10);
}
