//! The JavaScript side of the tests: dependencies installed with `npm ci` from a
//! folder's lock file, and test suites run as child processes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// How long one suite may take before it is killed and the test fails.
pub const SUITE_TIMEOUT: Duration = Duration::from_secs(180);

/// `npm ci` for a folder with a package.json and a package-lock.json (e.g.
/// tests/seed-js), unless its node_modules already holds `package` at the locked
/// version; returns that node_modules. Installed in a scratch folder and moved into
/// place with one rename, so concurrent runs never see a half-written tree.
/// `install_scripts`: let packages run their install scripts (Deno's needs its own).
pub fn ensure_node_modules(dir: &Path, package: &str, install_scripts: bool) -> PathBuf {
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
    let mut npm = std::process::Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    if !install_scripts {
        npm.arg("--ignore-scripts");
    }
    let out = npm
        .current_dir(&scratch)
        // The browser tests use the system's Chromium; never download one.
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("npm could not run ({e}); install Node.js 20+ with npm"));
    assert!(
        out.status.success(),
        "npm ci in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A stale or broken tree goes aside first.
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

/// Run a suite's `cmd` in `dir` to completion (killed after [`SUITE_TIMEOUT`]); panics
/// with its output unless it succeeds, prints its output otherwise.
pub async fn run_suite(name: &str, dir: &Path, mut cmd: tokio::process::Command) -> Output {
    cmd.current_dir(dir)
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
