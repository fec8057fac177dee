//! `bookengine demo`: the whole product on the local stack in one command. It
//! brings the stack up, seeds an admin, a pro and a hobby user, deploys the
//! example book flow as the admin, assigns it to the pro tier, requests a book
//! as the pro user, runs the worker until the job ends, writes the book, and
//! shows that the hobby user is refused.

use crate::assignments::{self, NewAssignment};
use crate::auth::{mint, MintRequest};
use crate::config::{DatabaseConfig, SupabaseConfig};
use crate::engines::{self, EngineFilter, EnginePatch};
use crate::error::{codes, Error, Result};
use crate::flow::{Flow, Tier};
use crate::generations::{self, run_report, GenerationRequest};
use crate::providers::ProvidersConfig;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use crate::worker::WorkerConfig;
use clap::Args;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const EXAMPLE_FLOW: &str = include_str!("../../examples/book-flow.json");
const DEMO_ENGINE: &str = "Book engine (demo)";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// What the book is about.
    #[arg(long, default_value = "the history of tea")]
    pub topic: String,
    /// How many chapters the outline asks for.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=24))]
    pub chapters: u32,
    /// Port for the local PostgREST.
    #[arg(long, env = "BOOKENGINE_POSTGREST_PORT", default_value_t = 54330)]
    pub port: u16,
    /// Give up waiting for the book after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub db: DatabaseConfig,
    #[command(flatten)]
    pub providers: ProvidersConfig,
}

struct DemoUser {
    label: &'static str,
    id: Uuid,
    token: Secret,
}

