//! `engines`, `assign`, `assignments`, `resolve`: the SuperAdmin's commands. They
//! call the same library as the HTTP API, with the token given, so RLS decides.

use crate::assignments::{self, AssignmentFilter, AssignmentPatch, BulkAssignment, NewAssignment};
use crate::config::SupabaseConfig;
use crate::engines::{self, rollout, versions, EngineFilter, EnginePatch};
use crate::error::{codes, Error, Result};
use crate::flow::Tier;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Who the command acts as.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// The caller's access token (a Supabase session JWT; locally: `bookengine token`).
    #[arg(long, env = "BOOKENGINE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<Secret>,
    #[command(flatten)]
    pub supabase: SupabaseConfig,
}

impl AuthArgs {
    fn connect(&self) -> Result<(Rest, Caller, Option<Uuid>)> {
        let token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::unauthenticated(codes::MISSING_TOKEN, "pass --token or set BOOKENGINE_TOKEN")
            })?;
        let user = token_subject(&token);
        Ok((Rest::new(&self.supabase)?, Caller::User(token), user))
    }
}

/// The `sub` of a token, read without verification: PostgREST verifies it.
fn token_subject(token: &Secret) -> Option<Uuid> {
    let mut validation = jsonwebtoken::Validation::default();
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(
        token.expose(),
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &validation,
    )
    .ok()?;
    data.claims["sub"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Error::invalid(codes::INVALID_REQUEST, format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(
                codes::INVALID_REQUEST,
                format!("reading {}: {e}", path.display()),
            )
        })?
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            codes::INVALID_JSON,
            format!("{} is not valid JSON: {e}", path.display()),
        )
    })
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    println!("{t}");
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn models_summary(models: &Value) -> String {
    models
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["provider"].as_str().unwrap_or("?"),
                        m["model"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[derive(Args, Debug)]
pub struct EnginesArgs {
    #[command(subcommand)]
    pub action: EnginesAction,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Subcommand, Debug)]
pub enum EnginesAction {
    /// Deploy a flow document (a file, or - for stdin) as a new engine.
    Deploy { flow: PathBuf },
    /// List the engines you can see.
    List {
        #[arg(long)]
        active: Option<bool>,
        #[arg(long)]
        tier: Option<Tier>,
    },
    /// Show one engine.
    Show { id: Uuid },
    /// Change name, description, active, tier, or redeploy the flow.
    Update {
        id: Uuid,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        active: Option<bool>,
        /// hobby, pro, enterprise, or none.
        #[arg(long)]
        tier: Option<String>,
        /// A new flow document: running generations keep the configuration they started with.
        #[arg(long)]
        flow: Option<PathBuf>,
    },
    /// Delete an engine and its assignments.
    Delete { id: Uuid },
    /// An engine's versions, newest first, with jobs and outcomes per version (or one
    /// version's flow with `N`).
    Versions {
        id: Uuid,
        #[arg(value_name = "VERSION")]
        number: Option<i32>,
    },
    /// What changed between two versions: steps added, removed, changed (fields, old → new).
    Diff { id: Uuid, from: i32, to: i32 },
    /// Make version N current again, as a new version.
    Rollback {
        id: Uuid,
        #[arg(value_name = "VERSION")]
        number: i32,
        #[arg(long)]
        note: Option<String>,
    },
    /// Store a flow document (a file, or - for stdin) as a new version that is not
    /// current: a candidate for `rollout`.
    Propose {
        id: Uuid,
        flow: PathBuf,
        #[arg(long)]
        note: Option<String>,
    },
    /// Show the rollout; or start one (--candidate N --percent P, again to change the
    /// share), --promote the candidate to current, or --abort it.
    Rollout {
        id: Uuid,
        /// The version to roll out.
        #[arg(long, value_name = "VERSION", requires = "percent", conflicts_with_all = ["promote", "abort"])]
        candidate: Option<i32>,
        /// Share of the engine's users on the candidate, 0 to 100.
        #[arg(long, requires = "candidate")]
        percent: Option<f64>,
        /// Make the candidate current (it keeps its number) and end the rollout.
        #[arg(long, conflicts_with = "abort")]
        promote: bool,
        /// End the rollout: every user back on the current version.
        #[arg(long)]
        abort: bool,
    },
}

pub async fn engines(args: EnginesArgs, json: bool) -> Result<()> {
    let (rest, caller, user) = args.auth.connect()?;
    let show_one = |e: &engines::Engine| {
        if json {
            print_json(e);
        } else {
            table(
                &["id", "name", "tier", "mode", "active", "models"],
                vec![vec![
                    e.id.to_string(),
                    e.name.clone(),
                    opt(&e.tier),
                    opt(&e.execution_mode),
                    opt(&e.active),
                    models_summary(&e.models),
                ]],
            );
        }
    };
    if let Some(done) = versions_action(&args.action, &rest, &caller, json).await {
        return done;
    }
    match args.action {
        EnginesAction::Deploy { flow } => {
            let doc = read_json(&flow)?;
            let user = user.ok_or_else(|| {
                Error::unauthenticated(codes::INVALID_TOKEN, "the token has no user id")
            })?;
            let engine = engines::deploy(&rest, &caller, user, &doc).await?;
            if !json {
                eprintln!("deployed engine {}", engine.id);
            }
            show_one(&engine);
        }
        EnginesAction::List { active, tier } => {
            let list = engines::list(&rest, &caller, &EngineFilter { active, tier }).await?;
            if json {
                print_json(&list);
            } else {
                table(
                    &["id", "name", "tier", "mode", "active", "models", "created"],
                    list.iter()
                        .map(|e| {
                            vec![
                                e.id.to_string(),
                                e.name.clone(),
                                opt(&e.tier),
                                opt(&e.execution_mode),
                                opt(&e.active),
                                models_summary(&e.models),
                                opt(&e.created_at),
                            ]
                        })
                        .collect(),
                );
            }
        }
        EnginesAction::Show { id } => {
            let e = engines::get(&rest, &caller, id).await?;
            if json {
                print_json(&e);
            } else {
                show_one(&e);
                let steps = e.flow_config["steps"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                table(
                    &["step", "name", "provider/model", "fallbacks"],
                    steps
                        .iter()
                        .map(|s| {
                            let c = &s["configuration"];
                            vec![
                                s["id"].as_str().unwrap_or("").into(),
                                s["name"].as_str().unwrap_or("").into(),
                                format!(
                                    "{}/{}",
                                    c["provider"].as_str().unwrap_or("?"),
                                    c["model"].as_str().unwrap_or("?")
                                ),
                                models_summary(&c["fallbacks"]),
                            ]
                        })
                        .collect(),
                );
            }
        }
        EnginesAction::Update {
            id,
            name,
            description,
            active,
            tier,
            flow,
        } => {
            let tier = match tier.as_deref() {
                None => None,
                Some("none") | Some("") => Some(None),
                Some(t) => Some(Some(
                    t.parse::<Tier>()
                        .map_err(|e| Error::invalid(codes::INVALID_REQUEST, e))?,
                )),
            };
            let flow = flow.map(|p| read_json(&p)).transpose()?;
            let patch = EnginePatch {
                name,
                description: description.map(Some),
                active,
                tier,
                flow,
            };
            let e = engines::update(&rest, &caller, id, patch).await?;
            show_one(&e);
        }
        EnginesAction::Delete { id } => {
            engines::delete(&rest, &caller, id).await?;
            if json {
                print_json(&serde_json::json!({"deleted": id}));
            } else {
                println!("deleted engine {id}");
            }
        }
        // Handled by versions_action above.
        EnginesAction::Versions { .. }
        | EnginesAction::Diff { .. }
        | EnginesAction::Rollback { .. }
        | EnginesAction::Propose { .. }
        | EnginesAction::Rollout { .. } => {}
    }
    Ok(())
}

fn share(v: Option<f64>) -> String {
    v.map(|x| format!("{:.0} %", x * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0} ms"))
        .unwrap_or_else(|| "-".into())
}

fn print_versions(list: &[versions::EngineVersion]) {
    table(
        &[
            "version",
            "",
            "origin",
            "check",
            "steps",
            "jobs",
            "ok",
            "failed",
            "median",
            "p95",
            "tokens/job",
            "created",
            "note",
        ],
        list.iter()
            .map(|v| {
                let s = v.stats.clone().unwrap_or_default();
                let mark = match (v.current, v.candidate) {
                    (true, _) => "current",
                    (_, true) => "candidate",
                    _ => "",
                };
                let origin = match v.restored_from {
                    Some(n) => format!("{} of {n}", v.origin),
                    None => v.origin.clone(),
                };
                vec![
                    v.version.to_string(),
                    mark.into(),
                    origin,
                    v.check_state.clone(),
                    opt(&v.steps),
                    s.jobs.to_string(),
                    share(s.succeeded_share),
                    share(s.failed_share),
                    ms(s.median_wall_ms),
                    ms(s.p95_wall_ms),
                    s.tokens_per_job
                        .map(|t| format!("{t:.0}"))
                        .unwrap_or_else(|| "-".into()),
                    opt(&v.created_at),
                    v.note.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    );
}

fn print_rollout(state: &rollout::RolloutState) {
    match &state.rollout {
        Some(r) => println!(
            "current version {}; version {} rolled out to {} % of the users (since {})",
            state.current_version,
            r.version,
            r.percent,
            r.started_at.as_deref().unwrap_or("-")
        ),
        None => println!("current version {}; no rollout", state.current_version),
    }
}

fn print_diff(d: &versions::VersionDiff) {
    if d.identical {
        println!("versions {} and {} are identical", d.from, d.to);
        return;
    }
    println!("version {} → version {}", d.from, d.to);
    for id in &d.added {
        println!("+ step {id}");
    }
    for id in &d.removed {
        println!("- step {id}");
    }
    let mut rows = Vec::new();
    for c in &d.changed {
        for f in &c.fields {
            rows.push(vec![
                c.id.clone(),
                f.field.clone(),
                f.from.to_string(),
                f.to.to_string(),
            ]);
        }
    }
    for f in d.order.iter().chain(&d.flow) {
        rows.push(vec![
            "(flow)".into(),
            f.field.clone(),
            f.from.to_string(),
            f.to.to_string(),
        ]);
    }
    if !rows.is_empty() {
        table(&["step", "field", "from", "to"], rows);
    }
}

/// The version and rollout subcommands; `None` for the others.
async fn versions_action(
    action: &EnginesAction,
    rest: &Rest,
    caller: &Caller,
    json: bool,
) -> Option<Result<()>> {
    let run = async {
        match action {
            EnginesAction::Versions { id, number: None } => {
                let h = versions::list(rest, caller, *id).await?;
                if json {
                    print_json(&h);
                } else {
                    print_versions(&h.versions);
                    print_rollout(&rollout::RolloutState {
                        engine_id: h.engine_id,
                        current_version: h.current_version,
                        rollout: h.rollout.clone(),
                    });
                }
            }
            EnginesAction::Versions {
                id,
                number: Some(n),
            } => {
                let v = versions::get(rest, caller, *id, *n).await?;
                if json {
                    print_json(&v);
                } else {
                    print_versions(std::slice::from_ref(&v));
                    print_json(&v.flow_config);
                }
            }
            EnginesAction::Diff { id, from, to } => {
                let d = versions::diff_versions(rest, caller, *id, *from, *to).await?;
                if json {
                    print_json(&d);
                } else {
                    print_diff(&d);
                }
            }
            EnginesAction::Rollback { id, number, note } => {
                let request = versions::RollbackRequest {
                    version: *number,
                    note: note.clone(),
                };
                let v = versions::rollback(rest, caller, *id, &request).await?;
                if json {
                    print_json(&v);
                } else {
                    println!(
                        "version {} is current: it restores version {number}",
                        v.version
                    );
                }
            }
            EnginesAction::Propose { id, flow, note } => {
                let request = versions::ProposalRequest {
                    flow: read_json(flow)?,
                    note: note.clone(),
                };
                let v = versions::propose(rest, caller, *id, &request).await?;
                if json {
                    print_json(&v);
                } else {
                    println!(
                        "version {} proposed (check: {}); roll it out with `bookengine engines rollout {id} --candidate {} --percent 10`",
                        v.version, v.check_state, v.version
                    );
                }
            }
            EnginesAction::Rollout {
                id,
                candidate,
                percent,
                promote,
                abort,
            } => {
                let state = match (candidate, percent) {
                    (Some(version), Some(percent)) => {
                        let request = rollout::RolloutRequest {
                            version: *version,
                            percent: *percent,
                        };
                        rollout::start(rest, caller, *id, &request).await?
                    }
                    _ if *promote => rollout::promote(rest, caller, *id).await?,
                    _ if *abort => rollout::abort(rest, caller, *id).await?,
                    _ => rollout::state(rest, caller, *id).await?,
                };
                if json {
                    print_json(&state);
                } else {
                    print_rollout(&state);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    match run.await {
        Ok(false) => None,
        Ok(true) => Some(Ok(())),
        Err(e) => Some(Err(e)),
    }
}

#[derive(Args, Debug)]
pub struct AssignArgs {
    /// The engine to assign.
    #[arg(long)]
    pub engine: Uuid,
    /// Assign to every user of this tier.
    #[arg(long, conflicts_with = "user", required_unless_present = "user")]
    pub tier: Option<Tier>,
    /// Assign to this user.
    #[arg(long)]
    pub user: Option<Uuid>,
    /// Higher wins among assignments of the same kind.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Create the assignment switched off.
    #[arg(long)]
    pub inactive: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

fn assignment_rows(list: &[assignments::Assignment]) -> Vec<Vec<String>> {
    list.iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                opt(&a.engine_id),
                a.assignment_type.to_string(),
                a.tier
                    .map(|t| t.to_string())
                    .or(a.user_id.map(|u| u.to_string()))
                    .unwrap_or_default(),
                opt(&a.priority),
                opt(&a.active),
            ]
        })
        .collect()
}

const ASSIGNMENT_HEADER: &[&str] = &["id", "engine", "type", "target", "priority", "active"];

pub async fn assign(args: AssignArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let new = NewAssignment {
        engine_id: args.engine,
        assignment_type: None,
        tier: args.tier,
        user_id: args.user,
        priority: Some(args.priority),
        active: Some(!args.inactive),
    };
    let a = assignments::assign(&rest, &caller, &new).await?;
    if json {
        print_json(&a);
    } else {
        table(ASSIGNMENT_HEADER, assignment_rows(&[a]));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AssignmentsArgs {
    #[command(subcommand)]
    pub action: AssignmentsAction,
    #[command(flatten)]
    pub auth: AuthArgs,
}

#[derive(Subcommand, Debug)]
pub enum AssignmentsAction {
    /// List assignments (admins: all; others: their own and their tier's).
    List {
        #[arg(long)]
        engine: Option<Uuid>,
        #[arg(long)]
        user: Option<Uuid>,
        #[arg(long)]
        tier: Option<Tier>,
    },
    /// Change an assignment's priority or switch it on or off.
    Update {
        id: Uuid,
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        #[arg(long)]
        active: Option<bool>,
    },
    /// Remove an assignment.
    Remove { id: Uuid },
    /// Many engines x many tiers/users from a JSON file, all or nothing:
    /// {"engine_ids": [...], "tiers": [...], "user_ids": [...], "priority": 0}
    Bulk { file: PathBuf },
}

pub async fn assignments_cmd(args: AssignmentsArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let list = match args.action {
        AssignmentsAction::List { engine, user, tier } => {
            assignments::list(
                &rest,
                &caller,
                &AssignmentFilter {
                    engine_id: engine,
                    user_id: user,
                    tier,
                },
            )
            .await?
        }
        AssignmentsAction::Update {
            id,
            priority,
            active,
        } => {
            vec![
                assignments::update(&rest, &caller, id, &AssignmentPatch { priority, active })
                    .await?,
            ]
        }
        AssignmentsAction::Remove { id } => {
            assignments::remove(&rest, &caller, id).await?;
            if json {
                print_json(&serde_json::json!({"removed": id}));
            } else {
                println!("removed assignment {id}");
            }
            return Ok(());
        }
        AssignmentsAction::Bulk { file } => {
            let doc = read_json(&file)?;
            let req: BulkAssignment = serde_json::from_value(doc).map_err(|e| {
                Error::invalid(
                    codes::INVALID_ASSIGNMENT,
                    format!("{}: {e}", file.display()),
                )
            })?;
            let items = req.expand()?;
            let written = assignments::bulk(&rest, &caller, &items).await?;
            if !json {
                eprintln!("wrote {} assignments", written.len());
            }
            written
        }
    };
    if json {
        print_json(&list);
    } else {
        table(ASSIGNMENT_HEADER, assignment_rows(&list));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// List every engine you may use, best first, instead of only the one used.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

pub async fn resolve(args: ResolveArgs, json: bool) -> Result<()> {
    let (rest, caller, _) = args.auth.connect()?;
    let choices = if args.all {
        assignments::my_engines(&rest, &caller).await?
    } else {
        vec![assignments::resolve(&rest, &caller).await?]
    };
    if json {
        if args.all {
            print_json(&choices);
        } else if let Some(c) = choices.first() {
            print_json(c);
        }
    } else {
        table(
            &["rank", "engine", "name", "via", "priority"],
            choices
                .iter()
                .map(|c| {
                    vec![
                        c.rank.to_string(),
                        c.id.to_string(),
                        c.name.clone(),
                        c.assignment_type.to_string(),
                        opt(&c.assignment_priority),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}
