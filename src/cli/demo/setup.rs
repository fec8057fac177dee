//! The demo's world: the local stack, three users, who writes the text, the
//! example engine deployed and assigned to the pro tier, the hobby user refused.

use super::writer::{choose_writer, keyless_providers, size_for_cpu, Writer};
use super::{step, DemoArgs, DEMO_ENGINE, EXAMPLE_FLOW};
use crate::assignments::{self, NewAssignment};
use crate::auth::{mint, MintRequest};
use crate::config::SupabaseConfig;
use crate::engines::{self, EngineFilter, EnginePatch};
use crate::error::{codes, Error, Result};
use crate::flow::{Flow, Tier};
use crate::generations::{self, GenerationRequest};
use crate::providers::ProvidersConfig;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// What the run and the report need from the setup.
pub struct Prepared {
    /// The stack's home (`.bookengine`): the book and `dev-users.json` go there.
    pub dir: PathBuf,
    pub supabase: SupabaseConfig,
    pub rest: Rest,
    pub pro: DemoUser,
    pub flow: Flow,
    pub providers: ProvidersConfig,
    pub writer: Writer,
    pub keyless: Vec<String>,
}

pub struct DemoUser {
    pub id: Uuid,
    pub token: Secret,
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
    Ok(DemoUser { id, token })
}

pub async fn prepare(args: &DemoArgs) -> Result<Prepared> {
    step("starting the local stack (Postgres + PostgREST 12)");
    let config = args.db.pg_config()?;
    let home = &args.home.home;
    let env =
        crate::devstack::up(&args.home, &args.db.database_url, &config, args.port, None).await?;
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
        engine.execution_mode.map(|m| m.as_str()),
        engine.tier.map(|t| t.as_str()),
    )?;

    Ok(Prepared {
        dir: dir.to_owned(),
        supabase,
        rest,
        pro,
        flow,
        providers,
        writer,
        keyless,
    })
}
