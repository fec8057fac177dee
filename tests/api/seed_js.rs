//! The seed's own React-side JavaScript (`EngineDeploymentService`, supabase-js inserts
//! and `rpc()` calls), unchanged in its logic, run with Node's test runner through the
//! real `@supabase/supabase-js` pinned by tests/seed-js/package-lock.json, against
//! this test's stack: PostgREST behind the local development gateway (SUPABASE_URL,
//! publishable key) and the service's worker answering every model offline.

use crate::kit::app::spawn_offline_app;
use crate::kit::node::{ensure_node_modules, run_suite};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_engine_service_deploys_assigns_and_gets_a_book_through_supabase_js() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let folder = repo.join("tests").join("seed-js");
    let install = folder.clone();
    tokio::task::spawn_blocking(move || {
        ensure_node_modules(&install, "@supabase/supabase-js", false)
    })
    .await
    .expect("npm install task");

    let app = spawn_offline_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;

    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "engine-deployment.test.js"])
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
        .env("NO_COLOR", "1");
    let out = run_suite("node --test tests/seed-js", &folder, cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(stdout.contains("# pass 6"), "{stdout}");

    // supabase-js reached PostgREST only through the gateway, as the people themselves.
    let stats = &app.stack.gateway.stats;
    assert!(bookengine::devstack::gateway::GatewayStats::get(&stats.user_jwt) >= 10);
}