async fn seed_user(
    client: &tokio_postgres::Client,
    secret: &Secret,
    label: &'static str,
    role: &str,
    tier: &str,
) -> Result<DemoUser> {
    let email = format!("demo-{label}@bookengine.local");
    let sql_err =
        |e: tokio_postgres::Error| Error::internal(format!("seeding demo user {label}: {e}"));
    client
        .execute(
            "INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), $1) ON CONFLICT (email) DO NOTHING",
            &[&email],
        )
        .await
        .map_err(sql_err)?;
    let id: Uuid = client
        .query_one("SELECT id FROM auth.users WHERE email = $1", &[&email])
        .await
        .map_err(sql_err)?
        .get(0);
    client
        .execute(
            "INSERT INTO public.profiles (id, email, role) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role",
            &[&id, &email, &role],
        )
        .await
        .map_err(sql_err)?;
    client
        .execute(
            "INSERT INTO public.user_credits (user_id, tier) VALUES ($1, $2) \
             ON CONFLICT (user_id) DO UPDATE SET tier = EXCLUDED.tier",
            &[&id, &tier],
        )
        .await
        .map_err(sql_err)?;
    let token = mint(
        secret,
        &MintRequest {
            user: Some(id),
            role: "authenticated".into(),
            ttl: Duration::from_secs(3 * 3600),
            email: Some(email),
        },
    )?;
    Ok(DemoUser { label, id, token })
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    step("starting the local stack (Postgres + PostgREST 12)");
    let config = args.db.pg_config()?;
    let env = crate::local::up(&args.db.database_url, &config, args.port).await?;
    env.apply_to_process();
    let db = env
        .database_url
        .expose()
        .parse::<tokio_postgres::Config>()
        .map_err(|e| Error::config(format!("DATABASE_URL: {e}")))?;
    let client = crate::migrate::connect(&db).await?;

    step("seeding users: admin, pro, hobby");
    let admin = seed_user(&client, &env.jwt_secret, "admin", "admin", "enterprise").await?;
    let pro = seed_user(&client, &env.jwt_secret, "pro", "user", "pro").await?;
    let hobby = seed_user(&client, &env.jwt_secret, "hobby", "user", "hobby").await?;
    let dir = crate::local::state_dir();
    let dev_users = json!([
        {"label": "admin", "user_id": admin.id},
        {"label": "pro", "user_id": pro.id},
        {"label": "hobby", "user_id": hobby.id},
    ]);
    let _ = std::fs::write(dir.join("dev-users.json"), dev_users.to_string());

    let supabase = SupabaseConfig {
        supabase_url: None,
        postgrest_url: Some(
            env.postgrest_url
                .parse()
                .map_err(|e| Error::config(format!("POSTGREST_URL: {e}")))?,
        ),
        anon_key: Some(env.anon_key.clone()),
        service_role_key: Some(env.service_role_key.clone()),
    };
    let rest = Rest::new(&supabase)?;
    let as_admin = Caller::User(admin.token.clone());
    let as_pro = Caller::User(pro.token.clone());
    let as_hobby = Caller::User(hobby.token.clone());

    step("deploying examples/book-flow.json as the admin");
    let mut flow_doc: Value = serde_json::from_str(EXAMPLE_FLOW)
        .map_err(|e| Error::internal(format!("example flow: {e}")))?;
    flow_doc["name"] = json!(DEMO_ENGINE);
    let existing = engines::list(&rest, &as_admin, &EngineFilter::default())
        .await?
        .into_iter()
        .find(|e| e.name == DEMO_ENGINE);
    let engine = match existing {
        // A second run redeploys the same engine instead of piling up copies.
        Some(e) => {
            let patch = EnginePatch {
                flow: Some(flow_doc.clone()),
                active: Some(true),
                ..Default::default()
            };
            engines::update(&rest, &as_admin, e.id, patch).await?
        }
        None => engines::deploy(&rest, &as_admin, admin.id, &flow_doc).await?,
    };
    eprintln!(
        "    engine {} ({})",
        engine.id,
        crate::cli::admin_models_summary(&engine.models)
    );

    step("assigning it to the pro tier");
    let new = NewAssignment {
        engine_id: engine.id,
        tier: Some(Tier::Pro),
        user_id: None,
        priority: Some(10),
        active: Some(true),
    };
    assignments::assign(&rest, &as_admin, &new).await?;

    step("the hobby user is refused");
    match generations::request(
        &rest,
        &as_hobby,
        &GenerationRequest {
            input: json!({"topic": args.topic}),
            engine_id: None,
        },
    )
    .await
    {
        Err(e) if e.code == codes::NO_ENGINE_ASSIGNED => {
            eprintln!("    hobby: {} ({}), as expected", e.message, e.code)
        }
        Err(e) => return Err(e),
        Ok(job) => {
            return Err(Error::internal(format!(
                "the hobby user was given job {}",
                job.id
            )))
        }
    }
    let resolved = assignments::resolve(&rest, &as_pro).await?;
    eprintln!(
        "    pro user resolves to {} via its {} assignment",
        resolved.name, resolved.assignment_type
    );

    // Providers: real ones where keys are set, the offline one for the rest.
    let mut providers = args.providers.clone();
    providers.offline_fallback = true;
    let registry_preview = providers.registry().await?;
    let offline: Vec<String> = registry_preview
        .labels()
        .into_iter()
        .filter(|(name, label)| label == "offline" && name != "offline")
        .map(|(name, _)| name)
        .collect();
    let flow = Flow::from_engine(
        &engine.name,
        &engine.flow_config,
        engine.execution_mode.as_deref(),
        engine.tier.as_deref(),
    )?;
    let used: Vec<String> = flow
        .steps
        .iter()
        .map(|s| s.config.provider.clone())
        .collect();
    let offline_used: Vec<&String> = offline.iter().filter(|p| used.contains(p)).collect();
    if offline_used.is_empty() {
        eprintln!("    providers: real APIs for every step");
    } else {
        eprintln!(
            "    providers: no key for {} -> the built-in OFFLINE provider writes deterministic placeholder text (not model output)",
            offline_used.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }

    step(&format!(
        "requesting a book about \"{}\" as the pro user",
        args.topic
    ));
    let input = json!({"topic": args.topic, "chapters": args.chapters});
    let job = generations::request(
        &rest,
        &as_pro,
        &GenerationRequest {
            input,
            engine_id: None,
        },
    )
    .await?;
    eprintln!("    job {} queued", job.id);

    step("running the worker");
    let shutdown = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let worker_config = WorkerConfig {
        concurrency: 2,
        fanout_concurrency: 4,
        poll_interval_ms: 200,
        backoff_ms: 300,
        ..Default::default()
    };
    let (_, worker) = crate::worker::spawn(
        &supabase,
        &worker_config,
        &providers,
        wake.clone(),
        shutdown.clone(),
    )
    .await?;
    wake.notify_one();

    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "    {spinner} [{elapsed_precise}] {bar:30} {pos}/{len} calls  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let detail = loop {
        let d = generations::get(&rest, &as_pro, job.id).await?;
        let p = &d.job.progress;
        bar.set_length(p["total"].as_u64().unwrap_or(1).max(1));
        bar.set_position(p["done"].as_u64().unwrap_or(0));
        bar.set_message(format!(
            "{} {}",
            d.job.status,
            p["current"].as_str().unwrap_or("")
        ));
        if d.job.is_finished() {
            break d;
        }
        if Instant::now() > deadline {
            bar.abandon();
            shutdown.cancel();
            return Err(Error::new(
                crate::error::Kind::Unavailable,
                codes::BACKEND_UNAVAILABLE,
                format!("the book was not done after {}s", args.timeout),
            ));
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    shutdown.cancel();
    let _ = worker.await;

    let report = run_report(&detail, &flow);
    if detail.job.status != "succeeded" {
        return Err(Error::internal(format!(
            "the generation ended {}: {}",
            detail.job.status,
            detail.job.error.as_deref().unwrap_or("")
        )));
    }
    let book = detail
        .job
        .result
        .as_ref()
        .and_then(|r| r["book"].as_str())
        .unwrap_or_default();
    let books = dir.join("books");
    std::fs::create_dir_all(&books)
        .map_err(|e| Error::internal(format!("creating {}: {e}", books.display())))?;
    let path: PathBuf = books.join(format!("{}.md", job.id));
    std::fs::write(&path, book)
        .map_err(|e| Error::internal(format!("writing {}: {e}", path.display())))?;

    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(vec![
        "step",
        "calls",
        "models",
        "attempts",
        "fallbacks",
        "tokens in/out",
        "slowest call",
    ]);
    for l in &report.steps {
        t.add_row(vec![
            l.step.clone(),
            l.calls.to_string(),
            l.models.join(", "),
            l.attempts.to_string(),
            l.fallbacks.to_string(),
            format!("{}/{}", l.input_tokens, l.output_tokens),
            format!("{} ms", l.longest_call_ms),
        ]);
    }
    println!("\nRun report ({} job {})", report.status, job.id);
    println!("{t}");
    println!("models used:   {}", report.models_used.join(", "));
    println!(
        "calls:         {} ({} attempts, {} fallbacks)",
        report.calls, report.attempts, report.fallbacks
    );
    println!(
        "tokens:        {} in, {} out",
        report.input_tokens, report.output_tokens
    );
    println!(
        "wall time:     {} ms (job), {:.1} s (whole demo)",
        report.wall_ms.unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    println!("critical path: {} ms", report.critical_path_ms);
    if !offline_used.is_empty() {
        println!(
            "text:          written by the OFFLINE provider (placeholder, not model output) for {}",
            offline_used
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("\nbook: {}", path.display());
    eprintln!(
        "\nNext: `bookengine local down` stops the stack. To browse it: source {} and run\n      BOOKENGINE_DEV_USERS={} bookengine serve   # then open http://127.0.0.1:8787/admin",
        dir.join("env").display(),
        dir.join("dev-users.json").display()
    );
    let _ = admin.label;
    Ok(())
}
