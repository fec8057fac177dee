//! `migrate`, `local`, `token`.

use crate::auth::{mint, MintRequest};
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::{devstack, migrate};
use clap::{Args, Subcommand};
use std::time::Duration;
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// List applied and pending migrations instead of applying them.
    #[arg(long)]
    pub status: bool,
    #[command(flatten)]
    pub db: DatabaseConfig,
}

pub async fn migrate(args: MigrateArgs, json: bool) -> Result<()> {
    let config = args.db.pg_config()?;
    let mut client = migrate::connect(&config).await?;
    if args.status {
        let states = migrate::status(&mut client).await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&states).unwrap_or_default()
            );
        } else {
            for m in states {
                let state = if m.applied { "applied" } else { "pending" };
                println!("V{:<4} {:<45} {state}", m.version, m.name);
            }
        }
        return Ok(());
    }
    let applied = migrate::run(&mut client).await?;
    let _ = client.batch_execute("NOTIFY pgrst, 'reload schema'").await;
    if json {
        println!("{}", serde_json::json!({ "applied": applied }));
    } else if applied.is_empty() {
        println!(
            "database is up to date ({})",
            migrate::describe_host(&config)
        );
    } else {
        for m in applied {
            println!("applied V{} {}", m.version, m.name);
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub action: LocalAction,
    /// Port for the local PostgREST.
    #[arg(
        long,
        env = "BOOKENGINE_POSTGREST_PORT",
        default_value_t = 54330,
        global = true
    )]
    pub port: u16,
    /// Port for the local development gateway (SUPABASE_URL); default: the PostgREST port + 1.
    #[arg(long, env = "BOOKENGINE_GATEWAY_PORT", global = true)]
    pub gateway_port: Option<u16>,
    #[command(flatten)]
    pub home: devstack::HomeArgs,
}

#[derive(Subcommand, Debug)]
pub enum LocalAction {
    /// Start Postgres (if needed) and PostgREST, apply baseline and migrations,
    /// and print the environment as `export` lines: eval "$(bookengine local up)".
    Up {
        #[command(flatten)]
        db: DatabaseConfig,
    },
    /// Stop what `local up` started.
    Down,
    /// Say what runs.
    Status,
    /// The local development gateway in the foreground (`local up` starts it in the
    /// background): $SUPABASE_URL/rest/v1 and /auth/v1/user over the local PostgREST.
    #[command(hide = true)]
    Gateway,
}

pub async fn local(args: LocalArgs, json: bool) -> Result<()> {
    let gateway_port = args
        .gateway_port
        .unwrap_or_else(|| devstack::default_gateway_port(args.port));
    let home = &args.home.home;
    match args.action {
        LocalAction::Up { db } => {
            let config = db.pg_config()?;
            let env = devstack::up(
                &args.home,
                &db.database_url,
                &config,
                args.port,
                Some(gateway_port),
            )
            .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "DATABASE_URL": env.database_url.expose(),
                        "POSTGREST_URL": env.postgrest_url,
                        "SUPABASE_JWT_SECRET": env.jwt_secret.expose(),
                        "SUPABASE_ANON_KEY": env.anon_key.expose(),
                        "SUPABASE_SERVICE_ROLE_KEY": env.service_role_key.expose(),
                        "SUPABASE_URL": env.supabase_url,
                        "SUPABASE_PUBLISHABLE_KEY": env.publishable_key.expose(),
                        "SUPABASE_SECRET_KEY": env.secret_key.expose(),
                    })
                );
            } else {
                eprintln!("# local stack ready; these are LOCAL DEVELOPMENT credentials");
                eprintln!(
                    "# SUPABASE_URL is a local development gateway (Supabase's URL layout and key rules), not a Supabase project"
                );
                print!("{}", env.exports());
            }
        }
        LocalAction::Down => {
            let done = devstack::down(home)?;
            if done.is_empty() {
                println!("nothing was running");
            }
            for line in done {
                println!("{line}");
            }
        }
        LocalAction::Status => {
            println!("{}", devstack::status(home, args.port, gateway_port).await)
        }
        LocalAction::Gateway => {
            let stop = tokio_util::sync::CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                super::serve::shutdown_signal().await;
                signal.cancel();
            });
            devstack::run_gateway(home, args.port, gateway_port, stop).await?;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user id (`sub`) to put in the token.
    #[arg(long)]
    pub user: Option<Uuid>,
    /// The PostgREST role to claim.
    #[arg(long, default_value = "authenticated", value_parser = ["authenticated", "service_role", "anon"])]
    pub role: String,
    /// Lifetime: 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = crate::auth::parse_ttl)]
    pub ttl: Duration,
    /// Email claim, for display only.
    #[arg(long)]
    pub email: Option<String>,
    /// The secret to sign with (local stack: printed by `bookengine local up`).
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
}

pub fn token(args: TokenArgs) -> Result<()> {
    let secret = args.jwt_secret.ok_or_else(|| {
        Error::config("SUPABASE_JWT_SECRET must be set (bookengine local up prints it)")
    })?;
    if args.role == "authenticated" && args.user.is_none() {
        return Err(Error::invalid(
            crate::error::codes::INVALID_REQUEST,
            "--user is required for an authenticated token",
        ));
    }
    let token = mint(
        &secret,
        &MintRequest {
            user: args.user,
            role: args.role,
            ttl: args.ttl,
            email: args.email,
        },
    )?;
    eprintln!("# LOCAL DEVELOPMENT token (HS256, SUPABASE_JWT_SECRET); not for production");
    println!("{}", token.expose());
    Ok(())
}
