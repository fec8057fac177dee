//! The `bookengine` command line, run as a process against a stack.

use super::seed::TestUser;
use super::stack::Stack;
use serde_json::Value;
use std::process::Output;

pub struct Cli<'a> {
    pub stack: &'a Stack,
}

impl Cli<'_> {
    /// `bookengine <args>` as `user` (BOOKENGINE_TOKEN), or as no one, with only the
    /// stack's PostgREST URL and JWT secret (and PATH) in its environment.
    pub fn run(&self, user: Option<&TestUser>, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bookengine"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("POSTGREST_URL", &self.stack.rest_url)
            .env("SUPABASE_JWT_SECRET", self.stack.jwt_secret.expose())
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(u) = user {
            cmd.env("BOOKENGINE_TOKEN", &u.token);
        }
        cmd.output().expect("run bookengine")
    }

    /// `bookengine --json <args>` as `user`; panics unless it succeeds with JSON.
    pub fn json(&self, user: &TestUser, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(Some(user), &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}
