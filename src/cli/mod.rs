//! The `bookengine` command line: admin commands over the same library the HTTP
//! API uses, plus the local stack, migrations and the long-running processes.

mod admin;
mod demo;
mod doctor;
mod foundation;
mod live_text;
#[cfg(feature = "local-model")]
mod models;
mod serve;

use crate::error::Error;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bookengine",
    version,
    about = "Engine workflow service for a Supabase book-generation app: flows -> engines -> assignments -> generation",
    propagate_version = true
)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub log: crate::telemetry::LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply the migrations in sql/ to DATABASE_URL (a no-op when up to date).
    Migrate(foundation::MigrateArgs),
    /// The whole workflow on the local stack: deploy, assign, generate a book, report.
    Demo(demo::DemoArgs),
    /// Run a local Supabase-shaped stack (Postgres + PostgREST 12) for development.
    Local(foundation::LocalArgs),
    /// Mint a LOCAL DEVELOPMENT JWT signed with SUPABASE_JWT_SECRET.
    Token(foundation::TokenArgs),
    /// Serve the HTTP API (and, unless --no-worker, run the generation worker).
    Serve(serve::ServeArgs),
    /// Run only the generation worker (scale these horizontally).
    Worker(serve::WorkerArgs),
    /// Deploy, list, show, update and delete engines.
    Engines(admin::EnginesArgs),
    /// Assign an engine to a tier or a user (assigning twice updates the assignment).
    Assign(admin::AssignArgs),
    /// List, update, remove and bulk-write assignments.
    Assignments(admin::AssignmentsArgs),
    /// Which engine the token's user gets (--all: every engine, best first).
    Resolve(admin::ResolveArgs),
    /// Check the host project (DATABASE_URL) and these settings: who can write profiles.role,
    /// duplicate credits, pending migrations, webhook, keys, timeouts, policy lints.
    /// Exits 8 on a security finding.
    Doctor(doctor::DoctorArgs),
    /// Fetch and inspect the model file of the `local` provider (a small model on the CPU).
    #[cfg(feature = "local-model")]
    Models(models::ModelsArgs),
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    // Booleans take 1/0, yes/no, on/off too (one place for every command).
    let matches = crate::config::boolish(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Long-running commands log at info (and as JSON when asked); the rest at warn.
    match cli.command {
        Command::Serve(_) | Command::Worker(_) => crate::telemetry::init_service(&cli.log),
        _ => crate::telemetry::init_cli(&cli.log),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => report(&e, json),
    }
}

/// Run the command; returns the exit code of a command that finished (0 but for `doctor`).
async fn run(cli: Cli) -> Result<i32, Error> {
    let json = cli.json;
    let done = match cli.command {
        Command::Demo(args) => demo::demo(args).await,
        Command::Migrate(args) => foundation::migrate(args, json).await,
        Command::Local(args) => foundation::local(args, json).await,
        Command::Token(args) => foundation::token(args),
        Command::Serve(args) => serve::serve(args).await,
        Command::Worker(args) => serve::worker(args).await,
        Command::Engines(args) => admin::engines(args, json).await,
        Command::Assign(args) => admin::assign(args, json).await,
        Command::Assignments(args) => admin::assignments_cmd(args, json).await,
        Command::Resolve(args) => admin::resolve(args, json).await,
        Command::Doctor(args) => return doctor::doctor(args, json).await,
        #[cfg(feature = "local-model")]
        Command::Models(args) => models::models(args, json).await,
    };
    done.map(|()| 0)
}

/// Print an error the way scripts and people both can read, and pick the exit code.
fn report(e: &Error, json: bool) -> i32 {
    if let Some(internal) = &e.internal {
        tracing::debug!(code = %e.code, detail = %internal, "command failed");
    }
    if json {
        let body = serde_json::json!({"error": {"code": e.code, "message": e.message, "details": e.details}});
        eprintln!("{body}");
    } else {
        eprintln!("error[{}]: {}", e.code, e.message);
        if let Some(details) = &e.details {
            if let Ok(pretty) = serde_json::to_string_pretty(details) {
                eprintln!("{pretty}");
            }
        }
        if e.kind == crate::error::Kind::Internal {
            if let Some(internal) = &e.internal {
                eprintln!("  ({internal})");
            }
        }
    }
    e.exit_code()
}

pub(crate) fn admin_models_summary(models: &serde_json::Value) -> String {
    admin::models_summary(models)
}
