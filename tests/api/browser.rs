//! The SuperAdmin page (/admin) in headless Chromium: tests/browser/admin.test.mjs
//! (node --test + playwright-core, pinned by tests/browser/package-lock.json) drives
//! the page against this test's own service, worker and stack.

use crate::kit::app::spawn_offline_app;
use crate::kit::node::ensure_node_modules;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

const CHROMIUM: &str = "/usr/bin/chromium";
const NODE_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tests/browser's dependencies (playwright-core at its locked version), when missing.
async fn install_browser_tests(dir: &Path) {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || ensure_node_modules(&dir, "playwright-core", false))
        .await
        .expect("npm ci task");
}

/// Read a child's pipe to the end in the background.
fn collect(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf).await;
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_in_headless_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the admin page test needs Chromium. Install it with \
         `apt-get install chromium` (as root); the test never downloads a browser."
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is missing: install Node.js 20+ and npm ({node:?})"
    );
    let browser_dir = repo().join("tests/browser");
    install_browser_tests(&browser_dir).await;

    let app = spawn_offline_app().await;
    let admin = app.stack.admin().await;
    let pro = app.stack.user(Some("pro"), false).await;
    let screenshots = repo().join("target/screenshots");

    // `node --test` with no file argument runs every *.test.mjs below the working
    // directory (node_modules excluded), on every Node version from 20 on.
    let mut child = tokio::process::Command::new("node")
        .arg("--test")
        .current_dir(&browser_dir)
        .env("BOOKENGINE_URL", &app.address)
        .env("ADMIN_TOKEN", &admin.token)
        .env("PRO_TOKEN", &pro.token)
        .env("EXAMPLE_FLOW_PATH", repo().join("examples/book-flow.json"))
        .env("SCREENSHOT_DIR", &screenshots)
        .env("CHROMIUM_PATH", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node --test");
    let pid = child.id();
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let status = tokio::time::timeout(NODE_TIMEOUT, child.wait()).await;
    if status.is_err() {
        // Node and the Chromium it started share the process group: end them all.
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = child.wait().await;
    }
    let output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout.await.unwrap_or_default(),
        stderr.await.unwrap_or_default()
    );
    match status {
        Err(_) => panic!(
            "node --test tests/browser/ did not finish within {}s\n{output}",
            NODE_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => panic!("waiting for node: {e}\n{output}"),
        Ok(Ok(s)) if !s.success() => panic!("the browser tests failed ({s})\n{output}"),
        Ok(Ok(_)) => println!("{output}\nscreenshots in {}", screenshots.display()),
    }
}

/// The job timeline shows a chapter's text as it is written (issue #14): the test
/// writes a running job's text rows (as the worker does) while Chromium watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_shows_text_as_it_is_written() {
    use crate::stream_deltas::{running_job, script, serve};
    use serde_json::Value;
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing");
    let browser_dir = repo().join("tests/browser");
    install_browser_tests(&browser_dir).await;
    let stack = crate::kit::stack::Stack::start().await;
    let app = serve(&stack, Default::default()).await;
    let (_owner, job, lease) = running_job(&stack, &app).await;
    let admin = stack.admin().await;
    let script = script(job, lease, 80);
    let finals = script.finals_json();
    let ready = std::env::temp_dir().join(format!("bookengine-live-{job}"));
    // The writer: once the page follows the job, two rows every 50 ms (about 10 s),
    // then the job ends.
    let writer = crate::stream_deltas::write_when_ready(
        &stack,
        job,
        script.rows.clone(),
        ready.clone(),
        Duration::from_millis(50),
    );
    let output = tokio::time::timeout(
        NODE_TIMEOUT,
        tokio::process::Command::new("node")
            .args(["--test", "live-text.check.mjs"])
            .current_dir(&browser_dir)
            .env("BOOKENGINE_URL", &app.address)
            .env("ADMIN_TOKEN", &admin.token)
            .env("JOB_ID", job.to_string())
            .env("FINALS", Value::Object(finals).to_string())
            .env("READY_FILE", &ready)
            .env("CHROMIUM_PATH", CHROMIUM)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser check ends in time")
    .expect("node runs");
    writer.abort();
    let _ = std::fs::remove_file(&ready);
    let text = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "live-text.check.mjs failed\n{text}"
    );
    println!("{text}");
}
