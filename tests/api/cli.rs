//! The admin CLI, run as a process against a real stack.

use crate::kit::cli::Cli;
use crate::kit::stack::Stack;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_superadmin_workflow_from_the_command_line() {
    let stack = Stack::start().await;
    let admin = stack.admin().await;
    let pro = stack.user(Some("pro"), false).await;
    let hobby = stack.user(Some("hobby"), false).await;
    let chosen = stack.user(Some("hobby"), false).await;
    let cli = Cli { stack: &stack };

    let engine = cli.json(&admin, &["engines", "deploy", "examples/book-flow.json"]);
    let id = engine["id"].as_str().unwrap().to_owned();
    assert_eq!(engine["created_by"], json!(admin.id));

    let a = cli.json(
        &admin,
        &[
            "assign",
            "--engine",
            &id,
            "--tier",
            "pro",
            "--priority",
            "5",
        ],
    );
    assert_eq!(
        (a["tier"].clone(), a["priority"].clone()),
        (json!("pro"), json!(5))
    );
    let a = cli.json(
        &admin,
        &["assign", "--engine", &id, "--user", &chosen.id.to_string()],
    );
    assert_eq!(a["assignment_type"], "user");

    let r = cli.json(&pro, &["resolve"]);
    assert_eq!(r["id"], json!(id));
    let r = cli.json(&chosen, &["resolve"]);
    assert_eq!(r["assignment_type"], "user");

    // A hobby user has none: exit code 4 (not found) and the stable code.
    let out = cli.run(Some(&hobby), &["resolve"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_engine_assigned"));

    // Human-readable tables by default.
    let out = cli.run(Some(&admin), &["engines", "list"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Book engine") && table.contains("openai/gpt-4o-mini"),
        "{table}"
    );

    let list = cli.json(&admin, &["assignments", "list", "--engine", &id]);
    assert_eq!(list.as_array().map(Vec::len), Some(2));

    // Bulk from a file, all or nothing.
    let dir = std::env::temp_dir().join(format!("bookengine-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let bulk = dir.join("bulk.json");
    std::fs::write(
        &bulk,
        json!({"engine_ids": [id], "tiers": ["hobby", "enterprise"], "priority": 1}).to_string(),
    )
    .unwrap();
    let written = cli.json(&admin, &["assignments", "bulk", bulk.to_str().unwrap()]);
    assert_eq!(written.as_array().map(Vec::len), Some(2));
    let r = cli.json(&hobby, &["resolve"]);
    assert_eq!(r["id"], json!(id));

    let upd = cli.json(&admin, &["engines", "update", &id, "--active", "false"]);
    assert_eq!(upd["active"], false);

    // Errors scripts can rely on.
    let out = cli.run(
        Some(&pro),
        &["engines", "deploy", "examples/book-flow.json"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "non-admin deploy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission_denied"));
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"name\": 1").unwrap();
    let out = cli.run(Some(&admin), &["engines", "deploy", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_json"));
    let out = cli.run(None, &["engines", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BOOKENGINE_TOKEN"));
    let out = cli.run(Some(&admin), &["engines", "show", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad id");

    let out = cli.run(Some(&admin), &["engines", "delete", &id]);
    assert!(out.status.success());
    let out = cli.run(Some(&admin), &["engines", "show", &id]);
    assert_eq!(out.status.code(), Some(4));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn token_and_config_errors_are_one_clear_line() {
    let stack = Stack::start().await;
    let cli = Cli { stack: &stack };
    let user = uuid::Uuid::new_v4().to_string();
    let out = cli.run(None, &["token", "--user", &user, "--ttl", "15m"]);
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCAL DEVELOPMENT"));
    let out = cli.run(None, &["token", "--user", &user, "--ttl", "forever"]);
    assert_eq!(out.status.code(), Some(2));
    let out = cli.run(None, &["token", "--role", "authenticated"]);
    assert_eq!(out.status.code(), Some(2));

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"));
    let out = cmd
        .args(["resolve"])
        .env_clear()
        .env("BOOKENGINE_TOKEN", "x.y.z")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("POSTGREST_URL or SUPABASE_URL"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .args(["resolve"])
        .env_clear()
        .env("POSTGREST_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("POSTGREST_URL"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .args(["migrate", "--status"])
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
