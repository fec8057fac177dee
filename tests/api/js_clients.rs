//! The JavaScript/TypeScript pieces under supabase/, run against the real service so
//! `cargo test` covers them: the browser/Node client's `node --test` suite
//! (supabase/client/) and the Edge Function's `deno test` suite (supabase/functions/,
//! with the Deno binary pinned by supabase/functions/package-lock.json).

use crate::kit::app::{spawn_app_with, TestApp};
use bookengine::providers::ProvidersConfig;
use bookengine::worker::WorkerConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// How long one suite may take before it is killed and the test fails.
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The service with an in-process worker answering every model with the offline provider.
async fn offline_app() -> TestApp {
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
    spawn_app_with(Some((worker, providers))).await
}

/// Run `cmd` to completion (killed after SUITE_TIMEOUT); panics with its output unless it succeeds.
async fn run_suite(name: &str, mut cmd: tokio::process::Command) -> Output {
    cmd.current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
    let output = match tokio::time::timeout(SUITE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("{name}: waiting for the suite failed: {e}"),
        Err(_) => panic!("{name}: still running after {SUITE_TIMEOUT:?}; killed"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    println!("{name}:\n{stdout}");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_suite_passes() {
    let app = offline_app().await;
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
    let out = run_suite("node --test supabase/client/", cmd).await;
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
    let app = offline_app().await;
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
    let out = run_suite("deno test supabase/functions/", cmd).await;
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

fn pinned_deno_version(functions: &Path) -> String {
    let text = std::fs::read_to_string(functions.join("package.json"))
        .expect("read supabase/functions/package.json");
    let doc: Value = serde_json::from_str(&text).expect("package.json is JSON");
    doc["devDependencies"]["deno"]
        .as_str()
        .expect("package.json pins devDependencies.deno")
        .to_owned()
}

fn installed_deno_version(node_modules: &Path) -> Option<String> {
    let text = std::fs::read_to_string(node_modules.join("deno").join("package.json")).ok()?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    doc["version"].as_str().map(str::to_owned)
}

fn install_deno() -> PathBuf {
    let functions = repo().join("supabase").join("functions");
    let node_modules = functions.join("node_modules");
    let bin = node_modules.join(".bin").join("deno");
    let pinned = pinned_deno_version(&functions);
    if bin.exists() && installed_deno_version(&node_modules).as_deref() == Some(pinned.as_str()) {
        return bin;
    }

    let scratch =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deno-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("create the scratch install folder");
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(functions.join(file), scratch.join(file))
            .unwrap_or_else(|e| panic!("copy supabase/functions/{file}: {e}"));
    }
    eprintln!("installing the pinned Deno {pinned} with npm ci (supabase/functions) ...");
    let out = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("npm could not run ({e}); install Node.js with npm"));
    assert!(
        out.status.success(),
        "npm ci for supabase/functions failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A stale tree goes aside first; then the new one moves in with one rename.
    if node_modules.exists() {
        let old = scratch.join("stale_node_modules");
        let _ = std::fs::rename(&node_modules, &old);
    }
    match std::fs::rename(scratch.join("node_modules"), &node_modules) {
        Ok(()) => {}
        // Another process finished first; theirs is as good as ours.
        Err(_) if installed_deno_version(&node_modules).as_deref() == Some(pinned.as_str()) => {}
        // e.g. the target directory is on another file system: install in place.
        Err(e) => {
            eprintln!("moving node_modules failed ({e}); running npm ci in place");
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&functions)
                .stdin(Stdio::null())
                .output()
                .expect("npm ci in supabase/functions");
            assert!(
                out.status.success(),
                "npm ci in supabase/functions failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        bin.exists(),
        "npm ci finished but {} is missing",
        bin.display()
    );
    bin
}

/// `npm ci` for a test folder with a package.json and a package-lock.json (e.g.
/// tests/seed-js), unless its node_modules already holds `package` at the locked
/// version. As for Deno: installed in a scratch folder and moved into place with one
/// rename, so concurrent runs never see a half-written tree.
pub fn ensure_node_modules(dir: &Path, package: &str) -> PathBuf {
    let node_modules = dir.join("node_modules");
    let locked = |lock: &Path| -> Option<String> {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(lock).ok()?).ok()?;
        doc["packages"][format!("node_modules/{package}")]["version"]
            .as_str()
            .map(str::to_owned)
    };
    let wanted = locked(&dir.join("package-lock.json")).unwrap_or_else(|| {
        panic!(
            "{}/package-lock.json does not lock {package}",
            dir.display()
        )
    });
    let current = || {
        let text = std::fs::read_to_string(node_modules.join(package).join("package.json")).ok()?;
        let doc: Value = serde_json::from_str(&text).ok()?;
        doc["version"].as_str().map(str::to_owned)
    };
    if current().as_deref() == Some(wanted.as_str()) {
        return node_modules;
    }
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "npm-install-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&scratch).expect("create the scratch install folder");
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(dir.join(file), scratch.join(file))
            .unwrap_or_else(|e| panic!("copy {}/{file}: {e}", dir.display()));
    }
    eprintln!(
        "installing {package} {wanted} with npm ci ({}) ...",
        dir.display()
    );
    let out = std::process::Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .current_dir(&scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("npm could not run ({e}); install Node.js with npm"));
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if node_modules.exists() {
        let _ = std::fs::rename(&node_modules, scratch.join("stale_node_modules"));
    }
    // Losing the race to another run is fine: its tree is just as good. (The target
    // directory on another file system: copy with `cp -a` instead.)
    if std::fs::rename(scratch.join("node_modules"), &node_modules).is_err()
        && current().as_deref() != Some(wanted.as_str())
    {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(scratch.join("node_modules"))
            .arg(dir)
            .status()
            .expect("cp node_modules");
        assert!(
            status.success(),
            "could not move node_modules into {}",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(
        current().as_deref(),
        Some(wanted.as_str()),
        "npm ci finished but {package} {wanted} is not in {}",
        node_modules.display()
    );
    node_modules
}
