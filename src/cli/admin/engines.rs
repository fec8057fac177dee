//! `bookengine engines`: deploy, list, show, update and delete engines; their
//! versions, diffs, rollbacks and rollouts.

use super::{models_summary, opt, print_json, read_json, show, table, AuthArgs};
use crate::engines::{self, rollout, versions, EngineFilter, EnginePatch};
use crate::error::{codes, Error, Result};
use crate::flow::Tier;
use crate::rest::{Caller, Rest};
use clap::Args;
use clap::Subcommand;
use std::path::PathBuf;
use uuid::Uuid;

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

const ENGINE_HEADER: &[&str] = &["id", "name", "tier", "mode", "active", "models", "created"];

fn engine_row(e: &engines::Engine) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.name.clone(),
        opt(&e.tier),
        opt(&e.execution_mode),
        opt(&e.active),
        models_summary(&e.models),
        opt(&e.created_at),
    ]
}

pub async fn engines(args: EnginesArgs, json: bool) -> Result<()> {
    let (rest, caller, user) = args.auth.connect()?;
    let show_one = |e: &engines::Engine| {
        show(json, e, || {
            // One engine: everything but the date the list shows.
            let mut row = engine_row(e);
            row.truncate(ENGINE_HEADER.len() - 1);
            table(&ENGINE_HEADER[..ENGINE_HEADER.len() - 1], vec![row]);
        });
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
            show(json, &list, || {
                table(ENGINE_HEADER, list.iter().map(engine_row).collect());
            });
        }
        EnginesAction::Show { id } => {
            let e = engines::get(&rest, &caller, id).await?;
            show(json, &e, || {
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
            });
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
            show(json, &serde_json::json!({"deleted": id}), || {
                println!("deleted engine {id}");
            });
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
                    None => v.origin.to_string(),
                };
                vec![
                    v.version.to_string(),
                    mark.into(),
                    origin,
                    v.check_state.to_string(),
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
                show(json, &h, || {
                    print_versions(&h.versions);
                    print_rollout(&rollout::RolloutState {
                        engine_id: h.engine_id,
                        current_version: h.current_version,
                        rollout: h.rollout.clone(),
                    });
                });
            }
            EnginesAction::Versions {
                id,
                number: Some(n),
            } => {
                let v = versions::get(rest, caller, *id, *n).await?;
                show(json, &v, || {
                    print_versions(std::slice::from_ref(&v));
                    print_json(&v.flow_config);
                });
            }
            EnginesAction::Diff { id, from, to } => {
                let d = versions::diff_versions(rest, caller, *id, *from, *to).await?;
                show(json, &d, || {
                    print_diff(&d);
                });
            }
            EnginesAction::Rollback { id, number, note } => {
                let request = versions::RollbackRequest {
                    version: *number,
                    note: note.clone(),
                };
                let v = versions::rollback(rest, caller, *id, &request).await?;
                show(json, &v, || {
                    println!(
                        "version {} is current: it restores version {number}",
                        v.version
                    );
                });
            }
            EnginesAction::Propose { id, flow, note } => {
                let request = versions::ProposalRequest {
                    flow: read_json(flow)?,
                    note: note.clone(),
                };
                let v = versions::propose(rest, caller, *id, &request).await?;
                show(json, &v, || {
                    println!(
                        "version {} proposed (check: {}); roll it out with `bookengine engines rollout {id} --candidate {} --percent 10`",
                        v.version, v.check_state, v.version
                    );
                });
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
                show(json, &state, || {
                    print_rollout(&state);
                });
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
